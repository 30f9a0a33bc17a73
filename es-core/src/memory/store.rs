use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::RecordedEvent;
use crate::housekeeping::{Housekeeping, PruneReport};
use crate::polling::{poll_subscription, PollConfig};
use crate::projection::InlineProjection;
use crate::relay::{ParkedEvent, ParkedEventStore};
use crate::saga::{DeadlineRecord, SagaChange, SagaSaved, SagaState, SagaStore};
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::store::{
    AppendResult, CheckpointStore, CommitOutcome, EventStore, EventSubscription, Inbox, UnitOfWork,
};
use crate::stream::{Position, StreamFilter, StreamId};

/// An in-memory [`EventStore`], which is also an [`Inbox`], a [`CheckpointStore`], a
/// [`SnapshotStore`] and a [`SagaStore`], all behind one lock so a [`UnitOfWork`] is atomic.
///
/// Cloning is cheap and shares the store.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), es_core::Error> {
/// use es_core::{EventStore, ExpectedVersion, NewEvent, StreamId, memory::MemoryEventStore};
///
/// let store = MemoryEventStore::new();
/// let stream = StreamId::new("account-1")?;
/// store.append(&stream, ExpectedVersion::NoStream, vec![NewEvent::raw("Opened", "{}")]).await?;
/// let events = store.read_stream(&stream, 1, 10).await?;
/// assert_eq!(events[0].stream_version, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct MemoryEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    wake: watch::Sender<()>,
    inline: RwLock<Vec<Arc<dyn InlineProjection>>>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            state: Mutex::default(),
            wake: watch::channel(()).0,
            inline: RwLock::default(),
        }
    }
}

#[derive(Default)]
struct State {
    /// The global log; the event at index `i` has sequence `i + 1`.
    log: Vec<RecordedEvent>,
    streams: HashMap<StreamId, Vec<usize>>,
    categories: HashMap<String, Vec<usize>>,
    event_ids: HashSet<Uuid>,
    commits: u64,
    /// Inbox entries and when they were recorded (for pruning).
    inbox: HashMap<(String, Uuid), DateTime<Utc>>,
    checkpoints: HashMap<String, Position>,
    parked: Vec<ParkedEvent>,
    snapshots: HashMap<StreamId, Snapshot>,
    /// Saga states and when they last changed (for pruning).
    sagas: HashMap<(String, String), (SagaState, DateTime<Utc>)>,
    saga_inbox: HashMap<(String, Uuid), DateTime<Utc>>,
    deadlines: HashMap<Uuid, DeadlineRecord>,
}

impl fmt::Debug for MemoryEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("MemoryEventStore")
            .field("events", &state.log.len())
            .field("streams", &state.streams.len())
            .finish()
    }
}

impl MemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a projection applied inside every commit, under the store's lock, so that a
    /// read right after an append sees its effect. It must not call back into this store.
    pub fn with_inline_projection(self, projection: Arc<dyn InlineProjection>) -> Self {
        self.inner
            .inline
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(projection);
        self
    }

    /// How many events the store holds.
    pub fn len(&self) -> usize {
        self.state().log.len()
    }

    /// Whether the store holds no event.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic in another thread while it held the lock leaves the state as it was before
        // that commit (commits check everything before changing anything), so keep going.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn stream_version(state: &State, stream: &StreamId) -> Option<u64> {
    state
        .streams
        .get(stream)
        .and_then(|indexes| indexes.last())
        .map(|&i| state.log[i].stream_version)
}

