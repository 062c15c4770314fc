//! The memory transport's own error: [`StaleDelivery`], the cause of the
//! [`TransportError`](crate::TransportError) an answer gets when its delivery no longer
//! belongs to the consumer that answers it.

/// The delivery was taken back before it was answered: its connection was severed or
/// closed, so the message went back to its group's queue and is (or will be) delivered
/// again. Answering it again changes nothing; the inbox makes the second delivery harmless.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the delivery of message {id} on {topic:?} was taken back when its connection broke; \
     the message is delivered again"
)]
#[non_exhaustive]
pub struct StaleDelivery {
    /// The topic of the delivery.
    pub topic: String,
    /// The message's id.
    pub id: uuid::Uuid,
}
