//! Idempotency keys: make a retried request answer what the first one answered.
//!
//! A request [`claim`](IdempotencyStore::claim)s its key for a short *lease* and gets a
//! [`ClaimToken`] that proves it holds the claim. While it runs it
//! [`renew`](IdempotencyStore::renew)s the lease ([`ClaimGuard`] does that in the background);
//! when it finishes it [`complete`](IdempotencyStore::complete)s the key with its response
//! (kept for the long TTL), or [`release`](IdempotencyStore::release)s it when it failed. A
//! request that is cut off, a client that disconnects, a process that crashes: each simply
//! stops renewing, and the key is free again once the lease has run out, not a day later.
//!
//! Because a lease can run out under a request that is merely slow, a request must be safe to
//! run twice: give what it creates an id derived from the key, so that the second run finds
//! what the first one made (see `docs/concepts/idempotency.md`).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::backoff::Backoff;
use crate::error::Result;

/// Proof of holding a claim: handed out with [`Claim::Acquired`], asked for by every operation
/// that changes the claim, so that a request whose lease ran out and was taken over cannot
/// complete or release the new holder's claim.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ClaimToken(String);

impl ClaimToken {
    /// A fresh random token (for backends: one per successful claim).
    pub fn new() -> Self {
        ClaimToken(uuid::Uuid::new_v4().simple().to_string())
    }

    /// The token as text, for storing beside the claim.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ClaimToken {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ClaimToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ClaimToken").field(&self.0).finish()
    }
}

/// What claiming an idempotency key found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key was free (or its previous holder's lease had run out) and is now held by the
    /// caller for the lease, who must [`renew`](IdempotencyStore::renew) it while working and
    /// then [`complete`](IdempotencyStore::complete) or [`release`](IdempotencyStore::release)
    /// it with this token. [`ClaimGuard`] does the renewing.
    Acquired(ClaimToken),
    /// Another request with the same key and fingerprint is being handled right now.
    InProgress,
    /// A request with the same key and fingerprint finished; here is its stored response.
    Completed(Bytes),
    /// The key was used with a different request (another fingerprint).
    Mismatch,
}

/// Whether an operation on a claim found the caller still holding it.
///
/// [`Lost`](Ownership::Lost) means the lease ran out (and perhaps another request claimed the
/// key): nothing was changed. A caller that loses its claim before completing should say so in
/// its log; its work may run again under the new holder, so that work must be safe to repeat.
#[must_use = "a lost claim means nothing was stored: log it or handle it"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// The caller held the claim, and the operation took effect.
    Held,
    /// The caller no longer held the claim; nothing changed.
    Lost,
}

impl Ownership {
    /// `true` for [`Ownership::Held`].
    pub fn is_held(self) -> bool {
        self == Ownership::Held
    }
}

impl From<bool> for Ownership {
    /// [`Ownership::Held`] for `true` (the caller still held the claim), else
    /// [`Ownership::Lost`].
    fn from(held: bool) -> Self {
        if held {
            Ownership::Held
        } else {
            Ownership::Lost
        }
    }
}

