//! [`TraceParentError`]: why a `traceparent` header was not understood.

/// Why a W3C `traceparent` header was rejected. The trace middleware never fails a message
/// over it: it starts a new trace instead. Each variant has a stable [`code`](Self::code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceParentError {
    /// A field is missing: the header has fewer than four `-`-separated fields.
    #[error("the traceparent has no {field}")]
    Missing {
        /// The missing field: `version`, `trace-id`, `parent-id` or `trace-flags`.
        field: &'static str,
    },
    /// A field has the wrong length.
    #[error("the traceparent {field} is {found} bytes long instead of {expected}")]
    Length {
        /// The field.
        field: &'static str,
        /// Its length, in bytes.
        found: usize,
        /// The length the format requires.
        expected: usize,
    },
    /// A field holds something other than lower-case hexadecimal digits.
    #[error("the traceparent {field} is not lower-case hexadecimal")]
    NotHex {
        /// The field.
        field: &'static str,
    },
    /// Version `ff`, which the format forbids.
    #[error("traceparent version ff is invalid")]
    ForbiddenVersion,
    /// A version `00` header with more than four fields.
    #[error("a version 00 traceparent has data after its flags")]
    TrailingData,
    /// The trace id is all zeros.
    #[error("the traceparent trace-id is all zeros")]
    ZeroTraceId,
    /// The parent id is all zeros.
    #[error("the traceparent parent-id is all zeros")]
    ZeroParentId,
}

impl TraceParentError {
    /// A stable code for the error, never reused for another meaning.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing { .. } => "traceparent_missing_field",
            Self::Length { .. } => "traceparent_length",
            Self::NotHex { .. } => "traceparent_not_hex",
            Self::ForbiddenVersion => "traceparent_forbidden_version",
            Self::TrailingData => "traceparent_trailing_data",
            Self::ZeroTraceId => "traceparent_zero_trace_id",
            Self::ZeroParentId => "traceparent_zero_parent_id",
        }
    }
}
