//! In-memory backends of every trait: thread-safe, with the same guarantees as the real ones
//! within one process. The example runs on them when no backend URL is given.
//!
//! They are real implementations, checked by the same conformance suites as the PostgreSQL,
//! RabbitMQ and Redis backends. What they cannot do is outlive the process.

mod bus;
mod cache;
mod idempotency;
mod lease;
mod read_models;
mod store;

pub use bus::MemoryEventBus;
pub use cache::MemoryCache;
pub use idempotency::MemoryIdempotencyStore;
pub use lease::MemoryLeaseStore;
pub use read_models::MemoryReadModels;
pub use store::MemoryEventStore;
