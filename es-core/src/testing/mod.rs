//! Conformance suites and a given/when/then kit (feature `testing`).
//!
//! Every backend runs the same suite for each trait it implements: the in-memory backends in
//! this crate's tests, PostgreSQL, RabbitMQ and Redis in theirs. A new backend gets its tests
//! for free:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::Arc;
//! use es_core::memory::MemoryEventStore;
//!
//! let store = MemoryEventStore::new();
//! es_core::testing::event_store_conformance(Arc::new(store)).await;
//! # }
//! ```
//!
//! Each check panics with a message that names the broken guarantee, like any test assertion.
//! The suites isolate themselves by fresh stream categories, consumer names and keys, so
//! several may share one backend.

mod bus;
mod event_store;
mod faulty_bus;
pub mod golden;
mod handler;
mod housekeeping;
mod kit;
mod kv;
mod lease;
mod multi_command;
mod projection_admin;
mod repository_cache;
mod saga_commands;
mod stores;

pub use bus::bus_conformance;
pub use event_store::event_store_conformance;
pub use faulty_bus::FaultyBus;
pub use handler::{HandlerBehaviour, RecordingHandler};
pub use housekeeping::housekeeping_conformance;
pub use kit::{envelope, AggregateTest, SagaTest};
pub use kv::{cache_conformance, idempotency_conformance};
pub use lease::lease_conformance;
pub use multi_command::multi_command_conformance;
pub use projection_admin::projection_admin_conformance;
pub use repository_cache::repository_cache_conformance;
pub use saga_commands::saga_command_conformance;
pub use stores::{
    checkpoint_store_conformance, inbox_conformance, parked_event_store_conformance,
    saga_store_conformance, snapshot_store_conformance,
};

use crate::event::{Metadata, NewEvent};

/// A fresh category name, unique to this call (no `-`, so it is a valid category).
pub fn unique_category(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// A small JSON event of type `event_type` carrying `n`.
pub fn sample_event(event_type: &str, n: u64) -> NewEvent {
    NewEvent::raw(
        event_type,
        serde_json::to_vec(&serde_json::json!({ "n": n, "note": "sample" })).expect("json"),
    )
    .with_metadata(Metadata::new_correlation().with_header("sample", n.to_string()))
}
