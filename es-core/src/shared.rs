//! Backends behind an `Arc`: every backend trait is implemented for `Arc<T>`, so constructors
//! take any store by value (`impl EventStore + 'static`) and a caller passes what it has: the
//! store itself (backends are cheap handles to shared state), an `Arc<PgEventStore>`, or an
//! `Arc<dyn EventStore>`.
//!
//! Each forwarding impl forwards *every* method, the provided ones too, so that a backend's
//! overrides (a one-query `replay_streams`, a gap-aware `read_page`) are not lost behind the
//! `Arc`.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::bus::{Consumer, ConsumerHandle, EventBus, MessageHandler};
use crate::error::Result;
use crate::event::{NewEvent, RecordedEvent};
use crate::lease::LeaseStore;
use crate::relay::{ParkedEvent, ParkedEventStore};
use crate::repository::CommandContext;
use crate::saga::{
    CommandDispatcher, DeadlineRecord, DispatchError, SagaChange, SagaSaved, SagaState, SagaStore,
};
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::store::{
    AppendResult, CheckpointStore, CommitOutcome, EventStore, EventSubscription, Page,
    ReplayedEvent, StreamAppend, UnitOfWork,
};
use crate::stream::ExpectedVersion;
use crate::stream::{Position, StreamFilter, StreamId};

