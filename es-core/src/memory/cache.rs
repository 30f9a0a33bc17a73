use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use crate::cache::Cache;
use crate::error::Result;

/// A cached value or a change mark, the version it stands for, and when it expires.
#[derive(Debug)]
struct Entry {
    /// `None` for a mark left by [`Cache::mark_changed`].
    value: Option<Bytes>,
    /// 0 for a value stored by [`Cache::set`].
    version: u64,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

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

    fn put(&self, key: &str, entry: Entry, replace: impl FnOnce(&Entry) -> bool) -> bool {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Drop expired entries now and then so a cache of short-lived keys stays small.
        if entries.len() % 1024 == 1023 {
            entries.retain(|_, e| e.live(now));
        }
        let keep = entries
            .get(key)
            .is_some_and(|current| current.live(now) && !replace(current));
        if !keep {
            entries.insert(key.to_owned(), entry);
        }
        !keep
    }
}

fn expiry(ttl: Option<Duration>) -> Option<Instant> {
    ttl.map(|ttl| Instant::now() + ttl)
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some(entry) if !entry.live(Instant::now()) => {
                entries.remove(key);
                Ok(None)
            }
            Some(entry) => Ok(entry.value.clone()),
            None => Ok(None),
        }
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        let entry = Entry {
            value: Some(value),
            version: 0,
            expires: expiry(ttl),
        };
        self.put(key, entry, |_| true);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        Ok(())
    }

    async fn set_if_newer(
        &self,
        key: &str,
        version: u64,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let entry = Entry {
            value: Some(value),
            version,
            expires: expiry(ttl),
        };
        // A value replaces an older value, or a mark of its own version or older (the change
        // it marked is the one this value was loaded from).
        Ok(self.put(key, entry, |current| match current.value {
            Some(_) => current.version < version,
            None => current.version <= version,
        }))
    }

    async fn mark_changed(&self, key: &str, version: u64, ttl: Option<Duration>) -> Result<()> {
        let entry = Entry {
            value: None,
            version,
            expires: expiry(ttl),
        };
        self.put(key, entry, |current| current.version < version);
        Ok(())
    }
}
