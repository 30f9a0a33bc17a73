//! The PostgreSQL backends pass every es-core conformance suite against a real server.

mod common;

use std::sync::Arc;

use es_core::testing;
use es_postgres::PgIdempotencyStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_event_store_passes_the_event_store_suite() {
    let store = common::store("conf_es").await;
    testing::event_store_conformance(Arc::new(store.clone())).await;
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_repositories_on_postgres_pass_the_repository_cache_suite() {
    let store = common::store("conf_cache").await;
    testing::repository_cache_conformance(Arc::new(store.clone())).await;
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_aggregate_commands_on_postgres_pass_the_multi_command_suite() {
    let store = common::store("conf_multi").await;
    testing::multi_command_conformance(Arc::new(store.clone())).await;
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_commands_on_postgres_pass_the_saga_command_suite() {
    let store = common::store("conf_saga_cmd").await;
    testing::saga_command_conformance(store.clone()).await;
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_event_store_passes_the_snapshot_checkpoint_inbox_parking_and_saga_suites() {
    let store = common::store("conf_small").await;
    testing::snapshot_store_conformance(Arc::new(store.clone())).await;
    testing::checkpoint_store_conformance(Arc::new(store.clone())).await;
    testing::inbox_conformance(Arc::new(store.clone())).await;
    testing::parked_event_store_conformance(Arc::new(store.clone())).await;
    testing::saga_store_conformance(Arc::new(store.clone())).await;
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_event_store_passes_the_housekeeping_suite() {
    let store = common::store("conf_hk").await;
    testing::housekeeping_conformance(Arc::new(store.clone())).await;
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_idempotency_store_passes_the_idempotency_suite() {
    let store = common::store("conf_idem").await;
    testing::idempotency_conformance(Arc::new(PgIdempotencyStore::new(&store))).await;
    common::drop_schema(&store).await;
}

#[tokio::test]
async fn migrating_twice_is_harmless() {
    let store = common::store("conf_mig").await;
    store
        .migrate()
        .await
        .expect("a second migration is a no-op");
    common::drop_schema(&store).await;
}
