//! What the PostgreSQL backend records through the `metrics` facade (names in
//! [`es_core::telemetry`]).

use std::sync::OnceLock;

use es_core::telemetry::{pool_connections, StoreMetrics};

use crate::store::PgEventStore;

/// The `backend` label of this crate's metrics.
const BACKEND: &str = "postgres";

/// The store's latency handles, taken from the recorder at the first commit of the process
/// (install the recorder before the first commit).
pub(crate) fn store() -> &'static StoreMetrics {
    static METRICS: OnceLock<StoreMetrics> = OnceLock::new();
    METRICS.get_or_init(|| StoreMetrics::new(BACKEND))
}

impl PgEventStore {
    /// Sets the `es_pool_connections{backend="postgres", state="in_use"|"idle"}` gauge from the
    /// store's pools now (the pool of [`pool`](Self::pool) and the one of subscriptions' page
    /// reads, together). Cheap (no query): call it each time metrics are read, or on a timer.
    /// Does nothing without the `metrics` feature.
    pub fn record_pool_metrics(&self) {
        let (mut in_use, mut idle) = (0, 0);
        for pool in [self.pool(), self.page_read_pool()] {
            let size = pool.size() as usize;
            let pool_idle = pool.num_idle();
            in_use += size.saturating_sub(pool_idle);
            idle += pool_idle;
        }
        pool_connections(BACKEND, in_use, idle);
    }
}
