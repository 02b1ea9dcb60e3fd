//! Validation errors.

use std::fmt;

/// One problem in a route list, with the key path of the offending value.
///
/// Displays as `routes[2].match.ports[0]: port 0 is not a listening port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[non_exhaustive]
pub struct ValidationError {
    /// Key path from the route list, e.g. `routes[2].action.targets[0].port`.
    pub path: String,
    /// What is wrong, lower-case, no trailing period.
    pub message: String,
}

impl ValidationError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into() }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for ValidationError {}

/// Every error of a route list, for `?` in callers that want one error value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} route configuration error(s): {}", .0.len(), join(.0))]
pub struct ValidationErrors(pub Vec<ValidationError>);

fn join(v: &[ValidationError]) -> String {
    v.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

impl From<Vec<ValidationError>> for ValidationErrors {
    fn from(v: Vec<ValidationError>) -> Self {
        Self(v)
    }
}
