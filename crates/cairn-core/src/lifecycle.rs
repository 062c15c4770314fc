//! A stream's lifecycle: retention metadata, soft deletion and tombstones, and the rule
//! that decides which events stay visible.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::Timestamp;
use crate::name::StreamName;
use crate::position::{CurrentRevision, Revision};

/// Retention settings of a stream. Events they hide are invisible to every read and
/// subscription at once; a scavenge reclaims their space later.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cairn_core::StreamMetadata;
///
/// let keep_last_day = StreamMetadata::default()
///     .with_max_age(Duration::from_secs(86_400))
///     .with_max_count(10_000);
/// assert_eq!(keep_last_day.max_count, Some(10_000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StreamMetadata {
    /// Keep only the last `max_count` events.
    pub max_count: Option<u64>,
    /// Keep only events recorded less than `max_age` ago.
    pub max_age: Option<Duration>,
    /// Hide every event with a revision below this one.
    pub truncate_before: Option<Revision>,
}

impl StreamMetadata {
    /// Keeps only the last `max_count` events.
    #[must_use]
    pub fn with_max_count(mut self, max_count: u64) -> Self {
        self.max_count = Some(max_count);
        self
    }

    /// Keeps only events younger than `max_age`.
    #[must_use]
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// Hides events below `revision`.
    #[must_use]
    pub fn with_truncate_before(mut self, revision: Revision) -> Self {
        self.truncate_before = Some(revision);
        self
    }
}

/// Where a stream is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum StreamState {
    /// Never written.
    NoStream,
    /// Written; `last_revision` is the revision of its last event.
    Active {
        /// The revision of the last event.
        last_revision: Revision,
    },
    /// Soft-deleted: reads as absent; writing recreates it, with revisions continuing
    /// after `last_revision`.
    Deleted {
        /// The revision of the last event before the deletion.
        last_revision: Revision,
    },
    /// Deleted for good: every read and write is refused.
    Tombstoned,
}

impl StreamState {
    /// The revision as a writer's expectation sees it (soft-deleted and tombstoned streams
    /// read as absent).
    pub fn current_revision(self) -> CurrentRevision {
        match self {
            Self::Active { last_revision } => CurrentRevision::Revision(last_revision),
            Self::NoStream | Self::Deleted { .. } | Self::Tombstoned => CurrentRevision::NoStream,
        }
    }

    /// The revision the next appended event gets.
    pub fn next_revision(self) -> Revision {
        match self {
            Self::Active { last_revision } | Self::Deleted { last_revision } => {
                last_revision.next()
            }
            Self::NoStream | Self::Tombstoned => Revision(0),
        }
    }
}

/// What the store knows about one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// The stream.
    pub stream: StreamName,
    /// Its state.
    pub state: StreamState,
    /// Its retention settings.
    pub metadata: StreamMetadata,
}

/// The rule that decides which of a stream's events are visible, shared by every backend so
/// that they agree to the event.
///
/// `deleted_before` is the boundary a soft delete left (the first revision after the events
/// it deleted), kept apart from the user's `truncate_before` so that changing the metadata
/// later never brings deleted events back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visibility {
    first_visible: Revision,
    recorded_after: Option<Timestamp>,
}

impl Visibility {
    /// The visibility of a stream whose last event is `last_revision`, at time `now`.
    pub fn new(
        metadata: &StreamMetadata,
        deleted_before: Option<Revision>,
        last_revision: Revision,
        now: Timestamp,
    ) -> Self {
        let mut first = metadata.truncate_before.unwrap_or_default();
        if let Some(deleted_before) = deleted_before {
            first = first.max(deleted_before);
        }
        if let Some(max_count) = metadata.max_count {
            let kept_from = last_revision.0.saturating_add(1).saturating_sub(max_count);
            first = first.max(Revision(kept_from));
        }
        Self {
            first_visible: first,
            recorded_after: metadata.max_age.map(|age| now.saturating_sub(age)),
        }
    }

    /// Everything visible.
    pub fn everything() -> Self {
        Self {
            first_visible: Revision(0),
            recorded_after: None,
        }
    }

    /// The lowest revision that may be visible.
    pub fn first_visible(&self) -> Revision {
        self.first_visible
    }

    /// Whether the event at `revision`, recorded at `recorded`, is visible.
    pub fn shows(&self, revision: Revision, recorded: Timestamp) -> bool {
        revision >= self.first_visible
            && self.recorded_after.is_none_or(|cutoff| recorded >= cutoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_retention_rule_hides_what_it_names() {
        let now = Timestamp(10_000_000);
        let old = Timestamp(1_000_000);
        let young = Timestamp(9_900_000);
        let all = Visibility::new(&StreamMetadata::default(), None, Revision(9), now);
        assert!(all.shows(Revision(0), old));

        let count = StreamMetadata::default().with_max_count(3);
        let v = Visibility::new(&count, None, Revision(9), now);
        assert!(!v.shows(Revision(6), young));
        assert!(v.shows(Revision(7), young));
        // A max_count larger than the stream hides nothing.
        let v = Visibility::new(&count, None, Revision(1), now);
        assert!(v.shows(Revision(0), young));

        let age = StreamMetadata::default().with_max_age(Duration::from_secs(1));
        let v = Visibility::new(&age, None, Revision(9), now);
        assert!(!v.shows(Revision(9), old));
        assert!(v.shows(Revision(0), young));

        let truncated = StreamMetadata::default().with_truncate_before(Revision(4));
        let v = Visibility::new(&truncated, None, Revision(9), now);
        assert!(!v.shows(Revision(3), young));
        assert!(v.shows(Revision(4), young));

        // A soft delete's boundary wins over a lower truncate_before.
        let v = Visibility::new(&truncated, Some(Revision(8)), Revision(9), now);
        assert!(!v.shows(Revision(7), young));
        assert!(v.shows(Revision(8), young));
    }

    #[test]
    fn soft_deleted_streams_read_as_absent_but_continue_revisions() {
        let deleted = StreamState::Deleted {
            last_revision: Revision(4),
        };
        assert_eq!(deleted.current_revision(), CurrentRevision::NoStream);
        assert_eq!(deleted.next_revision(), Revision(5));
        assert_eq!(StreamState::NoStream.next_revision(), Revision(0));
    }
}
