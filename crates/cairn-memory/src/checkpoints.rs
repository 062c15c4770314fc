//! [`MemoryCheckpoints`]: subscriber checkpoints kept in memory, for tests and for
//! subscribers that rebuild from the start on every run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use cairn_core::{CheckpointError, Checkpoints, Position, validate_subscriber_name};

/// Checkpoints in one process's memory; clones share them. Not durable.
#[derive(Debug, Clone, Default)]
pub struct MemoryCheckpoints {
    saved: Arc<Mutex<HashMap<String, Position>>>,
}

impl MemoryCheckpoints {
    /// No checkpoints.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Checkpoints for MemoryCheckpoints {
    async fn load(&self, subscriber: &str) -> Result<Option<Position>, CheckpointError> {
        validate_subscriber_name(subscriber)?;
        let saved = self.saved.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(saved.get(subscriber).copied())
    }

    async fn save(&self, subscriber: &str, position: Position) -> Result<(), CheckpointError> {
        validate_subscriber_name(subscriber)?;
        let mut saved = self.saved.lock().unwrap_or_else(PoisonError::into_inner);
        saved.insert(subscriber.to_owned(), position);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_saved_checkpoint_loads_back_and_names_are_checked() {
        let checkpoints = MemoryCheckpoints::new();
        assert_eq!(checkpoints.load("relay").await.unwrap(), None);
        checkpoints.save("relay", Position(42)).await.unwrap();
        checkpoints.save("relay", Position(43)).await.unwrap();
        assert_eq!(
            checkpoints.clone().load("relay").await.unwrap(),
            Some(Position(43))
        );
        assert_eq!(checkpoints.load("other").await.unwrap(), None);
        assert!(checkpoints.save("a/b", Position(1)).await.is_err());
    }
}
