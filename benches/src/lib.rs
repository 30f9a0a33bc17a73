//! Shared helpers of the benches.

/// Every Rust sample of the guide in `docs/`, compiled and run as doc tests.
#[cfg(doctest)]
mod guide {
    #[doc = include_str!("../../docs/getting-started.md")]
    struct GettingStarted;
    #[doc = include_str!("../../docs/concepts/aggregates.md")]
    struct Aggregates;
    #[doc = include_str!("../../docs/concepts/events.md")]
    struct Events;
    #[doc = include_str!("../../docs/concepts/event-store.md")]
    struct EventStore;
    #[doc = include_str!("../../docs/concepts/projections.md")]
    struct Projections;
    #[doc = include_str!("../../docs/concepts/sagas.md")]
    struct Sagas;
    #[doc = include_str!("../../docs/concepts/messaging.md")]
    struct Messaging;
    #[doc = include_str!("../../docs/concepts/idempotency.md")]
    struct Idempotency;
    #[doc = include_str!("../../docs/concepts/snapshots.md")]
    struct Snapshots;
}