#[async_trait]
impl EventStore for MemoryEventStore {
    async fn commit(&self, unit: UnitOfWork) -> Result<CommitOutcome> {
        unit.validate()?;
        let mut state = self.state();
        // Any entry already there (or twice in the unit) means a message of the unit was
        // handled before: nothing is written, as in one transaction whose insert found it.
        let mut entries = HashSet::new();
        for entry in &unit.inbox {
            if !entries.insert((&entry.consumer, entry.event_id))
                || state
                    .inbox
                    .contains_key(&(entry.consumer.clone(), entry.event_id))
            {
                return Ok(CommitOutcome::AlreadyHandled);
            }
        }
        // Check every expectation and id before changing anything: all or nothing.
        let mut batch_ids = HashSet::new();
        for append in &unit.appends {
            let actual = stream_version(&state, &append.stream_id);
            if !append.expected.is_met_by(actual) {
                return Err(append.expected.conflict(&append.stream_id, actual));
            }
            for event in &append.events {
                if state.event_ids.contains(&event.event_id) || !batch_ids.insert(event.event_id) {
                    return Err(Error::InvalidInput(format!(
                        "event id {} is already stored",
                        event.event_id
                    )));
                }
            }
        }
        let commit = state.commits + 1;
        let now = Utc::now();
        let mut sequence = state.log.len() as u64;
        let mut recorded = Vec::new();
        let mut results = Vec::with_capacity(unit.appends.len());
        for append in unit.appends {
            let mut version = stream_version(&state, &append.stream_id).unwrap_or(0);
            let mut positions = Vec::with_capacity(append.events.len());
            for event in append.events {
                version += 1;
                sequence += 1;
                let position = Position::new(commit, sequence);
                positions.push(position);
                recorded.push(RecordedEvent {
                    event_id: event.event_id,
                    stream_id: append.stream_id.clone(),
                    stream_version: version,
                    position,
                    recorded_at: now,
                    event_type: event.event_type,
                    schema_version: event.schema_version,
                    payload: event.payload,
                    metadata: event.metadata,
                });
            }
            results.push(AppendResult {
                stream_id: append.stream_id,
                next_expected_version: version,
                positions,
            });
        }
        {
            let inline = self.inner.inline.read().unwrap_or_else(|e| e.into_inner());
            for projection in inline.iter() {
                for event in &recorded {
                    projection.apply(event).map_err(|source| {
                        Error::backend(
                            "inline projection",
                            format!("{}: {source}", projection.name()),
                        )
                    })?;
                }
            }
        }
        for entry in unit.inbox {
            state.inbox.insert((entry.consumer, entry.event_id), now);
        }
        if let Some((name, position)) = unit.checkpoint {
            state.checkpoints.insert(name, position);
        }
        let appended = !recorded.is_empty();
        if appended {
            state.commits = commit;
        }
        for event in recorded {
            let index = state.log.len();
            state.event_ids.insert(event.event_id);
            state
                .streams
                .entry(event.stream_id.clone())
                .or_default()
                .push(index);
            state
                .categories
                .entry(event.stream_id.category().to_owned())
                .or_default()
                .push(index);
            state.log.push(event);
        }
        drop(state);
        if appended {
            self.inner.wake.send_modify(|_| {});
        }
        Ok(CommitOutcome::Committed(results))
    }

    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let state = self.state();
        let Some(indexes) = state.streams.get(stream_id) else {
            return Ok(Vec::new());
        };
        // Version v is at index v - 1 of the stream.
        let start = (from_version.max(1) - 1) as usize;
        Ok(indexes
            .iter()
            .skip(start)
            .take(limit)
            .map(|&i| state.log[i].clone())
            .collect())
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<Option<u64>> {
        Ok(stream_version(&self.state(), stream_id))
    }

    async fn read_all(
        &self,
        filter: &StreamFilter,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let state = self.state();
        let indexes: &[usize] = match filter {
            StreamFilter::All => {
                let start = state.log.partition_point(|e| e.position <= after);
                return Ok(state.log[start..].iter().take(limit).cloned().collect());
            }
            StreamFilter::Category(category) => match state.categories.get(category) {
                Some(indexes) => indexes,
                None => return Ok(Vec::new()),
            },
        };
        let start = indexes.partition_point(|&i| state.log[i].position <= after);
        Ok(indexes[start..]
            .iter()
            .take(limit)
            .map(|&i| state.log[i].clone())
            .collect())
    }

    async fn head(&self) -> Result<Position> {
        Ok(self
            .state()
            .log
            .last()
            .map_or(Position::START, |e| e.position))
    }

    fn subscribe(&self, filter: StreamFilter, after: Position) -> EventSubscription {
        let config = PollConfig {
            poll_interval: Duration::from_secs(1),
            ..PollConfig::default()
        };
        poll_subscription(
            Arc::new(self.clone()),
            filter,
            after,
            Some(self.inner.wake.subscribe()),
            config,
        )
    }
}

