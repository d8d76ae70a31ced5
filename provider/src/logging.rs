//! Logs on stderr. Under Terraform they are lines of hclog's JSON
//! (`@level`, `@message`, fields as keys): go-plugin, on Terraform's side,
//! re-logs those at their own level, so `TF_LOG=info` shows the provider's
//! progress ("EVMs: 4000 of 10000"); plain lines would all count as debug.
//! Run by hand (`--debug`, `--destroy-topology`) they are plain text.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub fn init(for_terraform: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MERAK_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).with_env_filter(filter);
    if for_terraform {
        builder.event_format(Hclog).init();
    } else {
        builder.init();
    }
}

/// One JSON object per event, in the shape go-plugin parses.
struct Hclog;

impl<S, N> FormatEvent<S, N> for Hclog
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let metadata = event.metadata();
        let mut fields = Fields(serde_json::Map::new());
        event.record(&mut fields);
        let mut line = fields.0;
        let message = line.remove("message").unwrap_or_default();
        line.insert("@message".into(), message);
        line.insert("@level".into(), metadata.level().as_str().to_ascii_lowercase().into());
        line.insert("@module".into(), metadata.target().into());
        line.insert("@timestamp".into(), timestamp(std::time::SystemTime::now()).into());
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

/// `2026-12-02T06:51:30.108000Z`: the one layout go-plugin parses
/// (microseconds, always six digits); without it Terraform logs a zero time.
fn timestamp(now: std::time::SystemTime) -> String {
    let since = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (days, seconds) = (since.as_secs() / 86_400, since.as_secs() % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        since.subsec_micros()
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// days-to-civil algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

struct Fields(serde_json::Map<String, serde_json::Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_the_layout_go_plugin_parses() {
        let at =
            |secs: u64, micros: u32| timestamp(std::time::UNIX_EPOCH + std::time::Duration::new(secs, micros * 1000));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(1_796_194_290, 108_000), "2026-12-02T06:51:30.108000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
    }
}
