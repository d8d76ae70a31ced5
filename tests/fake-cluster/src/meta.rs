//! Object metadata as the API server fills it in, timestamps, random names,
//! and JSON merge patch (RFC 7386).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Random bytes from the kernel.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // SAFETY: getrandom(2) writes at most N bytes into the buffer.
    let filled = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), N, 0) };
    if filled != N as isize {
        // Never expected; names only need to differ, so fall back to the clock.
        let nanos =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default().to_le_bytes();
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = nanos[i % nanos.len()] ^ (i as u8);
        }
    }
    bytes
}

/// A version-4 UUID, as metadata.uid.
pub fn uid() -> String {
    let mut b: [u8; 16] = random_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// Five characters from the alphabet the API server uses for generateName.
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random_bytes::<5>().iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

/// Lowercase hex, for event names (`<object>.<hex>`).
pub fn hex_suffix() -> String {
    random_bytes::<8>().iter().map(|b| format!("{b:02x}")).collect()
}

/// Now, RFC 3339 in UTC to the second, as Kubernetes writes times.
pub fn now() -> String {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    rfc3339(seconds)
}

pub fn rfc3339(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            if let Value::Object(target_fields) = target {
                for (key, value) in fields {
                    if value.is_null() {
                        target_fields.remove(key);
                    } else {
                        merge_patch(target_fields.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dates_are_civil() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_279_445), "2026-12-03T06:30:45Z");
    }

    #[test]
    fn merge_patch_merges_removes_and_replaces() {
        let mut target = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut target, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(target, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }

    #[test]
    fn uids_are_version_4() {
        let id = uid();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, uid());
    }
}