#[async_trait]
impl Inbox for MemoryEventStore {
    async fn contains(&self, consumer: &str, event_id: Uuid) -> Result<bool> {
        Ok(self
            .state()
            .inbox
            .contains_key(&(consumer.to_owned(), event_id)))
    }

    async fn record(&self, consumer: &str, event_id: Uuid) -> Result<bool> {
        Ok(self
            .state()
            .inbox
            .insert((consumer.to_owned(), event_id), Utc::now())
            .is_none())
    }
}

#[async_trait]
impl CheckpointStore for MemoryEventStore {
    async fn load(&self, name: &str) -> Result<Option<Position>> {
        Ok(self.state().checkpoints.get(name).copied())
    }

    async fn save(&self, name: &str, position: Position) -> Result<()> {
        self.state().checkpoints.insert(name.to_owned(), position);
        Ok(())
    }
}

#[async_trait]
impl ParkedEventStore for MemoryEventStore {
    async fn park(&self, parked: ParkedEvent) -> Result<()> {
        let mut state = self.state();
        let same = |p: &ParkedEvent| p.relay == parked.relay && p.event_id == parked.event_id;
        match state.parked.iter_mut().find(|p| same(p)) {
            Some(existing) => {
                existing.error = parked.error;
                existing.parked_at = parked.parked_at;
            }
            None => state.parked.push(parked),
        }
        Ok(())
    }

    async fn parked(&self, relay: &str, limit: usize) -> Result<Vec<ParkedEvent>> {
        let state = self.state();
        let mut parked: Vec<ParkedEvent> = state
            .parked
            .iter()
            .filter(|p| p.relay == relay)
            .cloned()
            .collect();
        parked.sort_by_key(|p| p.position);
        parked.truncate(limit);
        Ok(parked)
    }
}

#[async_trait]
impl SnapshotStore for MemoryEventStore {
    async fn save(&self, snapshot: Snapshot) -> Result<()> {
        let mut state = self.state();
        match state.snapshots.get(&snapshot.stream_id) {
            Some(existing) if existing.version > snapshot.version => {}
            _ => {
                state.snapshots.insert(snapshot.stream_id.clone(), snapshot);
            }
        }
        Ok(())
    }

    async fn load(&self, stream_id: &StreamId) -> Result<Option<Snapshot>> {
        Ok(self.state().snapshots.get(stream_id).cloned())
    }

    async fn delete(&self, stream_id: &StreamId) -> Result<()> {
        self.state().snapshots.remove(stream_id);
        Ok(())
    }
}

#[async_trait]
impl SagaStore for MemoryEventStore {
    async fn load(&self, saga: &str, instance: &str) -> Result<Option<SagaState>> {
        Ok(self
            .state()
            .sagas
            .get(&(saga.to_owned(), instance.to_owned()))
            .map(|(state, _)| state.clone()))
    }

    async fn save(&self, change: SagaChange) -> Result<SagaSaved> {
        self.save_many(vec![change]).await
    }

    /// All or nothing under the store's lock: every change is checked before any is applied.
    async fn save_many(&self, changes: Vec<SagaChange>) -> Result<SagaSaved> {
        let mut state = self.state();
        let mut instances = HashSet::new();
        for change in &changes {
            if let Some(event_id) = change.handled_event {
                if state
                    .saga_inbox
                    .contains_key(&(change.saga.clone(), event_id))
                {
                    return Ok(SagaSaved::AlreadyHandled);
                }
            }
            if let Some(id) = change.fired_deadline {
                if !state.deadlines.contains_key(&id) {
                    return Ok(SagaSaved::AlreadyHandled);
                }
            }
            let key = (change.saga.clone(), change.instance.clone());
            let actual = state.sagas.get(&key).map_or(0, |(s, _)| s.version);
            // An instance twice in one call would be checked against the version before both.
            if actual != change.expected_version || !instances.insert(key) {
                return Err(change.conflict(actual));
            }
        }
        for change in changes {
            let key = (change.saga.clone(), change.instance.clone());
            let actual = state.sagas.get(&key).map_or(0, |(s, _)| s.version);
            if let Some(event_id) = change.handled_event {
                state
                    .saga_inbox
                    .insert((change.saga.clone(), event_id), Utc::now());
            }
            if let Some(id) = change.fired_deadline {
                state.deadlines.remove(&id);
            }
            state.deadlines.retain(|_, d| {
                !(d.saga == change.saga
                    && d.instance == change.instance
                    && (change.cancel.contains(&d.key)
                        || change.schedule.iter().any(|s| s.key == d.key)))
            });
            for deadline in change.schedule {
                state.deadlines.insert(deadline.id, deadline);
            }
            state.sagas.insert(
                key,
                (
                    SagaState {
                        data: change.state,
                        version: actual + 1,
                        completed: change.completed,
                    },
                    Utc::now(),
                ),
            );
        }
        Ok(SagaSaved::Saved)
    }

