#![doc = include_str!("../README.md")]
// The README links the feature-gated `testing` module: to the module when it is built, else to
// its page on docs.rs (built with every feature), so the link resolves in every feature set.
#![cfg_attr(feature = "testing", doc = "\n\n[`testing`]: crate::testing")]
#![cfg_attr(
    not(feature = "testing"),
    doc = "\n\n[`testing`]: https://docs.rs/es-core/latest/es_core/testing/index.html"
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod aggregate;
mod aggregate_cache;
mod backoff;
pub mod bus;
pub mod cache;
mod error;
mod event;
pub mod housekeeping;
pub mod idempotency;
pub mod lease;
pub mod memory;
mod multi_command;
pub mod polling;
pub mod projection;
pub mod relay;
mod repository;
pub mod saga;
mod shared;
mod snapshot;
mod store;
mod stream;
pub mod telemetry;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use aggregate::Aggregate;
pub use aggregate_cache::AggregateCacheStats;
pub use backoff::Backoff;
pub use bus::{Consumer, DeadLetter, DeadLetterQueue, EventBus, HandlerError, MessageHandler};
pub use cache::{Cache, CacheExt};
pub use error::{BoxError, Error, Result};
pub use event::{
    event_type_of, DomainEvent, Envelope, Metadata, NewEvent, RecordedEvent, Upcaster,
};
pub use housekeeping::{Housekeeping, PruneReport};
pub use idempotency::{Claim, ClaimGuard, ClaimToken, IdempotencyStore, Ownership};
pub use lease::LeaseStore;
pub use multi_command::{Done, MultiCommand, Slot, Workspace};
pub use projection::{
    InlineProjection, Projection, ProjectionAdmin, ProjectionInfo, ProjectionPhase,
    ProjectionRunner, Typed, TypedDecoder, TypedProjection,
};
pub use relay::{ParkedEvent, ParkedEventStore, Relay, RelayBuilder};
pub use repository::{CommandContext, CommandError, Decision, Executed, Loaded, Repository};
pub use saga::{
    CommandDispatcher, DispatchError, RepositoryDispatcher, Saga, SagaDecision, SagaRunner,
    SagaStore,
};
pub use snapshot::{Snapshot, SnapshotStore};
pub use store::{
    AppendResult, CheckpointStore, CommitOutcome, EventStore, EventSubscription, Inbox, InboxEntry,
    Page, ReplayedEvent, StreamAppend, UnitOfWork,
};
pub use stream::{ExpectedVersion, Position, StreamFilter, StreamId, MAX_STREAM_ID_LEN};

/// The attribute for implementing this crate's async traits (`Projection`, `EventStore`, ...),
/// re-exported so an implementation needs no extra dependency.
pub use async_trait::async_trait;
