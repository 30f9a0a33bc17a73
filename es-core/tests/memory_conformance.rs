//! The in-memory backends pass every conformance suite.

use std::sync::Arc;

use es_core::memory::{
    MemoryCache, MemoryEventBus, MemoryEventStore, MemoryIdempotencyStore, MemoryLeaseStore,
};
use es_core::testing;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_event_store_passes_the_event_store_suite() {
    testing::event_store_conformance(Arc::new(MemoryEventStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_repositories_on_the_memory_store_pass_the_repository_cache_suite() {
    testing::repository_cache_conformance(Arc::new(MemoryEventStore::new())).await;
}

#[tokio::test]
async fn cached_repositories_pass_the_repository_cache_suite_on_one_thread() {
    testing::repository_cache_conformance(Arc::new(MemoryEventStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_aggregate_commands_on_the_memory_store_pass_the_multi_command_suite() {
    testing::multi_command_conformance(Arc::new(MemoryEventStore::new())).await;
}

#[tokio::test]
async fn multi_aggregate_commands_pass_the_multi_command_suite_on_one_thread() {
    testing::multi_command_conformance(Arc::new(MemoryEventStore::new())).await;
}

#[tokio::test]
async fn memory_event_store_passes_the_snapshot_checkpoint_inbox_parking_and_saga_suites() {
    let store = MemoryEventStore::new();
    testing::snapshot_store_conformance(Arc::new(store.clone())).await;
    testing::checkpoint_store_conformance(Arc::new(store.clone())).await;
    testing::inbox_conformance(Arc::new(store.clone())).await;
    testing::parked_event_store_conformance(Arc::new(store.clone())).await;
    testing::saga_store_conformance(Arc::new(store)).await;
}

#[tokio::test]
async fn memory_event_store_passes_the_housekeeping_suite() {
    testing::housekeeping_conformance(Arc::new(MemoryEventStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_event_bus_passes_the_bus_suite() {
    testing::bus_conformance(Arc::new(MemoryEventBus::new())).await;
}

#[tokio::test]
async fn memory_cache_passes_the_cache_suite() {
    testing::cache_conformance(Arc::new(MemoryCache::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_idempotency_store_passes_the_idempotency_suite() {
    testing::idempotency_conformance(Arc::new(MemoryIdempotencyStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_lease_store_passes_the_lease_suite() {
    testing::lease_conformance(Arc::new(MemoryLeaseStore::new())).await;
}

#[derive(Default)]
struct Counted(u64);

#[derive(serde::Serialize, serde::Deserialize)]
enum CountedEvent {
    Counted { n: u64 },
}
impl es_core::DomainEvent for CountedEvent {}

impl es_core::TypedProjection for Counted {
    type Event = CountedEvent;
    const NAME: &'static str = "counted";
    fn filter(&self) -> es_core::StreamFilter {
        es_core::StreamFilter::category("admin")
    }
    fn apply(&mut self, _: es_core::Envelope<CountedEvent>) -> Result<(), es_core::BoxError> {
        self.0 += 1;
        Ok(())
    }
}

#[tokio::test]
async fn memory_read_models_pass_the_projection_admin_suite() {
    let store = MemoryEventStore::new();
    let models = es_core::memory::MemoryReadModels::new(store.clone());
    let counted = es_core::Typed::new(Counted::default());
    testing::projection_admin_conformance(&models, &store, "counted", "admin", || async {
        models.catch_up(&counted).await.expect("catch up");
    })
    .await;
    assert_eq!(counted.read().0, 3, "the rebuilt state took over");
}