/// Stores idempotency keys, the fingerprint of the request that used each, its holder and
/// its response.
///
/// A key is in one of three states: free; *in progress*, held by one [`ClaimToken`] until its
/// lease runs out; *completed*, with a response kept for the TTL given to `complete`. Leases and
/// TTLs are measured by the backend's clock.
///
/// A request handler claims the key, does its work, and completes the key with its response;
/// [`ClaimGuard`] renews the lease meanwhile and releases it when the request is cut off.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> es_core::Result<()> {
/// use std::time::Duration;
/// use es_core::memory::MemoryIdempotencyStore;
/// use es_core::{Claim, IdempotencyStore};
///
/// let store = MemoryIdempotencyStore::new(); // es_redis::RedisIdempotencyStore, es_postgres::PgIdempotencyStore
/// let (lease, ttl) = (Duration::from_secs(15), Duration::from_secs(24 * 3600));
/// let Claim::Acquired(token) = store.claim("key-1", "sha256-of-body-a", lease).await? else {
///     unreachable!("a new key is free")
/// };
/// // While the first request runs, a retry of it waits (or answers 409):
/// assert_eq!(store.claim("key-1", "sha256-of-body-a", lease).await?, Claim::InProgress);
/// assert!(store.complete("key-1", &token, "order 42 created".into(), ttl).await?.is_held());
///
/// // Afterwards a retry gets the stored response, and another request with the key is refused.
/// assert_eq!(store.claim("key-1", "sha256-of-body-a", lease).await?, Claim::Completed("order 42 created".into()));
/// assert_eq!(store.claim("key-1", "sha256-of-body-b", lease).await?, Claim::Mismatch);
/// # Ok(()) }
/// ```
#[async_trait]
pub trait IdempotencyStore: Send + Sync + fmt::Debug {
    /// Claims `key` for a request with `fingerprint` (a hash of what makes requests equal),
    /// holding it for `lease`. A key that is free, or in progress under a lease that has run
    /// out, is [`Claim::Acquired`] with a new token, whatever fingerprint held it before.
    /// Exactly one of any number of racing claims gets [`Claim::Acquired`].
    async fn claim(&self, key: &str, fingerprint: &str, lease: Duration) -> Result<Claim>;

    /// Extends the in-progress claim held by `token` to `lease` from now.
    /// [`Ownership::Lost`] when the lease already ran out, the key was completed, or another
    /// request holds it.
    async fn renew(&self, key: &str, token: &ClaimToken, lease: Duration) -> Result<Ownership>;

    /// Stores the finished response of the claim held by `token`, for replay during `ttl`.
    /// Completing again with the same token changes nothing and is [`Ownership::Held`]; when
    /// the lease ran out first it is [`Ownership::Lost`] and nothing is stored.
    async fn complete(
        &self,
        key: &str,
        token: &ClaimToken,
        response: Bytes,
        ttl: Duration,
    ) -> Result<Ownership>;

    /// Gives up the in-progress claim held by `token` (its request failed), so a retry can
    /// claim it at once. A completed response is never forgotten: releasing one's own
    /// completed key is [`Ownership::Held`] and changes nothing.
    async fn release(&self, key: &str, token: &ClaimToken) -> Result<Ownership>;
}

/// Claims `key`, waiting while another request holds it, until it completes (its response),
/// is released or its lease runs out (then claims it), or `wait` passes (then
/// [`Claim::InProgress`]).
pub async fn claim_or_wait(
    store: &dyn IdempotencyStore,
    key: &str,
    fingerprint: &str,
    lease: Duration,
    wait: Duration,
) -> Result<Claim> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Backoff::new(Duration::from_millis(5), Duration::from_millis(100));
    loop {
        match store.claim(key, fingerprint, lease).await? {
            Claim::InProgress if tokio::time::Instant::now() < deadline => {
                pause.sleep().await;
            }
            other => return Ok(other),
        }
    }
}

/// Holds an acquired claim: renews its lease in the background every third of the lease
/// while the request runs, and releases it when dropped without being completed.
///
/// Drop is what happens to a request that is cut off (a timeout layer, a client disconnect):
/// the guard stops renewing and releases the key in a spawned task, so a retry can claim it
/// at once. After a crash nothing runs, and the key is free when the lease runs out.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> es_core::Result<()> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use es_core::idempotency::{ClaimGuard, Ownership};
/// use es_core::memory::MemoryIdempotencyStore;
/// use es_core::{Claim, IdempotencyStore};
///
/// let store: Arc<dyn IdempotencyStore> = Arc::new(MemoryIdempotencyStore::new());
/// let lease = Duration::from_secs(15);
/// if let Claim::Acquired(token) = store.claim("order:7f3a", "sha256-of-the-body", lease).await? {
///     let guard = ClaimGuard::hold(store.clone(), "order:7f3a", token, lease);
///     // ... do the work; the lease is renewed meanwhile ...
///     let stored = guard.complete("42".into(), Duration::from_secs(24 * 3600)).await?;
///     if stored == Ownership::Lost {
///         // The lease ran out and another request took over: it will answer the retries.
///     }
/// }
/// assert_eq!(
///     store.claim("order:7f3a", "sha256-of-the-body", lease).await?,
///     Claim::Completed("42".into())
/// );
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ClaimGuard {
    store: Arc<dyn IdempotencyStore>,
    key: String,
    token: ClaimToken,
    lost: Arc<AtomicBool>,
    renewing: Option<tokio::task::JoinHandle<()>>,
}

