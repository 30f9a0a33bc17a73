//! Idempotency keys: make a retried request answer what the first one answered.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;

/// What claiming an idempotency key found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key was free and is now held by the caller, who must
    /// [`complete`](IdempotencyStore::complete) or [`release`](IdempotencyStore::release) it.
    Acquired,
    /// Another request with the same key and fingerprint is being handled right now.
    InProgress,
    /// A request with the same key and fingerprint finished; here is its stored response.
    Completed(Bytes),
    /// The key was used with a different request (another fingerprint).
    Mismatch,
}

/// Stores idempotency keys, the fingerprint of the request that used each, and its response.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + fmt::Debug {
    /// Claims `key` for a request with `fingerprint` (a hash of what makes requests equal).
    /// Exactly one of any number of racing claims of a free key gets [`Claim::Acquired`].
    /// The claim and its eventual response expire after `ttl`.
    async fn claim(&self, key: &str, fingerprint: &str, ttl: Duration) -> Result<Claim>;

    /// Stores the finished response of the holder of `key`, for replay.
    async fn complete(
        &self,
        key: &str,
        fingerprint: &str,
        response: Bytes,
        ttl: Duration,
    ) -> Result<()>;

    /// Gives up a claim whose request failed, so a retry can claim it again.
    async fn release(&self, key: &str) -> Result<()>;
}

/// Claims `key`, waiting while another request holds it, until it completes (its response),
/// is released (then claims it), or `wait` passes (then [`Claim::InProgress`]).
pub async fn claim_or_wait(
    store: &dyn IdempotencyStore,
    key: &str,
    fingerprint: &str,
    ttl: Duration,
    wait: Duration,
) -> Result<Claim> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(5);
    loop {
        match store.claim(key, fingerprint, ttl).await? {
            Claim::InProgress if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => return Ok(other),
        }
    }
}
