//! The [`EventStore`] and the [`UnitOfWork`] it commits, with the small stores that commit
//! alongside it: [`Inbox`] and [`CheckpointStore`].

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::{DomainEvent, NewEvent, RecordedEvent};
use crate::stream::{ExpectedVersion, Position, StreamFilter, StreamId};

/// Events to append to one stream, with the writer's expectation of its version.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamAppend {
    /// The target stream.
    pub stream_id: StreamId,
    /// What the writer expects; checked by the store, atomically with the write.
    pub expected: ExpectedVersion,
    /// The events, in order. May be empty: then only the expectation is checked.
    pub events: Vec<NewEvent>,
}

impl StreamAppend {
    /// An append of `events` to `stream_id` expecting `expected`.
    pub fn new(stream_id: StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        StreamAppend {
            stream_id,
            expected,
            events,
        }
    }
}

/// The outcome of one stream's append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendResult {
    /// The stream appended to.
    pub stream_id: StreamId,
    /// The version of the stream after the append (the expected version for the next one).
    pub next_expected_version: u64,
    /// The positions of the appended events, in order (empty when no events were given).
    pub positions: Vec<Position>,
}

/// A consumer's record that it handled one message: `(consumer, event id)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InboxEntry {
    /// The consumer's name (one per service or handler, shared by its instances).
    pub consumer: String,
    /// The id of the handled event.
    pub event_id: Uuid,
}

impl InboxEntry {
    /// An inbox entry for `consumer` having handled `event_id`.
    pub fn new(consumer: impl Into<String>, event_id: Uuid) -> Self {
        InboxEntry {
            consumer: consumer.into(),
            event_id,
        }
    }
}

/// Effects that commit together or not at all: the appends (each with its expectation), the
/// inbox entries of the messages that caused them, and a projection's checkpoint.
///
/// In memory this is one lock; in PostgreSQL one transaction. A batched consumer
/// ([`MessageHandler::handle_batch`](crate::bus::MessageHandler::handle_batch)) commits the
/// effects of several messages with one inbox entry each in one unit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UnitOfWork {
    /// Appends to one or more streams; every expectation must hold or nothing is written.
    pub appends: Vec<StreamAppend>,
    /// Marks messages as handled; if any of them is already there (or one is given twice),
    /// nothing is written and the commit answers [`CommitOutcome::AlreadyHandled`].
    pub inbox: Vec<InboxEntry>,
    /// Moves a checkpoint (a projection's or a relay's).
    pub checkpoint: Option<(String, Position)>,
}

impl UnitOfWork {
    /// An empty unit of work.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an append.
    pub fn append(mut self, append: StreamAppend) -> Self {
        self.appends.push(append);
        self
    }

    /// Records in the same commit that a consumer handled a message (call it once per message
    /// of a batch).
    pub fn handled(mut self, entry: InboxEntry) -> Self {
        self.inbox.push(entry);
        self
    }

    /// Moves checkpoint `name` to `position` in the same commit.
    pub fn checkpoint(mut self, name: impl Into<String>, position: Position) -> Self {
        self.checkpoint = Some((name.into(), position));
        self
    }

    /// Checks what a store must refuse before touching anything: a stream twice in one unit.
    pub fn validate(&self) -> Result<()> {
        for (i, append) in self.appends.iter().enumerate() {
            if self.appends[..i]
                .iter()
                .any(|other| other.stream_id == append.stream_id)
            {
                return Err(Error::InvalidInput(format!(
                    "stream `{}` appears twice in one unit of work",
                    append.stream_id
                )));
            }
        }
        Ok(())
    }
}

/// What a [`UnitOfWork`] commit did.
///
/// `T` is what a commit answers: one [`AppendResult`] per append, in order, for
/// [`EventStore::commit`]; a backend's commit that also runs the application's own writes
/// (`PgEventStore::commit_with`) answers those results with its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome<T = Vec<AppendResult>> {
    /// Everything was written.
    Committed(T),
    /// An inbox entry was already there: a message had been handled, nothing was written. A
    /// batch that hears this handles its messages one by one, so each finds its own answer.
    AlreadyHandled,
}

