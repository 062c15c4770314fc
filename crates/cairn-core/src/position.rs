//! Where an event is: its revision inside its stream and its position in the global log,
//! and what a writer expects a stream's revision to be.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The place of an event inside its stream: 0 for the first event, then 1, 2, … with no gap.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Revision(pub u64);

impl Revision {
    /// The revision after this one.
    #[must_use]
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The place of an event in the global log (`$all`).
///
/// Positions are totally ordered and strictly increasing in commit order: an append that
/// was acknowledged before another one started has the smaller positions. They are not
/// dense (a backend may leave holes, for instance a byte offset or a packed transaction
/// id), so never compute a count of events from two positions. A reader is only ever
/// handed a position once every smaller position is visible or known never to appear.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Position(pub u64);

impl Position {
    /// The smallest position; reading `$all` forwards from it reads from the beginning.
    pub const START: Self = Self(0);

    /// The position right after this one (saturating).
    #[must_use]
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// What a writer expects the stream's current revision to be; the append is refused with
/// a conflict carrying the actual revision when the expectation does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedRevision {
    /// No expectation: append whatever the stream's state (except a tombstoned stream).
    Any,
    /// The stream must not exist (never written, or soft-deleted).
    NoStream,
    /// The stream must exist: written at least once and not deleted since (events hidden
    /// by retention still count).
    StreamExists,
    /// The stream's last revision must be exactly this one.
    Exact(u64),
}

impl ExpectedRevision {
    /// Whether the expectation holds for a stream currently at `current`.
    pub fn is_satisfied_by(self, current: CurrentRevision) -> bool {
        match (self, current) {
            (Self::Any, _) => true,
            (Self::NoStream, CurrentRevision::NoStream) => true,
            (Self::StreamExists, CurrentRevision::Revision(_)) => true,
            (Self::Exact(expected), CurrentRevision::Revision(actual)) => expected == actual.0,
            _ => false,
        }
    }
}

impl From<Revision> for ExpectedRevision {
    fn from(revision: Revision) -> Self {
        Self::Exact(revision.0)
    }
}

impl fmt::Display for ExpectedRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no stream"),
            Self::StreamExists => f.write_str("stream exists"),
            Self::Exact(revision) => write!(f, "revision {revision}"),
        }
    }
}

/// A stream's revision as a writer sees it: absent, or the revision of its last event.
///
/// A soft-deleted stream reads as [`CurrentRevision::NoStream`] until it is written again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CurrentRevision {
    /// The stream has no events a writer could build on.
    NoStream,
    /// The revision of the stream's last event.
    Revision(Revision),
}

impl fmt::Display for CurrentRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoStream => f.write_str("no stream"),
            Self::Revision(revision) => write!(f, "revision {revision}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_hold_exactly_when_the_contract_says() {
        use CurrentRevision as C;
        use ExpectedRevision as E;
        let at = |n| C::Revision(Revision(n));
        assert!(E::Any.is_satisfied_by(C::NoStream));
        assert!(E::Any.is_satisfied_by(at(3)));
        assert!(E::NoStream.is_satisfied_by(C::NoStream));
        assert!(!E::NoStream.is_satisfied_by(at(0)));
        assert!(!E::StreamExists.is_satisfied_by(C::NoStream));
        assert!(E::StreamExists.is_satisfied_by(at(0)));
        assert!(E::Exact(3).is_satisfied_by(at(3)));
        assert!(!E::Exact(3).is_satisfied_by(at(4)));
        assert!(!E::Exact(0).is_satisfied_by(C::NoStream));
    }
}