/// Turns a backend given by value into the `Arc<dyn Trait>` a runner keeps. An
/// `Arc<dyn Trait>` is kept as it is (one more reference), not wrapped in a second `Arc`, so
/// callers that already hold one pay nothing for the by-value constructors.
macro_rules! into_shared {
    ($(#[$doc:meta])* $name:ident, $($bound:tt)+) => {
        $(#[$doc])*
        pub(crate) fn $name<T: $($bound)+ + 'static>(value: T) -> Arc<dyn $($bound)+> {
            if let Some(shared) = (&value as &dyn Any).downcast_ref::<Arc<dyn $($bound)+>>() {
                return shared.clone();
            }
            Arc::new(value)
        }
    };
}

into_shared!(
    /// `store` as the `Arc<dyn EventStore>` the typed layer keeps.
    event_store,
    EventStore
);
into_shared!(
    /// `store` as an `Arc<dyn SnapshotStore>`.
    snapshot_store,
    SnapshotStore
);
into_shared!(
    /// `store` as an `Arc<dyn CheckpointStore>`.
    checkpoint_store,
    CheckpointStore
);
into_shared!(
    /// `bus` as an `Arc<dyn EventBus>`.
    event_bus,
    EventBus
);
into_shared!(
    /// `store` as an `Arc<dyn LeaseStore>`.
    lease_store,
    LeaseStore
);
into_shared!(
    /// `store` as an `Arc<dyn ParkedEventStore>`.
    parked_event_store,
    ParkedEventStore
);
into_shared!(
    /// `store` as an `Arc<dyn SagaStore>`.
    saga_store,
    SagaStore
);

#[async_trait]
impl<T: EventStore + ?Sized> EventStore for Arc<T> {
    async fn commit(&self, unit: UnitOfWork) -> Result<CommitOutcome> {
        (**self).commit(unit).await
    }

    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        (**self).read_stream(stream_id, from_version, limit).await
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<Option<u64>> {
        (**self).stream_version(stream_id).await
    }

    async fn read_all(
        &self,
        filter: &StreamFilter,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        (**self).read_all(filter, after, limit).await
    }

    async fn head(&self) -> Result<Position> {
        (**self).head().await
    }

    fn subscribe(&self, filter: StreamFilter, after: Position) -> EventSubscription {
        (**self).subscribe(filter, after)
    }

    async fn read_page(
        &self,
        filter: &StreamFilter,
        after: Position,
        limit: usize,
    ) -> Result<Page> {
        (**self).read_page(filter, after, limit).await
    }

    async fn append(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        (**self).append(stream_id, expected, events).await
    }

    async fn append_many(&self, appends: Vec<StreamAppend>) -> Result<Vec<AppendResult>> {
        (**self).append_many(appends).await
    }

    async fn replay_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<ReplayedEvent>> {
        (**self).replay_stream(stream_id, from_version, limit).await
    }

    async fn replay_streams(
        &self,
        requests: &[(StreamId, u64)],
        limit: usize,
    ) -> Result<Vec<Vec<ReplayedEvent>>> {
        (**self).replay_streams(requests, limit).await
    }

    async fn read_stream_to_end(
        &self,
        stream_id: &StreamId,
        from_version: u64,
    ) -> Result<Vec<RecordedEvent>> {
        (**self).read_stream_to_end(stream_id, from_version).await
    }
}

#[async_trait]
impl<T: SnapshotStore + ?Sized> SnapshotStore for Arc<T> {
    async fn save(&self, snapshot: Snapshot) -> Result<()> {
        (**self).save(snapshot).await
    }

    async fn load(&self, stream_id: &StreamId) -> Result<Option<Snapshot>> {
        (**self).load(stream_id).await
    }

    async fn delete(&self, stream_id: &StreamId) -> Result<()> {
        (**self).delete(stream_id).await
    }
}

#[async_trait]
impl<T: CheckpointStore + ?Sized> CheckpointStore for Arc<T> {
    async fn load(&self, name: &str) -> Result<Option<Position>> {
        (**self).load(name).await
    }

    async fn save(&self, name: &str, position: Position) -> Result<()> {
        (**self).save(name, position).await
    }
}

#[async_trait]
impl<T: EventBus + ?Sized> EventBus for Arc<T> {
    async fn publish(&self, events: &[RecordedEvent]) -> Result<()> {
        (**self).publish(events).await
    }

    async fn subscribe(
        &self,
        subscription: Consumer,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<ConsumerHandle> {
        (**self).subscribe(subscription, handler).await
    }
}

#[async_trait]
impl<T: LeaseStore + ?Sized> LeaseStore for Arc<T> {
    async fn try_acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        (**self).try_acquire(name, holder, ttl).await
    }

    async fn release(&self, name: &str, holder: &str) -> Result<()> {
        (**self).release(name, holder).await
    }
}

#[async_trait]
impl<T: ParkedEventStore + ?Sized> ParkedEventStore for Arc<T> {
    async fn park(&self, parked: ParkedEvent) -> Result<()> {
        (**self).park(parked).await
    }

    async fn parked(&self, relay: &str, limit: usize) -> Result<Vec<ParkedEvent>> {
        (**self).parked(relay, limit).await
    }
}

#[async_trait]
impl<T: SagaStore + ?Sized> SagaStore for Arc<T> {
    async fn load(&self, saga: &str, instance: &str) -> Result<Option<SagaState>> {
        (**self).load(saga, instance).await
    }

    async fn save(&self, change: SagaChange) -> Result<SagaSaved> {
        (**self).save(change).await
    }

    async fn due_deadlines(
        &self,
        saga: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<DeadlineRecord>> {
        (**self).due_deadlines(saga, now, limit).await
    }

    async fn defer_deadline(&self, id: Uuid, retry_at: DateTime<Utc>, error: &str) -> Result<()> {
        (**self).defer_deadline(id, retry_at, error).await
    }

    async fn parked_deadlines(&self, saga: &str, limit: usize) -> Result<Vec<DeadlineRecord>> {
        (**self).parked_deadlines(saga, limit).await
    }

    async fn has_handled(&self, saga: &str, event_id: Uuid) -> Result<bool> {
        (**self).has_handled(saga, event_id).await
    }

    async fn deadlines_of(&self, saga: &str, instance: &str) -> Result<Vec<DeadlineRecord>> {
        (**self).deadlines_of(saga, instance).await
    }

    async fn load_many(&self, saga: &str, instances: &[String]) -> Result<Vec<Option<SagaState>>> {
        (**self).load_many(saga, instances).await
    }

    async fn handled_among(&self, saga: &str, event_ids: &[Uuid]) -> Result<Vec<Uuid>> {
        (**self).handled_among(saga, event_ids).await
    }

    async fn save_many(&self, changes: Vec<SagaChange>) -> Result<SagaSaved> {
        (**self).save_many(changes).await
    }
}

#[async_trait]
impl<C: Send + 'static, T: CommandDispatcher<C> + ?Sized> CommandDispatcher<C> for Arc<T> {
    async fn dispatch(&self, command: C, context: CommandContext) -> Result<(), DispatchError> {
        (**self).dispatch(command, context).await
    }

    async fn dispatch_many(&self, commands: Vec<(C, CommandContext)>) -> Result<(), DispatchError>
    where
        C: Send + 'async_trait,
    {
        (**self).dispatch_many(commands).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::memory::MemoryEventStore;

    /// A store whose every provided method is overridden to answer its own name, so that a
    /// forwarding impl that fell back on a trait default (which would succeed through the
    /// required methods) is caught.
    #[derive(Debug)]
    struct Overrides(MemoryEventStore);

    /// The answer of the override of `method`: its own name, so that a default that called
    /// another overridden method is told apart too.
    fn overridden<T>(method: &str) -> Result<T> {
        Err(Error::InvalidInput(method.into()))
    }

    #[async_trait]
    impl EventStore for Overrides {
        async fn commit(&self, unit: UnitOfWork) -> Result<CommitOutcome> {
            self.0.commit(unit).await
        }
        async fn read_stream(
            &self,
            stream_id: &StreamId,
            from_version: u64,
            limit: usize,
        ) -> Result<Vec<RecordedEvent>> {
            self.0.read_stream(stream_id, from_version, limit).await
        }
        async fn stream_version(&self, stream_id: &StreamId) -> Result<Option<u64>> {
            self.0.stream_version(stream_id).await
        }
        async fn read_all(
            &self,
            filter: &StreamFilter,
            after: Position,
            limit: usize,
        ) -> Result<Vec<RecordedEvent>> {
            self.0.read_all(filter, after, limit).await
        }
        async fn head(&self) -> Result<Position> {
            self.0.head().await
        }
        fn subscribe(&self, filter: StreamFilter, after: Position) -> EventSubscription {
            self.0.subscribe(filter, after)
        }
        async fn read_page(&self, _: &StreamFilter, _: Position, _: usize) -> Result<Page> {
            overridden("read_page")
        }
        async fn append(
            &self,
            _: &StreamId,
            _: ExpectedVersion,
            _: Vec<NewEvent>,
        ) -> Result<AppendResult> {
            overridden("append")
        }
        async fn append_many(&self, _: Vec<StreamAppend>) -> Result<Vec<AppendResult>> {
            overridden("append_many")
        }
        async fn replay_stream(
            &self,
            _: &StreamId,
            _: u64,
            _: usize,
        ) -> Result<Vec<ReplayedEvent>> {
            overridden("replay_stream")
        }
        async fn replay_streams(
            &self,
            _: &[(StreamId, u64)],
            _: usize,
        ) -> Result<Vec<Vec<ReplayedEvent>>> {
            overridden("replay_streams")
        }
        async fn read_stream_to_end(&self, _: &StreamId, _: u64) -> Result<Vec<RecordedEvent>> {
            overridden("read_stream_to_end")
        }
    }

    fn answered_by<T: std::fmt::Debug>(answer: Result<T>, method: &str) -> bool {
        matches!(answer, Err(Error::InvalidInput(message)) if message == method)
    }

    #[tokio::test]
    async fn a_store_behind_an_arc_keeps_its_overrides() {
        let store = Arc::new(Overrides(MemoryEventStore::new()));
        let id = StreamId::new("a-1").unwrap();
        let all = StreamFilter::All;
        let read_page = store.read_page(&all, Position::START, 1).await;
        assert!(answered_by(read_page, "read_page"));
        let append = store.append(&id, ExpectedVersion::Any, vec![]).await;
        assert!(answered_by(append, "append"));
        assert!(answered_by(store.append_many(vec![]).await, "append_many"));
        assert!(answered_by(
            store.replay_stream(&id, 1, 1).await,
            "replay_stream"
        ));
        let replay_streams = store.replay_streams(&[(id.clone(), 1)], 1).await;
        assert!(answered_by(replay_streams, "replay_streams"));
        let to_end = store.read_stream_to_end(&id, 1).await;
        assert!(answered_by(to_end, "read_stream_to_end"));
        // And through the `Arc<dyn EventStore>` a constructor keeps.
        let kept = event_store(store);
        let replay_streams = kept.replay_streams(&[(id, 1)], 1).await;
        assert!(answered_by(replay_streams, "replay_streams"));
    }

    #[test]
    fn an_arc_dyn_store_is_kept_not_wrapped_again() {
        let shared: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
        let kept = event_store(shared.clone());
        assert!(Arc::ptr_eq(&shared, &kept));
        // A store by value is put behind an `Arc` of its own.
        let fresh = event_store(MemoryEventStore::new());
        assert!(!Arc::ptr_eq(&shared, &fresh));
    }
}
