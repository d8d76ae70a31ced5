//! The user's own network controller, which programs the ports of VPCs
//! with `controller = "external"` (the provider's `controller` block): where
//! it listens and how the provider talks to it. Checked here, without I/O.

use std::collections::BTreeMap;

use super::SpecError;

pub const DEFAULT_TIMEOUT_S: u32 = 10;
pub const DEFAULT_BATCH_SIZE: u32 = 500;
const MAX_TIMEOUT_S: i64 = 600;
const MAX_BATCH_SIZE: i64 = 10_000;

/// Who programs a VPC's ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VpcController {
    /// Merak's own overlay: router namespaces, bridges and VXLAN.
    #[default]
    Builtin,
    /// The provider's `controller`: merak builds the EVMs' devices, leaves
    /// their EPM ends unattached, and tells the controller about the ports.
    External,
}

impl VpcController {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "builtin" => Some(VpcController::Builtin),
            "external" => Some(VpcController::External),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            VpcController::Builtin => "builtin",
            VpcController::External => "external",
        }
    }
}

/// The `controller` block, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerSpec {
    /// `http://host[:port][/path]`, without a trailing slash; the API's
    /// paths are appended to it.
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub timeout_s: u32,
    pub batch_size: u32,
}

/// The `controller` block as configured.
#[derive(Debug, Clone, Default)]
pub struct ControllerInput {
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub timeout_s: Option<i64>,
    pub batch_size: Option<i64>,
}

impl ControllerSpec {
    pub fn validate(input: ControllerInput) -> Result<Self, Vec<SpecError>> {
        let mut errors = Vec::new();
        if let Err(detail) = check_url(&input.url) {
            errors.push(SpecError::new("url", "Invalid controller url", detail));
        }
        for (name, value) in &input.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                errors.push(SpecError::new(
                    "headers",
                    "Invalid header name",
                    format!("{name:?} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)."),
                ));
            } else if http::HeaderValue::from_str(value).is_err() {
                errors.push(SpecError::new(
                    "headers",
                    "Invalid header value",
                    format!("The value of header {name:?} holds a control character or a non-ASCII byte."),
                ));
            }
        }
        let timeout_s = bounded(
            "timeout_s",
            input.timeout_s,
            DEFAULT_TIMEOUT_S,
            MAX_TIMEOUT_S,
            "seconds one request may take",
            &mut errors,
        );
        let batch_size = bounded(
            "batch_size",
            input.batch_size,
            DEFAULT_BATCH_SIZE,
            MAX_BATCH_SIZE,
            "ports one request carries",
            &mut errors,
        );
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ControllerSpec {
            url: input.url.trim_end_matches('/').to_string(),
            headers: input.headers,
            timeout_s,
            batch_size,
        })
    }
}

fn bounded(
    attribute: &'static str,
    value: Option<i64>,
    default: u32,
    max: i64,
    what: &str,
    errors: &mut Vec<SpecError>,
) -> u32 {
    match value {
        None => default,
        Some(v) if (1..=max).contains(&v) => v as u32,
        Some(v) => {
            errors.push(SpecError::new(
                attribute,
                format!("Invalid {attribute}"),
                format!("{attribute} is {v}; the {what}: from 1 to {max}."),
            ));
            default
        }
    }
}

/// A base URL the API's paths can follow: plain HTTP to a host, nothing
/// after the path.
fn check_url(text: &str) -> Result<(), String> {
    let example = "e.g. \"http://127.0.0.1:8080\"";
    let url = reqwest::Url::parse(text)
        .map_err(|e| format!("{text:?} is not a URL ({e}); give the controller's base URL, {example}."))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(format!(
                "{text:?} uses https, which this provider version does not speak; use http ({example}), e.g. through a TLS-terminating proxy on loopback."
            ));
        }
        other => return Err(format!("{text:?} has scheme {other:?}; the controller is reached over http, {example}.")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?} names no host; {example}."));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{text:?} holds credentials; send them in headers instead, e.g. headers = {{ Authorization = \"Bearer ...\" }}."
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{text:?} has a query or fragment; give a base URL that the API's paths (/v1/ports) can follow."
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(url: &str) -> ControllerInput {
        ControllerInput { url: url.into(), ..ControllerInput::default() }
    }

    #[test]
    fn a_plain_http_base_url_is_taken_and_defaults_fill_in() {
        let spec = ControllerSpec::validate(input("http://127.0.0.1:8080/api/")).unwrap();
        assert_eq!(spec.url, "http://127.0.0.1:8080/api");
        assert_eq!((spec.timeout_s, spec.batch_size), (DEFAULT_TIMEOUT_S, DEFAULT_BATCH_SIZE));
        assert!(ControllerSpec::validate(input("http://controller.example")).is_ok());
    }

    #[test]
    fn malformed_urls_are_refused_saying_what_to_give() {
        for (url, says) in [
            ("", "not a URL"),
            ("127.0.0.1:8080", "not a URL"),
            ("controller:8080", "scheme \"controller\""),
            ("ftp://host", "scheme \"ftp\""),
            ("https://host", "https"),
            ("http://user:pw@host", "credentials"),
            ("http://host/?a=1", "query"),
            ("http://", "not a URL"),
        ] {
            let errors = ControllerSpec::validate(input(url)).unwrap_err();
            assert_eq!(errors[0].attribute, "url", "{url}");
            assert!(errors[0].detail.contains(says), "{url}: {}", errors[0].detail);
        }
    }

    #[test]
    fn headers_and_bounds_are_checked() {
        let mut bad = input("http://h");
        bad.headers.insert("Bad Header".into(), "x".into());
        bad.headers.insert("X-Ok".into(), "line\nbreak".into());
        bad.timeout_s = Some(0);
        bad.batch_size = Some(10_001);
        let attributes: Vec<&str> = ControllerSpec::validate(bad).unwrap_err().iter().map(|e| e.attribute).collect();
        assert_eq!(attributes, ["headers", "headers", "timeout_s", "batch_size"]);
    }

    #[test]
    fn vpc_controllers_round_trip_their_names() {
        for kind in [VpcController::Builtin, VpcController::External] {
            assert_eq!(VpcController::parse(kind.name()), Some(kind));
        }
        assert_eq!(VpcController::parse("ovn"), None);
    }
}