impl ClaimGuard {
    /// Holds the claim of `key` by `token` (from [`Claim::Acquired`]), renewing it for `lease`
    /// every third of `lease`. Must be called within a tokio runtime.
    pub fn hold(
        store: Arc<dyn IdempotencyStore>,
        key: impl Into<String>,
        token: ClaimToken,
        lease: Duration,
    ) -> Self {
        let key = key.into();
        let lost = Arc::new(AtomicBool::new(false));
        let renewing = tokio::spawn(renew_until_lost(
            store.clone(),
            key.clone(),
            token.clone(),
            lease,
            lost.clone(),
        ));
        ClaimGuard {
            store,
            key,
            token,
            lost,
            renewing: Some(renewing),
        }
    }

    /// The key held.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The token that holds it.
    pub fn token(&self) -> &ClaimToken {
        &self.token
    }

    /// `true` once a renewal found the claim lost (the lease ran out before it could be
    /// renewed, and the key may have another holder now).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Stops renewing and stores `response` for replay during `ttl`
    /// ([`IdempotencyStore::complete`]).
    pub async fn complete(mut self, response: Bytes, ttl: Duration) -> Result<Ownership> {
        self.stop_renewing();
        let outcome = self
            .store
            .complete(&self.key, &self.token, response, ttl)
            .await;
        // Completed or not, dropping must not release: after a failed completion the work
        // is done, and a retry that takes the claim over when the lease runs out finds it.
        self.disarm();
        outcome
    }

    /// Stops renewing and gives the claim up at once ([`IdempotencyStore::release`]).
    pub async fn release(mut self) -> Result<Ownership> {
        self.stop_renewing();
        let outcome = self.store.release(&self.key, &self.token).await;
        self.disarm();
        outcome
    }

    fn stop_renewing(&mut self) {
        if let Some(renewing) = &self.renewing {
            renewing.abort();
        }
    }

    /// Marks the guard as finished, so that dropping it releases nothing.
    fn disarm(&mut self) {
        self.renewing = None;
    }
}

async fn renew_until_lost(
    store: Arc<dyn IdempotencyStore>,
    key: String,
    token: ClaimToken,
    lease: Duration,
    lost: Arc<AtomicBool>,
) {
    // Three tries per lease: one failed renewal (a slow or briefly unreachable backend) still
    // leaves time for the next before the lease runs out.
    let every = (lease / 3).max(Duration::from_millis(1));
    loop {
        tokio::time::sleep(every).await;
        match store.renew(&key, &token, lease).await {
            Ok(Ownership::Held) => {}
            Ok(Ownership::Lost) => {
                tracing::warn!(%key, "idempotency claim lost: its lease ran out before it was renewed");
                lost.store(true, Ordering::Release);
                return;
            }
            Err(error) => tracing::warn!(%key, %error, "cannot renew an idempotency claim"),
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let Some(renewing) = self.renewing.take() else {
            return;
        };
        renewing.abort();
        if self.lost.load(Ordering::Acquire) {
            return;
        }
        // Cut off before completing: free the key now rather than when the lease runs out.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, key, token) = (self.store.clone(), self.key.clone(), self.token.clone());
        runtime.spawn(async move {
            match store.release(&key, &token).await {
                Ok(_) => tracing::debug!(%key, "released an idempotency claim whose request was cut off"),
                Err(error) => tracing::warn!(%key, %error, "cannot release an idempotency claim; it is free when its lease runs out"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::Ownership;

    #[test]
    fn a_bool_says_whether_the_claim_was_held() {
        assert_eq!(Ownership::from(true), Ownership::Held);
        assert_eq!(Ownership::from(false), Ownership::Lost);
    }
}
