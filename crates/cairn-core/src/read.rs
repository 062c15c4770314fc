//! Read requests and the pages they return: one stream by revision, or the global log
//! (`$all`) by position with filters.

use serde::{Deserialize, Serialize};

use crate::event::RecordedEvent;
use crate::name::category_of;
use crate::position::{Position, Revision};

/// The most events one page holds, whatever limit the reader asked for.
pub const MAX_PAGE_SIZE: usize = 4096;

/// Once a page's payloads reach this many bytes it ends early (it always holds at least
/// one event), so a page of large events cannot exhaust memory.
pub const MAX_PAGE_BYTES: usize = 16 << 20;

/// The page size a read request gets when it names none.
pub const DEFAULT_PAGE_SIZE: usize = 512;

/// The number of events a request for `limit` events may return: at least one, at most
/// [`MAX_PAGE_SIZE`].
pub fn page_limit(limit: usize) -> usize {
    limit.clamp(1, MAX_PAGE_SIZE)
}

/// Which way a read walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From older to newer events.
    #[default]
    Forwards,
    /// From newer to older events.
    Backwards,
}

/// A request to read one stream.
///
/// # Examples
///
/// ```
/// use cairn_core::{ReadStream, Revision};
///
/// let first_ten = ReadStream::forwards().limit(10);
/// let last_one = ReadStream::backwards().limit(1);
/// let from_five = ReadStream::forwards().from_revision(Revision(5));
/// # let _ = (first_ten, last_one, from_five);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadStream {
    /// Which way to read.
    pub direction: Direction,
    /// The first revision to return (inclusive); `None` reads from the start (forwards) or
    /// from the end (backwards).
    pub from: Option<Revision>,
    /// The most events to return; see [`page_limit`].
    pub limit: usize,
}

impl ReadStream {
    /// Reads forwards from the start, one default page.
    pub fn forwards() -> Self {
        Self {
            direction: Direction::Forwards,
            from: None,
            limit: DEFAULT_PAGE_SIZE,
        }
    }

    /// Reads backwards from the end, one default page.
    pub fn backwards() -> Self {
        Self {
            direction: Direction::Backwards,
            ..Self::forwards()
        }
    }

    /// Starts at `revision` (inclusive).
    #[must_use]
    pub fn from_revision(mut self, revision: Revision) -> Self {
        self.from = Some(revision);
        self
    }

    /// Returns at most `limit` events.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
}

/// One page of a stream read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamPage {
    /// The visible events, in the order of the read's direction.
    pub events: Vec<RecordedEvent>,
    /// Where the following page starts (pass as [`ReadStream::from`]); `None` when no
    /// visible event lies beyond this page in the read's direction.
    pub next: Option<Revision>,
}

/// Which events of `$all` a read or subscription wants. The conditions that are set must
/// all hold; an empty filter matches every event.
///
/// # Examples
///
/// ```
/// use cairn_core::EventFilter;
///
/// let orders_placed = EventFilter::category("order").with_event_type("OrderPlaced");
/// assert!(orders_placed.matches("order-1", "OrderPlaced"));
/// assert!(!orders_placed.matches("order-1", "OrderShipped"));
/// assert!(!orders_placed.matches("orders-1", "OrderPlaced"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EventFilter {
    /// The stream name must start with this text.
    pub stream_prefix: Option<String>,
    /// The stream must be in this category (see [`StreamName::category`](crate::StreamName::category)).
    pub category: Option<String>,
    /// The event type must be one of these; empty means any type.
    pub event_types: Vec<String>,
}

impl EventFilter {
    /// Matches every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Matches events of streams whose name starts with `prefix`.
    pub fn stream_prefix(prefix: impl Into<String>) -> Self {
        Self {
            stream_prefix: Some(prefix.into()),
            ..Self::default()
        }
    }

    /// Matches events of streams in `category`.
    pub fn category(category: impl Into<String>) -> Self {
        Self {
            category: Some(category.into()),
            ..Self::default()
        }
    }

    /// Matches events of the given types.
    pub fn event_types<I, T>(types: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        Self {
            event_types: types.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Also accepts events of type `event_type`.
    #[must_use]
    pub fn with_event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_types.push(event_type.into());
        self
    }

    /// Whether the filter matches every event.
    pub fn is_empty(&self) -> bool {
        self.stream_prefix.is_none() && self.category.is_none() && self.event_types.is_empty()
    }

    /// Whether an event of `event_type` in stream `stream` passes the filter.
    pub fn matches(&self, stream: &str, event_type: &str) -> bool {
        self.matches_stream(stream) && self.matches_type(event_type)
    }

    /// Whether events of stream `stream` can pass the filter (their type aside).
    pub fn matches_stream(&self, stream: &str) -> bool {
        self.stream_prefix
            .as_deref()
            .is_none_or(|prefix| stream.starts_with(prefix))
            && self
                .category
                .as_deref()
                .is_none_or(|category| category_of(stream) == category)
    }

    /// Whether an event of `event_type` can pass the filter (its stream aside).
    pub fn matches_type(&self, event_type: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type)
    }

    /// Whether `event` passes the filter.
    pub fn matches_event(&self, event: &RecordedEvent) -> bool {
        self.matches(event.stream.as_str(), &event.event_type)
    }
}

/// A request to read the global log, `$all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadAll {
    /// Which way to read.
    pub direction: Direction,
    /// The first position to consider (inclusive; it need not be an event's position);
    /// `None` reads from the start (forwards) or from the end (backwards).
    pub from: Option<Position>,
    /// The most events to return; see [`page_limit`].
    pub limit: usize,
    /// Which events to return.
    pub filter: EventFilter,
}

impl ReadAll {
    /// Reads forwards from the start, one default page, unfiltered.
    pub fn forwards() -> Self {
        Self {
            direction: Direction::Forwards,
            from: None,
            limit: DEFAULT_PAGE_SIZE,
            filter: EventFilter::all(),
        }
    }

    /// Reads backwards from the end, one default page, unfiltered.
    pub fn backwards() -> Self {
        Self {
            direction: Direction::Backwards,
            ..Self::forwards()
        }
    }

    /// Starts at `position` (inclusive).
    #[must_use]
    pub fn from_position(mut self, position: Position) -> Self {
        self.from = Some(position);
        self
    }

    /// Returns at most `limit` events.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Returns only events that pass `filter`.
    #[must_use]
    pub fn filter(mut self, filter: EventFilter) -> Self {
        self.filter = filter;
        self
    }
}

/// One page of a `$all` read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllPage {
    /// The matching visible events, in the order of the read's direction.
    pub events: Vec<RecordedEvent>,
    /// Where the following page starts (pass as [`ReadAll::from`]). Forwards it is always
    /// set, also at the end of the log, and lies past every event this page examined, so
    /// a filtered reader that polls never examines the same events twice. Backwards it is
    /// `None` once the start of the log was reached.
    pub next: Option<Position>,
    /// Whether this page reached the end of the log in its direction (forwards: nothing
    /// committed beyond `next` yet).
    pub end: bool,
}
