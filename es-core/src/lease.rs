//! Leases: at most one holder of a named role at a time, handed over when the holder dies.
//!
//! A [`Relay`](crate::Relay) run by every instance of a service takes the lease named after
//! it, so that only one instance publishes; a standby takes over once the holder releases the
//! lease or stops renewing it.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;

/// Time-limited, named leases: whoever holds `name` may do the work it guards.
///
/// A lease is taken for a time-to-live and must be renewed (by acquiring it again) before the
/// TTL runs out; a holder that dies simply stops renewing, and the lease becomes free when its
/// TTL has passed. Expiry is measured by the backend's own clock (the database's, Redis's), so
/// the hosts' clocks need not agree.
///
/// A lease is advisory and has no fencing token: a holder that stalls past its TTL may still
/// finish one step of work after another holder took over. Guard only work that tolerates
/// that, such as the relay's at-least-once publishing.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> es_core::Result<()> {
/// use std::time::Duration;
/// use es_core::LeaseStore;
/// use es_core::memory::MemoryLeaseStore;
///
/// let leases = MemoryLeaseStore::new();
/// let ttl = Duration::from_secs(10);
/// assert!(leases.try_acquire("relay-order", "instance-a", ttl).await?);
/// assert!(!leases.try_acquire("relay-order", "instance-b", ttl).await?, "a holds it");
/// assert!(leases.try_acquire("relay-order", "instance-a", ttl).await?, "a renews it");
///
/// leases.release("relay-order", "instance-b").await?; // not b's: nothing happens
/// leases.release("relay-order", "instance-a").await?;
/// assert!(leases.try_acquire("relay-order", "instance-b", ttl).await?, "free at once");
/// # Ok(()) }
/// ```
#[async_trait]
pub trait LeaseStore: Send + Sync + fmt::Debug {
    /// Takes the lease `name` for `holder` until `ttl` from now, when it is free, expired, or
    /// already `holder`'s (then this renews it). `true` when `holder` holds it now; `false`
    /// when another holder's lease is still running. Of any number of racing calls by
    /// different holders for a free lease, exactly one gets `true`.
    async fn try_acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool>;

    /// Gives up the lease `name` if `holder` holds it, so that another can take it at once.
    /// Does nothing when the lease is free or another's.
    async fn release(&self, name: &str, holder: &str) -> Result<()>;
}

/// A holder id unique to this call: a fresh random string for one process's claim on a lease.
pub fn unique_holder() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
