//! es-core's conformance suites, run against the real Redis.

mod common;

use std::sync::Arc;

use es_core::testing::{
    cache_conformance, idempotency_conformance, lease_conformance, snapshot_store_conformance,
};
use es_redis::{RedisCache, RedisIdempotencyStore, RedisLeaseStore, RedisSnapshotStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cache_passes_the_cache_conformance_suite() {
    cache_conformance(Arc::new(RedisCache::new(common::shared_redis().await))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_idempotency_store_passes_the_idempotency_conformance_suite() {
    idempotency_conformance(Arc::new(RedisIdempotencyStore::new(
        common::shared_redis().await,
    )))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_snapshot_store_passes_the_snapshot_conformance_suite() {
    snapshot_store_conformance(Arc::new(RedisSnapshotStore::new(
        common::shared_redis().await,
    )))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_store_with_a_ttl_passes_the_snapshot_conformance_suite() {
    snapshot_store_conformance(Arc::new(
        RedisSnapshotStore::new(common::shared_redis().await)
            .with_ttl(std::time::Duration::from_secs(60)),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lease_store_passes_the_lease_conformance_suite() {
    lease_conformance(Arc::new(RedisLeaseStore::new(common::shared_redis().await))).await;
}
