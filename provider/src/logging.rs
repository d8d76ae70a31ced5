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
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
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
