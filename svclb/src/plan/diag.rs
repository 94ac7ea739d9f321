//! Diagnostics: a problem with one input object, named so an operator can find it.

use std::fmt;

/// One object that could not be served (or served only in part), and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Diagnostic {
    /// What the problem is about: `Service default/web`, `file svc.yaml (document 2)`, ...
    pub object: String,
    pub reason: String,
    pub kind: Kind,
}

/// What kind of problem a [`Diagnostic`] is. Every kind but [`Kind::Invalid`] is a frontend
/// of a valid Service refused, which `svclb_frontends_refused{service, reason}` names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The object (or a field of it) is malformed or not served, or is served in part.
    #[default]
    Invalid,
    /// Another Service serves a frontend this one claims.
    Conflict,
    /// An address this Service asks for is reserved (the node's, the service CIDR's, ...).
    Reserved,
    /// The maps have no room for a frontend.
    MapFull,
}

impl Kind {
    /// The `reason` label of `svclb_frontends_refused`; `None` for [`Kind::Invalid`].
    pub fn refusal(self) -> Option<&'static str> {
        match self {
            Self::Invalid => None,
            Self::Conflict => Some("conflict"),
            Self::Reserved => Some("reserved_address"),
            Self::MapFull => Some("map_full"),
        }
    }
}

impl Diagnostic {
    pub fn new(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            object: object.into(),
            reason: reason.into(),
            kind: Kind::Invalid,
        }
    }

    /// The same problem, of `kind`.
    #[must_use]
    pub fn of(self, kind: Kind) -> Self {
        Self { kind, ..self }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.reason)
    }
}
