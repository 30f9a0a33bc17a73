//! The [`Cache`]: an optimization in front of read models, never their source of truth.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

/// A key-value cache with time-to-live, whose entries can carry the version of what they were
/// loaded from.
///
/// Cache-aside without versions has a race: a reader loads version 1, a writer commits
/// version 2 and drops the entry, then the reader stores version 1, and every reader sees the
/// old value until it expires. Versioned writes close it: readers store with
/// [`set_if_newer`](Cache::set_if_newer), and writers, instead of deleting,
/// [`mark_changed`](Cache::mark_changed) the key with their new version, so that the late
/// reader's older value is refused. Versions start at 1; both checks are atomic in the backend.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> es_core::Result<()> {
/// use es_core::Cache;
/// use es_core::memory::MemoryCache;
///
/// let cache = MemoryCache::new();
/// // A reader loaded version 1 of order 42 ...
/// let stale = bytes::Bytes::from_static(b"{\"status\":\"Pending\"}");
/// // ... meanwhile a writer committed version 2:
/// cache.mark_changed("order:42", 2, None).await?;
/// // ... and now the reader's store of version 1 is refused.
/// assert!(!cache.set_if_newer("order:42", 1, stale, None).await?);
/// assert_eq!(cache.get("order:42").await?, None, "a miss: the next reader loads version 2");
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Cache: Send + Sync + fmt::Debug {
    /// The value under `key`, if present and not expired (a [`mark_changed`](Cache::mark_changed)
    /// mark is no value: a miss).
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;

    /// Stores `value` under `key` without a version (whatever was there is replaced), expiring
    /// after `ttl` (never, when `None`).
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()>;

    /// Removes `key`, a value or a mark.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Stores `value`, loaded at `version`, under `key` unless the cache already holds a value
    /// of `version` or newer, or a mark of a change newer than `version`: `true` when stored.
    /// Check and write are one atomic step.
    async fn set_if_newer(
        &self,
        key: &str,
        version: u64,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool>;

    /// Records that what `key` caches changed to `version`: a value older than `version` is
    /// dropped, and for `ttl` (never expiring, when `None`) every
    /// [`set_if_newer`](Cache::set_if_newer) older than `version` is refused. A value of
    /// `version` or newer stays. Call it where a writer would delete the entry; the mark must
    /// outlive any load that may have started before the change.
    async fn mark_changed(&self, key: &str, version: u64, ttl: Option<Duration>) -> Result<()>;
}

/// Typed helpers on any [`Cache`]: JSON values and cache-aside loading.
#[async_trait]
pub trait CacheExt: Cache {
    /// The JSON value under `key`; an undecodable entry reads as a miss.
    async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        Ok(self
            .get(key)
            .await?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// Stores `value` as JSON.
    async fn set_json<T: Serialize + Sync>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::serialization(key, e))?;
        self.set(key, bytes.into(), ttl).await
    }

    /// Cache-aside: the cached value, or on a miss `load()`'s value and the version it was
    /// loaded at, stored with `ttl` only if nothing newer was cached or
    /// [marked](Cache::mark_changed) meanwhile. So a load that raced a writer never puts an
    /// older value back, and reads after a write see the write (with the writer marking the
    /// key). When the cache fails, the value is loaded and returned anyway (the cache is never
    /// the truth).
    async fn get_or_load<T, F, Fut, E>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        load: F,
    ) -> std::result::Result<Option<T>, E>
    where
        T: Serialize + DeserializeOwned + Send + Sync,
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = std::result::Result<Option<(T, u64)>, E>> + Send,
    {
        match self.get_json::<T>(key).await {
            Ok(Some(value)) => return Ok(Some(value)),
            Ok(None) => {}
            Err(error) => tracing::debug!(%key, %error, "cache read failed; loading"),
        }
        let Some((value, version)) = load().await? else {
            return Ok(None);
        };
        match serde_json::to_vec(&value) {
            Ok(bytes) => match self.set_if_newer(key, version, bytes.into(), ttl).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(%key, version, "a newer version is cached or marked; not caching")
                }
                Err(error) => tracing::debug!(%key, %error, "cache write failed"),
            },
            Err(error) => tracing::debug!(%key, %error, "cannot encode a value to cache"),
        }
        Ok(Some(value))
    }
}

impl<C: Cache + ?Sized> CacheExt for C {}