impl<T> CommitOutcome<T> {
    /// What the commit answered, or `None` when the message had already been handled.
    pub fn committed(self) -> Option<T> {
        match self {
            CommitOutcome::Committed(value) => Some(value),
            CommitOutcome::AlreadyHandled => None,
        }
    }

    /// Whether the message had already been handled (nothing was written).
    pub fn is_already_handled(&self) -> bool {
        matches!(self, CommitOutcome::AlreadyHandled)
    }
}

/// A live stream of events from the global log: catches up, then follows new commits.
///
/// An `Err` item reports a failed read (the backend was down, say); the subscription goes on
/// after it, from the last event it delivered, so a consumer may log errors and keep reading.
pub type EventSubscription = BoxStream<'static, Result<RecordedEvent>>;

/// One stored event as a replay reads it: what folding it into state needs, and no more.
///
/// ```
/// use es_core::{DomainEvent, ReplayedEvent};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// enum Counted { Incremented { by: u32 } }
/// impl DomainEvent for Counted {}
///
/// let replayed = ReplayedEvent {
///     stream_version: 1,
///     event_type: "Incremented".into(),
///     schema_version: 1,
///     payload: br#"{"by":2}"#.to_vec().into(),
/// };
/// assert_eq!(replayed.decode::<Counted>()?, Counted::Incremented { by: 2 });
/// # Ok::<(), es_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayedEvent {
    /// Its version in the stream: 1 for the first event.
    pub stream_version: u64,
    /// The stable event type name.
    pub event_type: String,
    /// The schema version of `payload`.
    pub schema_version: u32,
    /// The serialized event, exactly as it was written.
    pub payload: Bytes,
}

impl ReplayedEvent {
    /// Decodes the payload into a domain event (through its upcasters).
    pub fn decode<E: DomainEvent>(&self) -> Result<E> {
        E::decode(&self.event_type, self.schema_version, &self.payload)
    }
}

impl From<RecordedEvent> for ReplayedEvent {
    fn from(event: RecordedEvent) -> Self {
        ReplayedEvent {
            stream_version: event.stream_version,
            event_type: event.event_type,
            schema_version: event.schema_version,
            payload: event.payload,
        }
    }
}

/// A page of the global log as a subscription reads it ([`EventStore::read_page`]).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Page {
    /// The events, in position order.
    pub events: Vec<RecordedEvent>,
    /// Whether the page reached the head: no event after it can be read now, so a reader waits
    /// for new commits before it reads again.
    pub at_head: bool,
}

impl Page {
    /// A page of `events`; `at_head` when no event after them can be read now.
    pub fn new(events: Vec<RecordedEvent>, at_head: bool) -> Self {
        Page { events, at_head }
    }
}

