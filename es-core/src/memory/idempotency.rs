use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use crate::error::Result;
use crate::idempotency::{Claim, ClaimToken, IdempotencyStore, Ownership};

#[derive(Debug)]
struct Entry {
    fingerprint: String,
    owner: ClaimToken,
    response: Option<Bytes>,
    /// The end of the lease while in progress; of the response's TTL once completed.
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

/// The live entry of `key` if `token` holds it.
fn own<'a>(
    entries: &'a mut HashMap<String, Entry>,
    key: &str,
    token: &ClaimToken,
    now: Instant,
) -> Option<&'a mut Entry> {
    entries
        .get_mut(key)
        .filter(|e| e.expires > now && &e.owner == token)
}

#[async_trait]
impl IdempotencyStore for MemoryIdempotencyStore {
    async fn claim(&self, key: &str, fingerprint: &str, lease: Duration) -> Result<Claim> {
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
        // Drop expired entries now and then so a store of many one-off keys stays small.
        if entries.len() % 1024 == 1023 {
            entries.retain(|_, e| e.expires > now);
        }
        let token = ClaimToken::new();
        entries.insert(
            key.to_owned(),
            Entry {
                fingerprint: fingerprint.to_owned(),
                owner: token.clone(),
                response: None,
                expires: now + lease,
            },
        );
        Ok(Claim::Acquired(token))
    }

    async fn renew(&self, key: &str, token: &ClaimToken, lease: Duration) -> Result<Ownership> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // A completed key keeps its response's TTL.
        let entry = own(&mut entries, key, token, now).filter(|e| e.response.is_none());
        Ok(Ownership::from(
            entry.map(|e| e.expires = now + lease).is_some(),
        ))
    }

    async fn complete(
        &self,
        key: &str,
        token: &ClaimToken,
        response: Bytes,
        ttl: Duration,
    ) -> Result<Ownership> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = own(&mut entries, key, token, now) else {
            return Ok(Ownership::Lost);
        };
        if entry.response.is_none() {
            entry.response = Some(response);
            entry.expires = now + ttl;
        }
        Ok(Ownership::Held)
    }

    async fn release(&self, key: &str, token: &ClaimToken) -> Result<Ownership> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = own(&mut entries, key, token, now) else {
            return Ok(Ownership::Lost);
        };
        if entry.response.is_none() {
            entries.remove(key);
        }
        Ok(Ownership::Held)
    }
}
