use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::error::Result;
use crate::lease::LeaseStore;

#[derive(Debug)]
struct Held {
    holder: String,
    expires: Instant,
}

/// An in-memory [`LeaseStore`]: leases shared by the relays of one process. Cloning shares it.
///
/// Expiry follows tokio's clock, so tests may run it with paused time.
#[derive(Clone, Debug, Default)]
pub struct MemoryLeaseStore {
    leases: Arc<Mutex<HashMap<String, Held>>>,
}

impl MemoryLeaseStore {
    /// A store with no leases.
    pub fn new() -> Self {
        Self::default()
    }

    /// Who holds `name` right now, if anyone (an expired lease is held by no one).
    pub fn holder(&self, name: &str) -> Option<String> {
        let now = Instant::now();
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .filter(|held| held.expires > now)
            .map(|held| held.holder.clone())
    }
}

#[async_trait]
impl LeaseStore for MemoryLeaseStore {
    async fn try_acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let now = Instant::now();
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = leases.get(name) {
            if held.holder != holder && held.expires > now {
                return Ok(false);
            }
        }
        leases.insert(
            name.to_owned(),
            Held {
                holder: holder.to_owned(),
                expires: now + ttl,
            },
        );
        Ok(true)
    }

    async fn release(&self, name: &str, holder: &str) -> Result<()> {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if leases.get(name).is_some_and(|held| held.holder == holder) {
            leases.remove(name);
        }
        Ok(())
    }
}