/// An append-only store of event streams, speaking serialized events.
///
/// Object-safe (use it as `Arc<dyn EventStore>`), so the typed layer
/// ([`Repository`](crate::Repository)) and every runner work with any backend. Backends:
/// [`MemoryEventStore`](crate::memory::MemoryEventStore) here, `PgEventStore` in `es-postgres`.
///
/// Guarantees every backend keeps (and the conformance suite checks):
/// - an append whose expectation fails writes nothing and returns [`Error::Conflict`];
/// - the appends of a [`UnitOfWork`] are atomic across streams;
/// - [`read_all`](EventStore::read_all) and [`subscribe`](EventStore::subscribe) deliver each
///   committed event once, in [`Position`] order, and never skip one that commits later.
///
/// Most code reaches the store through a [`Repository`](crate::Repository); called directly
/// it speaks serialized events:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> es_core::Result<()> {
/// use futures_util::StreamExt;
/// use es_core::memory::MemoryEventStore;
/// use es_core::{EventStore, ExpectedVersion, NewEvent, Position, StreamFilter, StreamId};
///
/// let store = MemoryEventStore::new(); // es_postgres::PgEventStore on PostgreSQL
/// let order = StreamId::new("order-1")?;
/// let placed = store
///     .append(&order, ExpectedVersion::NoStream, vec![NewEvent::raw("OrderPlaced", "{}")])
///     .await?;
/// assert_eq!(placed.next_expected_version, 1);
///
/// // A second writer that read the stream before that append is refused, and writes nothing.
/// let late = store.append(&order, ExpectedVersion::NoStream, vec![NewEvent::raw("OrderPlaced", "{}")]);
/// assert!(late.await.unwrap_err().is_conflict());
///
/// store
///     .append(&order, ExpectedVersion::Exact(1), vec![NewEvent::raw("OrderShipped", "{}")])
///     .await?;
/// let stream = store.read_stream(&order, 1, 100).await?;
/// assert_eq!(stream.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(), ["OrderPlaced", "OrderShipped"]);
///
/// // The global log, from the start, then live: what projections and the relay read.
/// let mut log = store.subscribe(StreamFilter::category("order"), Position::START);
/// assert_eq!(log.next().await.transpose()?.map(|e| e.stream_version), Some(1));
/// assert_eq!(log.next().await.transpose()?.map(|e| e.stream_version), Some(2));
/// # Ok(()) }
/// ```
#[async_trait]
pub trait EventStore: Send + Sync + fmt::Debug {
    /// Commits a unit of work atomically.
    async fn commit(&self, unit: UnitOfWork) -> Result<CommitOutcome>;

    /// Reads up to `limit` events of one stream, starting at version `from_version` (1 is the
    /// first event). An unknown stream reads as empty.
    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>>;

    /// The stream's current version, `None` when it does not exist.
    async fn stream_version(&self, stream_id: &StreamId) -> Result<Option<u64>>;

