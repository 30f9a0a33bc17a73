//! The PostgreSQL backends pass every es-core conformance suite against a real server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use es_core::testing;
use es_postgres::{PgConfig, PgEventStore, PgIdempotencyStore};

/// A migrated store in a fresh schema whose reads wait as long as it takes for the writes
/// before them to end.
///
/// The suites read right after they write and expect to see it: a read waits for the older
/// transactions still running ([`PgConfig::read_settle`]). The suites run side by side against
/// one server, and the horizon is the server's, so any of their commits can hold a read back;
/// on a busy machine a commit's flush to disk has taken over a second, the default wait. What
/// the suites check is what a read returns once those transactions ended, not how long the
/// server took to end them.
async fn conformance_store(prefix: &str) -> PgEventStore {
    let mut config = PgConfig::new(common::schema_name(prefix));
    config.read_settle = Duration::from_secs(30);
    common::store_with(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_event_store_passes_the_event_store_suite() {
    let store = conformance_store("conf_es").await;
    testing::event_store_conformance(Arc::new(store.clone())).await;
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_repositories_on_postgres_pass_the_repository_cache_suite() {
    let store = conformance_store("conf_cache").await;
    testing::repository_cache_conformance(Arc::new(store.clone())).await;
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_aggregate_commands_on_postgres_pass_the_multi_command_suite() {
    let store = conformance_store("conf_multi").await;
    testing::multi_command_conformance(Arc::new(store.clone())).await;
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_commands_on_postgres_pass_the_saga_command_suite() {
    let store = conformance_store("conf_saga_cmd").await;
    testing::saga_command_conformance(store.clone()).await;
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_event_store_passes_the_snapshot_checkpoint_inbox_parking_and_saga_suites() {
    let store = conformance_store("conf_small").await;
    testing::snapshot_store_conformance(Arc::new(store.clone())).await;
    testing::checkpoint_store_conformance(Arc::new(store.clone())).await;
    testing::inbox_conformance(Arc::new(store.clone())).await;
    testing::parked_event_store_conformance(Arc::new(store.clone())).await;
    testing::saga_store_conformance(Arc::new(store.clone())).await;
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_event_store_passes_the_housekeeping_suite() {
    let store = conformance_store("conf_hk").await;
    testing::housekeeping_conformance(Arc::new(store.clone())).await;
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_idempotency_store_passes_the_idempotency_suite() {
    let store = conformance_store("conf_idem").await;
    testing::idempotency_conformance(Arc::new(PgIdempotencyStore::new(&store))).await;
    common::drop_schema(&store).await;
}

#[tokio::test]
async fn migrating_twice_is_harmless() {
    let store = conformance_store("conf_mig").await;
    store
        .migrate()
        .await
        .expect("a second migration is a no-op");
    common::drop_schema(&store).await;
}
