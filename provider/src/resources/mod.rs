//! Resources and data sources: each maps configuration to the model and the
//! model to runtime calls.

pub mod topology;

use crate::model::SpecError;
use crate::protocol::diagnostics::Diagnostic;

impl From<SpecError> for Diagnostic {
    fn from(error: SpecError) -> Self {
        Diagnostic::attribute_error(&[error.attribute], error.summary, error.detail)
    }
}
