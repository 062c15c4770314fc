//! [`TraceContext`]: a W3C trace context (trace id, span id, flags, trace state), its
//! `traceparent` header and the ids it is made of.

use std::fmt;
use std::sync::Arc;

use rand::RngExt;

use super::TraceParentError;
use crate::message::{Headers, headers};

/// The id shared by every span of one trace: 16 bytes, never all zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(u128);

impl TraceId {
    /// The id with value `id`, or `None` for zero, which is invalid.
    pub fn new(id: u128) -> Option<Self> {
        (id != 0).then_some(Self(id))
    }

    /// A random id.
    pub fn random() -> Self {
        let mut rng = rand::rng();
        loop {
            if let Some(id) = Self::new(rng.random()) {
                return id;
            }
        }
    }

    /// The id as a number.
    pub fn get(self) -> u128 {
        self.0
    }
}

impl fmt::Display for TraceId {
    /// 32 lower-case hexadecimal digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The id of one span (here, one handling of one message): 8 bytes, never all zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(u64);

impl SpanId {
    /// The id with value `id`, or `None` for zero, which is invalid.
    pub fn new(id: u64) -> Option<Self> {
        (id != 0).then_some(Self(id))
    }

    /// A random id.
    pub fn random() -> Self {
        let mut rng = rand::rng();
        loop {
            if let Some(id) = Self::new(rng.random()) {
                return id;
            }
        }
    }

    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SpanId {
    /// 16 lower-case hexadecimal digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A W3C trace context: which trace a piece of work belongs to, its own span id, the span
/// it continues (if any), the trace flags and the vendors' `tracestate`.
///
/// [`parse`](Self::parse) reads the context a `traceparent` header describes (the sender's
/// span); [`child`](Self::child) makes the context of work done on its behalf (same trace,
/// fresh span id, the sender's span as parent); [`to_header`](Self::to_header) writes the
/// `traceparent` that makes this span the parent of the receiver's work.
///
/// # Examples
///
/// ```
/// use cairn_bus::trace::TraceContext;
///
/// let sender = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")?;
/// let handling = sender.child();
/// assert_eq!(handling.trace_id(), sender.trace_id());
/// assert_eq!(handling.parent_id(), Some(sender.span_id()));
/// assert!(handling.to_header().starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
/// # Ok::<(), cairn_bus::trace::TraceParentError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: TraceId,
    span_id: SpanId,
    parent_id: Option<SpanId>,
    flags: u8,
    trace_state: Option<Arc<str>>,
}

/// The `sampled` trace flag.
const SAMPLED: u8 = 0x01;

impl TraceContext {
    /// The start of a new trace: random trace and span ids, no parent, sampled.
    pub fn new_root() -> Self {
        Self {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_id: None,
            flags: SAMPLED,
            trace_state: None,
        }
    }

    /// The context a `traceparent` header describes: its trace id, the sender's span id
    /// (the header's parent id) and its flags; no trace state.
    ///
    /// Follows W3C Trace Context: surrounding spaces and tabs are ignored; every field is
    /// lower-case hex of its exact length; version `ff` is invalid; a version `00` header
    /// has exactly four fields, and a later version may have more, which are ignored.
    ///
    /// # Errors
    ///
    /// A [`TraceParentError`] saying what is wrong with the header.
    pub fn parse(traceparent: &str) -> Result<Self, TraceParentError> {
        let traceparent = traceparent.trim_matches([' ', '\t']);
        let mut fields = traceparent.split('-');
        let version = hex_field(fields.next(), "version", 2)?;
        if version == 0xff {
            return Err(TraceParentError::ForbiddenVersion);
        }
        let trace_id = hex_field(fields.next(), "trace-id", 32)?;
        let parent_id = hex_field(fields.next(), "parent-id", 16)?;
        let flags = hex_field(fields.next(), "trace-flags", 2)?;
        if version == 0 && fields.next().is_some() {
            return Err(TraceParentError::TrailingData);
        }
        let trace_id = TraceId::new(trace_id).ok_or(TraceParentError::ZeroTraceId)?;
        let span_id = u64::try_from(parent_id)
            .ok()
            .and_then(SpanId::new)
            .ok_or(TraceParentError::ZeroParentId)?;
        Ok(Self {
            trace_id,
            span_id,
            parent_id: None,
            // Two hex digits: it fits.
            flags: u8::try_from(flags).unwrap_or(SAMPLED),
            trace_state: None,
        })
    }

