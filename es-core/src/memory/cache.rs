use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use crate::cache::Cache;
use crate::error::Result;

/// A value and when it expires.
type Entry = (Bytes, Option<Instant>);

/// An in-memory [`Cache`] with time-to-live. Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct MemoryCache {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
}

impl MemoryCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some((_, Some(expires))) if *expires <= Instant::now() => {
                entries.remove(key);
                Ok(None)
            }
            Some((value, _)) => Ok(Some(value.clone())),
            None => Ok(None),
        }
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        let expires = ttl.map(|ttl| Instant::now() + ttl);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Drop expired entries now and then so a cache of short-lived keys stays small.
        if entries.len() % 1024 == 1023 {
            let now = Instant::now();
            entries.retain(|_, (_, exp)| exp.is_none_or(|e| e > now));
        }
        entries.insert(key.to_owned(), (value, expires));
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        Ok(())
    }
}
