//! How the client's errors become [`TransportError`]s: a failed connect is
//! `Unreachable` or (bad credentials) `Refused`; a request that got no answer in time is
//! `Timeout`; a permissions violation or JetStream being off is `Refused`; the rest is
//! `Broker` with the client's error as the cause. Messages never carry credentials: the
//! client is only ever given the address without them.

use std::time::Duration;

use async_nats::{ConnectError, ConnectErrorKind};
use cairn_bus::TransportError;

use crate::endpoint::Endpoint;

/// A failed connect.
pub(crate) fn connect(endpoint: &Endpoint, error: ConnectError) -> TransportError {
    match error.kind() {
        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
            TransportError::Refused {
                operation: format!("connecting to {endpoint}"),
                reason: error.to_string(),
            }
        }
        _ => TransportError::Unreachable {
            endpoint: endpoint.to_string(),
            source: Box::new(error),
        },
    }
}

/// A failed JetStream API request, publish or answer.
pub(crate) fn request<E>(
    operation: impl Into<String>,
    timeout: Duration,
    error: E,
) -> TransportError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let operation = operation.into();
    let text = error.to_string().to_ascii_lowercase();
    if text.contains("timed out") || text.contains("timeout") {
        TransportError::Timeout {
            operation,
            after: timeout,
        }
    } else if text.contains("permission") || text.contains("authorization") {
        TransportError::Refused {
            operation,
            reason: error.to_string(),
        }
    } else if text.contains("not enabled") {
        TransportError::Refused {
            operation,
            reason: format!("{error} (is JetStream enabled for this account?)"),
        }
    } else {
        TransportError::Broker {
            operation,
            source: Box::new(error),
        }
    }
}