    /// The context carried by a message's headers: `traceparent` parsed, with `tracestate`
    /// attached; `Ok(None)` when there is no `traceparent`.
    ///
    /// # Errors
    ///
    /// When `traceparent` is present but malformed (see [`parse`](Self::parse)).
    pub fn extract(headers: &Headers) -> Result<Option<Self>, TraceParentError> {
        let Some(traceparent) = headers.get(headers::TRACEPARENT) else {
            return Ok(None);
        };
        let context = Self::parse(traceparent)?;
        let trace_state = headers
            .get(headers::TRACESTATE)
            .map(|state| state.trim_matches([' ', '\t']))
            .filter(|state| !state.is_empty());
        Ok(Some(context.with_trace_state(trace_state)))
    }

    /// The context of work done on behalf of this one: the same trace, flags and trace
    /// state, a fresh random span id, and this span as its parent.
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: SpanId::random(),
            parent_id: Some(self.span_id),
            flags: self.flags,
            trace_state: self.trace_state.clone(),
        }
    }

    /// Sets (or, with `None`, clears) the vendors' `tracestate`, carried as it is.
    #[must_use]
    pub fn with_trace_state(mut self, trace_state: Option<&str>) -> Self {
        self.trace_state = trace_state.map(Arc::from);
        self
    }

    /// The `traceparent` header naming this span as the parent:
    /// `00-<trace id>-<span id>-<flags>`.
    pub fn to_header(&self) -> String {
        self.to_string()
    }

    /// Writes `traceparent` (see [`to_header`](Self::to_header)) and `tracestate` into
    /// `headers`, removing a `tracestate` this context does not have, so that the receiver
    /// of a message carrying them continues this trace.
    pub fn inject_into(&self, headers: &mut Headers) {
        headers.insert(headers::TRACEPARENT.to_owned(), self.to_header());
        match &self.trace_state {
            Some(state) => {
                headers.insert(headers::TRACESTATE.to_owned(), state.to_string());
            }
            None => {
                headers.remove(headers::TRACESTATE);
            }
        }
    }

    /// The trace this span belongs to.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// This span's id.
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// The span this one continues, if it was made by [`child`](Self::child).
    pub fn parent_id(&self) -> Option<SpanId> {
        self.parent_id
    }

    /// The trace flags, as received (bit 0 is `sampled`).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the `sampled` flag is set: the trace is being recorded upstream.
    pub fn is_sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The vendors' `tracestate`, if any.
    pub fn trace_state(&self) -> Option<&str> {
        self.trace_state.as_deref()
    }
}

impl fmt::Display for TraceContext {
    /// The `traceparent` header.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

/// Parses a field of exactly `len` lower-case hex digits (at most 32).
fn hex_field(
    field: Option<&str>,
    name: &'static str,
    len: usize,
) -> Result<u128, TraceParentError> {
    let field = field.ok_or(TraceParentError::Missing { field: name })?;
    if field.len() != len {
        return Err(TraceParentError::Length {
            field: name,
            found: field.len(),
            expected: len,
        });
    }
    field.bytes().try_fold(0u128, |value, byte| {
        let digit = match byte {
            b'0'..=b'9' => byte - b'0',
            b'a'..=b'f' => byte - b'a' + 10,
            _ => return Err(TraceParentError::NotHex { field: name }),
        };
        Ok(value << 4 | u128::from(digit))
    })
}
