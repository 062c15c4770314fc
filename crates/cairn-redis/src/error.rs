//! How the client's errors become [`TransportError`]s, [`StaleDelivery`],
//! [`UndecodableEntry`], and the redaction that keeps passwords out of every message.

use std::time::Duration;

use cairn_bus::TransportError;
use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::codec::MetaError;

/// The cause carried by [`TransportError::Broker`] when a delivery handed out before the
/// subscription lost its connection is answered: the message was handed out again since,
/// and the answer changes nothing.
#[derive(Debug, thiserror::Error)]
#[error("the delivery was handed out before the connection dropped; it is delivered again")]
#[non_exhaustive]
pub struct StaleDelivery;

/// The cause carried by [`TransportError::Broker`] when a subscription meets an entry
/// whose `cairn-meta` field it cannot read: written in a version it does not know, or
/// damaged. The entry is not handed out and stays pending, so it is not lost: after
/// [`claim_idle`](crate::RedisOptions::claim_idle) a consumer of the group takes it over
/// (one that knows its version handles it; one that does not reports it again).
#[derive(Debug, thiserror::Error)]
#[error("entry {entry} of stream {stream} is left pending, unread: {reason}")]
#[non_exhaustive]
pub struct UndecodableEntry {
    /// The stream's key.
    pub stream: String,
    /// The entry's id, `<milliseconds>-<sequence>`.
    pub entry: String,
    /// Why its `cairn-meta` field cannot be read.
    #[source]
    pub reason: MetaError,
}

/// The error reporting an entry of `stream` the subscription refuses.
pub(crate) fn undecodable(stream: &str, entry: String, reason: MetaError) -> TransportError {
    TransportError::Broker {
        operation: "reading an entry".to_owned(),
        source: Box::new(UndecodableEntry {
            stream: stream.to_owned(),
            entry,
            reason,
        }),
    }
}

/// The error of answering a stale delivery.
pub(crate) fn stale(operation: &str) -> TransportError {
    TransportError::Broker {
        operation: operation.to_owned(),
        source: Box::new(StaleDelivery),
    }
}

/// Maps a client error of `operation` against `endpoint` (already redacted).
pub(crate) fn map(
    operation: &str,
    endpoint: &str,
    timeout: Duration,
    error: RedisError,
) -> TransportError {
    if refused(&error) {
        return TransportError::Refused {
            operation: operation.to_owned(),
            reason: error.to_string(),
        };
    }
    if error.is_timeout() {
        return TransportError::Timeout {
            operation: operation.to_owned(),
            after: timeout,
        };
    }
    if error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal() {
        return TransportError::Unreachable {
            endpoint: endpoint.to_owned(),
            source: Box::new(error),
        };
    }
    TransportError::Broker {
        operation: operation.to_owned(),
        source: Box::new(error),
    }
}

/// Whether the server refused: wrong credentials or missing permissions.
fn refused(error: &RedisError) -> bool {
    matches!(error.kind(), ErrorKind::AuthenticationFailed)
        || matches!(error.kind(), ErrorKind::Server(ServerErrorKind::NoPerm))
        || matches!(error.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
}

/// Whether the error says the group (or its stream) does not exist.
pub(crate) fn is_no_group(error: &RedisError) -> bool {
    error.code() == Some("NOGROUP")
}

/// Whether the error is a lost or broken connection, after which the subscription's own
/// connection is made anew.
pub(crate) fn is_connection_error(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_unrecoverable_error()
}

/// `url` with the password, if any, replaced by `***`: what errors and `Debug` show.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None => userinfo.to_owned(),
    };
    format!("{scheme}://{user}@{host}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_password_and_keeps_the_rest() {
        assert_eq!(
            redact("redis://alice:s3cret@host:6379/2"),
            "redis://alice:***@host:6379/2"
        );
        assert_eq!(redact("redis://:s3cret@host"), "redis://:***@host");
        assert_eq!(redact("rediss://host:6380"), "rediss://host:6380");
        assert_eq!(redact("redis://alice@host"), "redis://alice@host");
        assert_eq!(redact("not a url"), "not a url");
        assert_eq!(redact("redis://a:p@ss@host/0"), "redis://a:***@host/0");
    }
}
