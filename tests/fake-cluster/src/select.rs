//! Label and field selectors, in the syntax of `?labelSelector=` and
//! `?fieldSelector=`: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`,
//! `a`, `!a`, comma-separated (all must hold). Field selectors use dotted
//! paths into the object (`metadata.name`, `spec.nodeName`,
//! `involvedObject.uid`) and only `=`, `==` and `!=`.

use serde_json::Value;

use crate::store::ApiError;

#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// Splits at commas outside parentheses.
fn terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms.into_iter().map(str::trim).filter(|t| !t.is_empty()).collect()
}

fn set(text: &str) -> Result<Vec<String>, ApiError> {
    let inner = text.trim().strip_prefix('(').and_then(|t| t.strip_suffix(')')).ok_or_else(|| {
        ApiError::bad_request(format!("unable to parse requirement: expected a set in parentheses, found {text:?}"))
    })?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, ApiError> {
        let mut requirements = Vec::new();
        for term in terms(text) {
            let requirement = if let Some((key, value)) = term.split_once("!=") {
                Requirement::NotEquals(key.trim().into(), value.trim().into())
            } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Requirement::Equals(key.trim().into(), value.trim().into())
            } else if let Some((key, values)) = term.split_once(" notin ") {
                Requirement::NotIn(key.trim().into(), set(values)?)
            } else if let Some((key, values)) = term.split_once(" in ") {
                Requirement::In(key.trim().into(), set(values)?)
            } else if let Some(key) = term.strip_prefix('!') {
                Requirement::Absent(key.trim().into())
            } else if term.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
                Requirement::Exists(term.into())
            } else {
                return Err(ApiError::bad_request(format!("unable to parse requirement: {term:?}")));
            };
            requirements.push(requirement);
        }
        Ok(Selector { requirements })
    }

    fn matches(&self, value_of: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|requirement| match requirement {
            Requirement::Equals(key, value) => value_of(key).as_deref() == Some(value),
            Requirement::NotEquals(key, value) => value_of(key).as_deref() != Some(value),
            Requirement::In(key, values) => value_of(key).is_some_and(|v| values.contains(&v)),
            Requirement::NotIn(key, values) => value_of(key).is_none_or(|v| !values.contains(&v)),
            Requirement::Exists(key) => value_of(key).is_some(),
            Requirement::Absent(key) => value_of(key).is_none(),
        })
    }

    pub fn matches_labels(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.matches(|key| labels.get(key).and_then(Value::as_str).map(str::to_string))
    }

    /// Missing fields compare as "" (as the API server's field sets do).
    pub fn matches_fields(&self, object: &Value) -> bool {
        self.matches(|path| {
            let value = path.split('.').try_fold(object, |v, part| v.get(part));
            Some(match value {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            })
        })
    }
}

/// A `metav1.LabelSelector` (`matchLabels`, `matchExpressions`) in the
/// string form of `?labelSelector=`, requirements sorted by key as
/// `LabelSelectorAsSelector(...).String()` prints them; "" selects
/// everything. An error names what is wrong, as the API server's validation
/// does.
pub fn label_selector_string(selector: &Value) -> Result<String, String> {
    let mut requirements: Vec<(String, String)> = Vec::new();
    for (key, value) in selector["matchLabels"].as_object().into_iter().flatten() {
        let value = value.as_str().ok_or_else(|| format!("matchLabels[{key}]: must be a string"))?;
        requirements.push((key.clone(), format!("{key}={value}")));
    }
    for expression in selector["matchExpressions"].as_array().into_iter().flatten() {
        let key = expression["key"].as_str().filter(|k| !k.is_empty()).ok_or("matchExpressions.key: Required value")?;
        let mut values: Vec<&str> =
            expression["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        values.sort_unstable();
        let operator = expression["operator"].as_str().unwrap_or_default();
        let text = match operator {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!(
                    "matchExpressions[{key}].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
                ));
            }
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(format!(
                    "matchExpressions[{key}].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                ));
            }
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            other => {
                return Err(format!(
                    "matchExpressions[{key}].operator: Invalid value: \"{other}\": not a valid selector operator"
                ));
            }
        };
        requirements.push((key.to_string(), text));
    }
    requirements.sort();
    Ok(requirements.into_iter().map(|(_, text)| text).collect::<Vec<_>>().join(","))
}

/// The Selector a `metav1.LabelSelector` stands for; None when it is not
/// one (absent: a nil selector selects nothing).
pub fn from_label_selector(selector: &Value) -> Option<Selector> {
    if !selector.is_object() {
        return None;
    }
    Selector::parse(&label_selector_string(selector).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_of_every_form() {
        let pod = json!({"metadata": {"labels": {"app": "merak", "tier": "epm"}}});
        for (selector, expected) in [
            ("app=merak", true),
            ("app==merak,tier=epm", true),
            ("app!=merak", false),
            ("tier in (epm, vswitch)", true),
            ("tier notin (epm)", false),
            ("app", true),
            ("!zone", true),
            ("!app", false),
            ("", true),
        ] {
            assert_eq!(Selector::parse(selector).unwrap().matches_labels(&pod), expected, "{selector}");
        }
        assert!(Selector::parse("tier in epm").is_err());
    }

    #[test]
    fn label_selector_objects_print_sorted_and_select() {
        let selector = json!({"matchLabels": {"tier": "gw", "app": "merak"}, "matchExpressions": [{"key": "zone", "operator": "In", "values": ["b", "a"]}, {"key": "old", "operator": "DoesNotExist"}]});
        assert_eq!(label_selector_string(&selector).unwrap(), "app=merak,!old,tier=gw,zone in (a,b)");
        let pod = json!({"metadata": {"labels": {"app": "merak", "tier": "gw", "zone": "a"}}});
        assert!(from_label_selector(&selector).unwrap().matches_labels(&pod));
        assert!(!from_label_selector(&json!({"matchLabels": {"app": "other"}})).unwrap().matches_labels(&pod));
        assert!(from_label_selector(&json!({})).unwrap().matches_labels(&pod), "an empty selector selects everything");
        assert!(from_label_selector(&Value::Null).is_none());
        assert!(label_selector_string(&json!({"matchExpressions": [{"key": "a", "operator": "In"}]})).is_err());
    }

    #[test]
    fn field_selectors_follow_paths() {
        let event = json!({"involvedObject": {"name": "p", "uid": "1"}, "metadata": {"name": "e"}});
        assert!(Selector::parse("involvedObject.name=p,involvedObject.uid=1").unwrap().matches_fields(&event));
        assert!(Selector::parse("spec.nodeName=").unwrap().matches_fields(&event));
        assert!(!Selector::parse("metadata.name!=e").unwrap().matches_fields(&event));
    }
}
