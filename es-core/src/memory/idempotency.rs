use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use crate::error::Result;
use crate::idempotency::{Claim, IdempotencyStore};

#[derive(Debug)]
struct Entry {
    fingerprint: String,
    response: Option<Bytes>,
    expires: Instant,
}

/// An in-memory [`IdempotencyStore`]. Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct MemoryIdempotencyStore {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
}

impl MemoryIdempotencyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl IdempotencyStore for MemoryIdempotencyStore {
    async fn claim(&self, key: &str, fingerprint: &str, ttl: Duration) -> Result<Claim> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.get(key).filter(|e| e.expires > now) {
            return Ok(if entry.fingerprint != fingerprint {
                Claim::Mismatch
            } else if let Some(response) = &entry.response {
                Claim::Completed(response.clone())
            } else {
                Claim::InProgress
            });
        }
        entries.insert(
            key.to_owned(),
            Entry {
                fingerprint: fingerprint.to_owned(),
                response: None,
                expires: now + ttl,
            },
        );
        Ok(Claim::Acquired)
    }

    async fn complete(
        &self,
        key: &str,
        fingerprint: &str,
        response: Bytes,
        ttl: Duration,
    ) -> Result<()> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                key.to_owned(),
                Entry {
                    fingerprint: fingerprint.to_owned(),
                    response: Some(response),
                    expires: Instant::now() + ttl,
                },
            );
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<()> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.get(key).is_some_and(|e| e.response.is_none()) {
            entries.remove(key);
        }
        Ok(())
    }
}
