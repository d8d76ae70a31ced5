//! Diagnostics: what the user sees when something is wrong, pointing at the
//! attribute to fix when there is one.

use merak_proto::tfplugin6 as pb;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub error: bool,
    pub summary: String,
    pub detail: String,
    /// Path of attribute names, e.g. `["local", "state_dir"]`; a step
    /// `[N]` is the Nth element of a list (`["epm_agent", "[1]", "command"]`).
    pub attribute: Vec<String>,
}

impl Diagnostic {
    pub fn error(summary: impl Into<String>, detail: impl Into<String>) -> Self {
        Diagnostic { error: true, summary: summary.into(), detail: detail.into(), attribute: Vec::new() }
    }

    pub fn warning(summary: impl Into<String>, detail: impl Into<String>) -> Self {
        Diagnostic { error: false, ..Self::error(summary, detail) }
    }

    /// An error about one attribute of the configuration.
    pub fn attribute_error(path: &[&str], summary: impl Into<String>, detail: impl Into<String>) -> Self {
        Diagnostic { attribute: path.iter().map(|s| s.to_string()).collect(), ..Self::error(summary, detail) }
    }

    pub fn to_proto(&self) -> pb::Diagnostic {
        use pb::attribute_path::{Step, step::Selector};
        let attribute = (!self.attribute.is_empty()).then(|| pb::AttributePath {
            steps: self
                .attribute
                .iter()
                .map(|name| {
                    let index = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).and_then(|n| n.parse().ok());
                    let selector = match index {
                        Some(index) => Selector::ElementKeyInt(index),
                        None => Selector::AttributeName(name.clone()),
                    };
                    Step { selector: Some(selector) }
                })
                .collect(),
        });
        pb::Diagnostic {
            severity: if self.error { pb::diagnostic::Severity::Error } else { pb::diagnostic::Severity::Warning }
                as i32,
            summary: self.summary.clone(),
            detail: self.detail.clone(),
            attribute,
        }
    }
}

/// A list of diagnostics, with helpers for the common "any errors?" test.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.error)
    }

    pub fn to_proto(&self) -> Vec<pb::Diagnostic> {
        self.0.iter().map(Diagnostic::to_proto).collect()
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(diagnostic: Diagnostic) -> Self {
        Diagnostics(vec![diagnostic])
    }
}