    async fn due_deadlines(
        &self,
        saga: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<DeadlineRecord>> {
        let state = self.state();
        let mut due: Vec<_> = state
            .deadlines
            .values()
            .filter(|d| d.saga == saga && d.due_at <= now && d.retry_at.is_none_or(|r| r <= now))
            .cloned()
            .collect();
        // By when the next attempt is due, as the PostgreSQL store orders them.
        due.sort_by_key(|d| (d.retry_at.unwrap_or(d.due_at), d.id));
        due.truncate(limit);
        Ok(due)
    }

    async fn defer_deadline(&self, id: Uuid, retry_at: DateTime<Utc>, error: &str) -> Result<()> {
        if let Some(deadline) = self.state().deadlines.get_mut(&id) {
            deadline.attempts = deadline.attempts.saturating_add(1);
            deadline.retry_at = Some(retry_at);
            deadline.last_error = Some(error.to_owned());
        }
        Ok(())
    }

    async fn parked_deadlines(&self, saga: &str, limit: usize) -> Result<Vec<DeadlineRecord>> {
        let state = self.state();
        let mut parked: Vec<_> = state
            .deadlines
            .values()
            .filter(|d| d.saga == saga && d.attempts > 0)
            .cloned()
            .collect();
        parked.sort_by_key(|d| (d.due_at, d.id));
        parked.truncate(limit);
        Ok(parked)
    }

    async fn has_handled(&self, saga: &str, event_id: Uuid) -> Result<bool> {
        Ok(self
            .state()
            .saga_inbox
            .contains_key(&(saga.to_owned(), event_id)))
    }

    async fn deadlines_of(&self, saga: &str, instance: &str) -> Result<Vec<DeadlineRecord>> {
        let state = self.state();
        let mut found: Vec<_> = state
            .deadlines
            .values()
            .filter(|d| d.saga == saga && d.instance == instance)
            .cloned()
            .collect();
        found.sort_by_key(|d| (d.due_at, d.id));
        Ok(found)
    }
}

#[async_trait]
impl Housekeeping for MemoryEventStore {
    /// Prunes the inbox, the saga inbox and finished saga instances. Idempotency keys live in
    /// [`MemoryIdempotencyStore`](crate::memory::MemoryIdempotencyStore), not here: the report
    /// counts none.
    async fn prune(&self, retention: Duration) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        let Some(cutoff) = chrono::Duration::from_std(retention)
            .ok()
            .and_then(|retention| Utc::now().checked_sub_signed(retention))
        else {
            // A retention longer than the clock reaches back: nothing is that old.
            return Ok(report);
        };
        let mut state = self.state();
        let before = state.inbox.len();
        state.inbox.retain(|_, at| *at >= cutoff);
        report.inbox = (before - state.inbox.len()) as u64;
        let before = state.saga_inbox.len();
        state.saga_inbox.retain(|_, at| *at >= cutoff);
        report.saga_inbox = (before - state.saga_inbox.len()) as u64;
        let finished: HashSet<(String, String)> = state
            .sagas
            .iter()
            .filter(|(_, (saga, at))| saga.completed && *at < cutoff)
            .map(|(key, _)| key.clone())
            .collect();
        state.sagas.retain(|key, _| !finished.contains(key));
        state
            .deadlines
            .retain(|_, d| !finished.contains(&(d.saga.clone(), d.instance.clone())));
        report.saga_states = finished.len() as u64;
        Ok(report)
    }
}
