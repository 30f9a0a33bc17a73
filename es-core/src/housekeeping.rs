//! Housekeeping: pruning the bookkeeping that makes redeliveries and retries harmless, so that it
//! does not grow with the log.
//!
//! A consumer's inbox, a saga's inbox, the state of finished saga instances and expired
//! idempotency keys are only needed while a duplicate can still arrive. Past a retention the
//! user chooses (a week is a good default: [`DEFAULT_RETENTION`]) they are removed. The price is
//! stated plainly: **a message redelivered after the retention is handled again**, and an event
//! of a saga instance that finished before the retention starts a new instance. Pick a
//! retention longer than any redelivery you expect (a dead letter requeued after a long outage
//! included).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> es_core::Result<()> {
//! use std::time::Duration;
//! use es_core::housekeeping::{Housekeeping, DEFAULT_RETENTION};
//! use es_core::memory::MemoryEventStore;
//!
//! let store = MemoryEventStore::new();
//! let report = store.prune(DEFAULT_RETENTION).await?;
//! assert_eq!(report.total(), 0, "nothing is a week old yet");
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;

/// How long bookkeeping is kept when the user does not say: 7 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// What one [`Housekeeping::prune`] removed, per kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PruneReport {
    /// Consumer inbox entries older than the retention.
    pub inbox: u64,
    /// Saga inbox entries (events a saga handled) older than the retention.
    pub saga_inbox: u64,
    /// Finished saga instances whose last change is older than the retention (with any
    /// deadline they still had).
    pub saga_states: u64,
    /// Idempotency keys past their expiry.
    pub idempotency_keys: u64,
}

impl PruneReport {
    /// Rows removed in all.
    pub fn total(&self) -> u64 {
        self.inbox + self.saga_inbox + self.saga_states + self.idempotency_keys
    }
}

/// A backend that can prune its bookkeeping. Object-safe, so a service holds it as
/// `Arc<dyn Housekeeping>` beside its other backends.
///
/// Implemented by [`MemoryEventStore`](crate::memory::MemoryEventStore) and `es-postgres`'s
/// `PgEventStore`. Pruning is idempotent and safe to run from several processes at once.
#[async_trait]
pub trait Housekeeping: Send + Sync + fmt::Debug {
    /// Removes inbox and saga-inbox entries older than `retention`, finished saga instances
    /// unchanged for longer than `retention`, and idempotency keys past their expiry.
    async fn prune(&self, retention: Duration) -> Result<PruneReport>;
}

/// Runs [`Housekeeping::prune`] at once and then every `interval` until `shutdown` completes,
/// logging what it removed; a failure is logged at warn and tried again next time.
pub async fn prune_every(
    housekeeping: &dyn Housekeeping,
    retention: Duration,
    interval: Duration,
    shutdown: impl Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    loop {
        match housekeeping.prune(retention).await {
            Ok(report) if report.total() > 0 => {
                tracing::info!(?report, ?retention, "pruned old bookkeeping")
            }
            Ok(_) => tracing::debug!(?retention, "nothing to prune"),
            Err(error) => tracing::warn!(%error, "pruning failed; trying again later"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use uuid::Uuid;

    use super::*;
    use crate::memory::MemoryEventStore;
    use crate::Inbox;

    /// The memory store, counting its prunes.
    #[derive(Debug, Default)]
    struct Counting {
        store: MemoryEventStore,
        prunes: AtomicUsize,
    }

    #[async_trait]
    impl Housekeeping for Counting {
        async fn prune(&self, retention: Duration) -> Result<PruneReport> {
            self.prunes.fetch_add(1, Ordering::SeqCst);
            self.store.prune(retention).await
        }
    }

    /// Lets the pruning task run up to its next sleep.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn prune_every_prunes_at_once_and_again_after_each_interval() {
        const HOUR: Duration = Duration::from_secs(3600);
        let counting = Arc::new(Counting::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn({
            let counting = counting.clone();
            async move {
                prune_every(&*counting, Duration::from_millis(1), HOUR, async {
                    let _ = stopped.await;
                })
                .await
            }
        });
        settle().await;
        assert_eq!(counting.prunes.load(Ordering::SeqCst), 1, "at once");

        // An entry older than the retention (the store's clock is the wall clock).
        let old = Uuid::new_v4();
        counting.store.record("payment-service", old).await.unwrap();
        std::thread::sleep(Duration::from_millis(5));
        tokio::time::advance(HOUR - Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(
            counting.prunes.load(Ordering::SeqCst),
            1,
            "not before the interval"
        );
        assert!(counting
            .store
            .contains("payment-service", old)
            .await
            .unwrap());

        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(counting.prunes.load(Ordering::SeqCst), 2);
        assert!(
            !counting
                .store
                .contains("payment-service", old)
                .await
                .unwrap(),
            "the old entry is pruned after the interval"
        );
        tokio::time::advance(HOUR).await;
        settle().await;
        assert_eq!(counting.prunes.load(Ordering::SeqCst), 3, "and again");

        stop.send(()).unwrap();
        task.await.unwrap();
    }
}
