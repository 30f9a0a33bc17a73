//! The [`Cache`]: an optimization in front of read models, never their source of truth.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

/// A key-value cache with time-to-live.
#[async_trait]
pub trait Cache: Send + Sync + fmt::Debug {
    /// The value under `key`, if present and not expired.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;

    /// Stores `value` under `key`, expiring after `ttl` (never, when `None`).
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()>;

    /// Removes `key`.
    async fn delete(&self, key: &str) -> Result<()>;
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

    /// Cache-aside: the cached value, or `load()` stored with `ttl` on a miss. When the cache
    /// fails, the value is loaded and returned anyway (the cache is never the truth).
    async fn get_or_load<T, F, Fut, E>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        load: F,
    ) -> std::result::Result<Option<T>, E>
    where
        T: Serialize + DeserializeOwned + Send + Sync,
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = std::result::Result<Option<T>, E>> + Send,
    {
        match self.get_json::<T>(key).await {
            Ok(Some(value)) => return Ok(Some(value)),
            Ok(None) => {}
            Err(error) => tracing::debug!(%key, %error, "cache read failed; loading"),
        }
        let value = load().await?;
        if let Some(value) = &value {
            if let Err(error) = self.set_json(key, value, ttl).await {
                tracing::debug!(%key, %error, "cache write failed");
            }
        }
        Ok(value)
    }
}

impl<C: Cache + ?Sized> CacheExt for C {}