    /// Reads up to `limit` events of the global log after `after`, in position order.
    async fn read_all(
        &self,
        filter: &StreamFilter,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>>;

    /// The position of the newest event a reader can see (`Position::START` when empty).
    async fn head(&self) -> Result<Position>;

    /// Subscribes to the global log after `after`: every event that passes `filter`, once, in
    /// order; first those already stored, then new ones as they commit.
    fn subscribe(&self, filter: StreamFilter, after: Position) -> EventSubscription;

    /// Reads a page of the global log as a subscription does: what [`read_all`](Self::read_all)
    /// hands out, and whether the page reached the head, i.e. no event after it could be read
    /// now. A subscription whose page reached the head waits for a wake-up (or its poll
    /// interval) before it reads again.
    ///
    /// The default says a page that came back short reached the head, which holds for a store
    /// whose events become readable in position order. A store that holds newer committed
    /// events back while older transactions run (PostgreSQL's gap-safe reads) overrides it: a
    /// short page with events held back behind it has not reached the head.
    async fn read_page(
        &self,
        filter: &StreamFilter,
        after: Position,
        limit: usize,
    ) -> Result<Page> {
        let events = self.read_all(filter, after, limit).await?;
        let at_head = events.len() < limit;
        Ok(Page { events, at_head })
    }

    /// Appends events to one stream.
    async fn append(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        let unit = UnitOfWork::new().append(StreamAppend::new(stream_id.clone(), expected, events));
        match self.commit(unit).await? {
            CommitOutcome::Committed(mut results) => Ok(results.remove(0)),
            CommitOutcome::AlreadyHandled => unreachable!("no inbox entry was given"),
        }
    }

    /// Appends to several streams at once: every expectation holds and everything is written,
    /// or nothing is.
    async fn append_many(&self, appends: Vec<StreamAppend>) -> Result<Vec<AppendResult>> {
        let unit = UnitOfWork {
            appends,
            ..UnitOfWork::default()
        };
        match self.commit(unit).await? {
            CommitOutcome::Committed(results) => Ok(results),
            CommitOutcome::AlreadyHandled => unreachable!("no inbox entry was given"),
        }
    }

    /// Reads up to `limit` events of one stream from version `from_version`, with only what
    /// folding them into state needs (version, type, schema version, payload): the
    /// [`Repository`](crate::Repository) loads aggregates this way. Backends override it to
    /// read fewer columns and skip decoding the metadata; the default reads whole events.
    async fn replay_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<ReplayedEvent>> {
        Ok(self
            .read_stream(stream_id, from_version, limit)
            .await?
            .into_iter()
            .map(ReplayedEvent::from)
            .collect())
    }

    /// Replays several streams in one call: for each `(stream, from_version)` request, up to
    /// `limit` events of that stream from `from_version`, as
    /// [`replay_stream`](EventStore::replay_stream) reads them. The answer has one list per
    /// request, in the order of `requests` (an unknown stream answers an empty list; a stream
    /// asked twice is answered twice).
    ///
    /// The [`Repository`](crate::Repository) loads the aggregates of one unit of work this way
    /// ([`load_many`](crate::Repository::load_many)). The default asks
    /// [`replay_stream`](EventStore::replay_stream) once per request; backends with a network
    /// round trip per query override it to read every stream in one query. The streams are not
    /// read at one instant: like separate loads, the versions a command decides on are checked
    /// when it appends.
    async fn replay_streams(
        &self,
        requests: &[(StreamId, u64)],
        limit: usize,
    ) -> Result<Vec<Vec<ReplayedEvent>>> {
        let mut answers = Vec::with_capacity(requests.len());
        for (stream_id, from_version) in requests {
            answers.push(self.replay_stream(stream_id, *from_version, limit).await?);
        }
        Ok(answers)
    }

    /// Reads a whole stream from `from_version` to its end, page by page.
    async fn read_stream_to_end(
        &self,
        stream_id: &StreamId,
        from_version: u64,
    ) -> Result<Vec<RecordedEvent>> {
        const PAGE: usize = 4096;
        let mut events = Vec::new();
        let mut next = from_version.max(1);
        loop {
            let page = self.read_stream(stream_id, next, PAGE).await?;
            let done = page.len() < PAGE;
            if let Some(last) = page.last() {
                next = last.stream_version + 1;
            }
            events.extend(page);
            if done {
                return Ok(events);
            }
        }
    }
}

/// Remembers which messages each consumer handled, so a redelivery is skipped.
///
/// Writing an entry together with the handler's effects is the job of
/// [`UnitOfWork::handled`]; this trait reads and writes entries on their own.
#[async_trait]
pub trait Inbox: Send + Sync + fmt::Debug {
    /// Whether `consumer` already handled `event_id`.
    async fn contains(&self, consumer: &str, event_id: Uuid) -> Result<bool>;

    /// Records the entry; `false` when it was already there.
    async fn record(&self, consumer: &str, event_id: Uuid) -> Result<bool>;
}

/// Stores how far each named reader (projection, relay) got in the global log.
#[async_trait]
pub trait CheckpointStore: Send + Sync + fmt::Debug {
    /// The saved position of `name`, `None` when it never saved one.
    async fn load(&self, name: &str) -> Result<Option<Position>>;

    /// Saves the position of `name`.
    async fn save(&self, name: &str, position: Position) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_twice_in_one_unit_is_invalid() {
        let s = StreamId::new("a-1").unwrap();
        let unit = UnitOfWork::new()
            .append(StreamAppend::new(s.clone(), ExpectedVersion::Any, vec![]))
            .append(StreamAppend::new(s, ExpectedVersion::Any, vec![]));
        assert!(matches!(unit.validate(), Err(Error::InvalidInput(_))));
    }
}
