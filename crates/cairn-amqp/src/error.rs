//! How the client library's errors become [`TransportError`]s, and [`AmqpError`], the
//! causes this transport reports itself.
//!
//! | What happened | [`TransportError`] |
//! |---|---|
//! | the TCP connection or the handshake failed, or took longer than `connect_timeout` | `Unreachable` naming the endpoint (never the password) |
//! | the broker refused: wrong credentials, no access to the vhost or a resource, a queue declared before with other arguments | `Refused` with the broker's reason |
//! | the broker nacked a publish | `Broker` with [`AmqpError::NotConfirmed`] |
//! | an answer to a delivery whose channel is gone | `Broker` with [`AmqpError::StaleDelivery`] |
//! | confirms later than `confirm_timeout` | `Timeout` |
//! | anything else from the client | `Broker` with the client's error |

use cairn_bus::TransportError;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

use crate::endpoint::Endpoint;

/// Causes the transport reports inside [`TransportError::Broker`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpError {
    /// The broker answered a publish with `basic.nack`: it did not take the message.
    #[error("the broker did not take message {id} (basic.nack)")]
    NotConfirmed {
        /// The message's id.
        id: uuid::Uuid,
    },
    /// The delivery came through a channel that has closed since (a connection that
    /// dropped, a subscription ended); the broker delivers the message again.
    #[error("the delivery's channel is closed; the broker delivers the message again")]
    StaleDelivery,
    /// The client library failed; its message, with any password masked.
    #[error("{0}")]
    Client(String),
}

/// The broker's reason when `error` is a refusal (access, permissions, a precondition).
fn refusal(error: &lapin::Error) -> Option<String> {
    let lapin::ErrorKind::ProtocolError(amqp) = error.kind() else {
        return None;
    };
    let refused = matches!(
        amqp.kind(),
        AMQPErrorKind::Soft(
            AMQPSoftError::ACCESSREFUSED
                | AMQPSoftError::PRECONDITIONFAILED
                | AMQPSoftError::RESOURCELOCKED
        ) | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED | AMQPHardError::RESOURCEERROR)
    );
    refused.then(|| amqp.get_message().to_string())
}

/// Whether `error` says the queue or exchange does not exist.
pub(crate) fn is_not_found(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
    )
}

/// An error of `operation` on an open connection.
pub(crate) fn operation(
    endpoint: &Endpoint,
    operation: &str,
    error: lapin::Error,
) -> TransportError {
    if let Some(reason) = refusal(&error) {
        return TransportError::Refused {
            operation: operation.to_owned(),
            reason: endpoint.redact(&reason),
        };
    }
    TransportError::Broker {
        operation: operation.to_owned(),
        source: Box::new(AmqpError::Client(endpoint.redact(&error.to_string()))),
    }
}

/// An error opening a connection.
pub(crate) fn connecting(endpoint: &Endpoint, error: lapin::Error) -> TransportError {
    if let Some(reason) = refusal(&error) {
        return TransportError::Refused {
            operation: format!("the connection to {endpoint}"),
            reason: endpoint.redact(&reason),
        };
    }
    TransportError::Unreachable {
        endpoint: endpoint.shown().to_owned(),
        source: Box::new(AmqpError::Client(endpoint.redact(&error.to_string()))),
    }
}
