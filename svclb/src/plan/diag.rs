//! Diagnostics: a problem with one input object, named so an operator can find it.

use std::fmt;

/// One object that could not be served (or served only in part), and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Diagnostic {
    /// What the problem is about: `Service default/web`, `file svc.yaml (document 2)`, ...
    pub object: String,
    pub reason: String,
}

impl Diagnostic {
    pub fn new(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            object: object.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.reason)
    }
}
