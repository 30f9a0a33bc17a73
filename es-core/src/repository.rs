//! The typed [`Repository`]: load an aggregate, decide, append, retry on conflicts.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use chrono::Utc;
use serde::{de::DeserializeOwned, Serialize};

use crate::aggregate::Aggregate;
use crate::aggregate_cache::{AggregateCache, AggregateCacheStats};
use crate::error::{Error, Result};
use crate::event::{Metadata, NewEvent};
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::store::{
    CommitOutcome, EventStore, InboxEntry, ReplayedEvent, StreamAppend, UnitOfWork,
};
use crate::stream::ExpectedVersion;
use crate::stream::StreamId;

/// Why a command was not carried out: the aggregate said no, or the store failed. These are
/// the only two answers (the enum is exhaustive), so a `match` needs no wildcard arm.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The aggregate refused the command: a domain error to show to the caller.
    #[error(transparent)]
    Rejected(E),
    /// The store failed, or conflicts outlasted the retries ([`Error::Conflict`]).
    #[error(transparent)]
    Store(#[from] Error),
}

/// An aggregate's state as loaded, with the stream version it reflects.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// How many events made it (0: a new aggregate).
    pub version: u64,
}

/// What a successful command did.
#[derive(Debug, Clone, PartialEq)]
pub struct Executed<A: Aggregate> {
    /// The state after the command.
    pub state: A,
    /// The stream version after the command.
    pub version: u64,
    /// The events the command appended (empty when it decided nothing, or when the message
    /// behind it had already been handled).
    pub events: Vec<A::Event>,
    /// `true` when the inbox said the causing message had already been handled, so nothing
    /// was decided or written.
    pub already_handled: bool,
}

/// A decision on one aggregate, not yet committed: for committing with other streams in one
/// [`UnitOfWork`] (all expectations hold or nothing is written).
///
/// The append expects the version the decision was made on, also when the aggregate refused
/// (then it has no events): a refusal read from state that another writer changed meanwhile
/// fails the commit with a conflict instead of standing on stale state.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<A: Aggregate> {
    /// The events to append (none when refused) and the expected version.
    pub append: StreamAppend,
    /// What the aggregate decided: its events, or why not.
    pub outcome: Result<Vec<A::Event>, A::Error>,
    /// The state the decision was made on.
    pub state: A,
    /// The version the decision was made on.
    pub version: u64,
}

impl<A: Aggregate> Decision<A> {
    /// Whether the aggregate refused the command.
    pub fn is_rejected(&self) -> bool {
        self.outcome.is_err()
    }
}

/// Context of one command: the metadata its events get, and the inbox entry of the message
/// that caused it (committed with the events, so a redelivery is skipped).
#[derive(Debug, Clone, Default)]
pub struct CommandContext {
    /// Metadata given to every event the command appends.
    pub metadata: Metadata,
    /// The message this command handles, recorded atomically with its events.
    pub inbox: Option<InboxEntry>,
}

impl From<Metadata> for CommandContext {
    /// The metadata alone, with no inbox entry: what a command from outside (an HTTP request)
    /// carries.
    fn from(metadata: Metadata) -> Self {
        CommandContext::with_metadata(metadata)
    }
}

impl CommandContext {
    /// A context with this metadata and no inbox entry.
    pub fn with_metadata(metadata: Metadata) -> Self {
        CommandContext {
            metadata,
            inbox: None,
        }
    }

    /// A context for a command caused by `cause`, handled by `consumer`: the events carry the
    /// cause's correlation id and its event id as causation id, and the inbox entry
    /// `(consumer, cause.event_id)` commits with them.
    pub fn caused_by(cause: &crate::RecordedEvent, consumer: impl Into<String>) -> Self {
        CommandContext {
            metadata: Metadata::caused_by(cause),
            inbox: Some(InboxEntry::new(consumer, cause.event_id)),
        }
    }
}

/// The waits between decisions after version conflicts: the first retry goes at once (the
/// writer that won has committed, so a reload sees it), later ones after a jittered wait from
/// about 1 ms doubling to 50 ms, so that many writers racing on one aggregate spread out
/// instead of colliding again and again (one of 32 such writers lost 17 times in a row
/// without it).
struct Contention(crate::backoff::Backoff);

impl Contention {
    fn new() -> Self {
        Contention(crate::backoff::Backoff::new(
            std::time::Duration::from_millis(1),
            std::time::Duration::from_millis(50),
        ))
    }

    async fn wait(&mut self, attempt: usize) {
        if attempt > 1 {
            self.0.sleep().await;
        }
    }
}

/// The most events a load reads per query.
const PAGE: usize = 4096;

/// How many events a load reads first: most aggregates are shorter; for a longer one, the
/// fold of this page starts soon and overlaps the read of the next (a first page of [`PAGE`]
/// kept the fold waiting for all of its rows).
const FIRST_PAGE: usize = 512;

/// Events folded between two chances for the read of the next page to take in what arrived.
const FOLD_CHUNK: usize = 256;

/// Decodes `page` and applies it to `loaded`. With `yielding`, it gives way every
/// [`FOLD_CHUNK`] events, so that the read of the next page, polled beside it in the same
/// task, takes rows off the connection while the page is folded instead of after.
async fn fold_page<A: Aggregate>(
    loaded: &mut Loaded<A>,
    page: &[ReplayedEvent],
    yielding: bool,
) -> Result<()> {
    for (i, replayed) in page.iter().enumerate() {
        if yielding && i > 0 && i % FOLD_CHUNK == 0 {
            tokio::task::yield_now().await;
        }
        let event = replayed.decode::<A::Event>()?;
        loaded.state.apply(&event);
        loaded.version = replayed.stream_version;
    }
    Ok(())
}

type EncodeSnapshot<A> = fn(&A) -> Result<Vec<u8>>;
type DecodeSnapshot<A> = fn(&[u8]) -> Result<A>;

struct Snapshots<A> {
    store: Arc<dyn SnapshotStore>,
    every: u64,
    encode: EncodeSnapshot<A>,
    decode: DecodeSnapshot<A>,
}

/// Loads aggregates of type `A` from an [`EventStore`] and carries out their commands.
///
/// `execute` loads the aggregate (latest snapshot, then the tail of its stream), lets it decide,
/// and appends the events expecting the version it loaded. When another writer got there first
/// it reloads and decides again, up to [`with_max_retries`](Repository::with_max_retries) times:
/// the first time at once, later ones after a short jittered wait (about 1 ms, doubling up to
/// 50 ms), so that writers racing on one aggregate spread out.
///
/// With [`with_cache`](Repository::with_cache) it keeps the folded state of recently used
/// aggregates and reads only the events written after it.
pub struct Repository<A: Aggregate> {
    store: Arc<dyn EventStore>,
    snapshots: Option<Snapshots<A>>,
    /// Shared by clones: the instances of one service's handlers warm one cache.
    cache: Option<Arc<AggregateCache<A>>>,
    /// Whether a command on a cached aggregate decides on the cached state without reading
    /// the stream first ([`with_trusted_cache`](Repository::with_trusted_cache)).
    trust_cache: bool,
    max_retries: usize,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &A::TYPE)
            .field("store", &self.store)
            .field("snapshot_every", &self.snapshots.as_ref().map(|s| s.every))
            .field("max_retries", &self.max_retries)
            .field("cache", &self.cache_stats())
            .field("trust_cache", &self.trust_cache)
            .finish()
    }
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Repository {
            store: self.store.clone(),
            snapshots: self.snapshots.as_ref().map(|s| Snapshots {
                store: s.store.clone(),
                every: s.every,
                encode: s.encode,
                decode: s.decode,
            }),
            cache: self.cache.clone(),
            trust_cache: self.trust_cache,
            max_retries: self.max_retries,
            _aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> Repository<A> {
    /// The default number of reloads after a version conflict.
    pub const DEFAULT_MAX_RETRIES: usize = 16;

    /// A repository on `store`, without snapshots.
    ///
    /// Takes the store by value: a backend (`MemoryEventStore`, `PgEventStore`) is a cheap
    /// handle, so pass `store.clone()`; an `Arc<dyn EventStore>` works as well.
    pub fn new(store: impl EventStore + 'static) -> Self {
        Repository {
            store: crate::shared::event_store(store),
            snapshots: None,
            cache: None,
            trust_cache: false,
            max_retries: Self::DEFAULT_MAX_RETRIES,
            _aggregate: PhantomData,
        }
    }

    /// Takes a snapshot every `every` events (at least 1) and loads from the latest one.
    pub fn with_snapshots(mut self, store: impl SnapshotStore + 'static, every: u64) -> Self
    where
        A: Serialize + DeserializeOwned,
    {
        self.snapshots = Some(Snapshots {
            store: crate::shared::snapshot_store(store),
            every: every.max(1),
            encode: |state| serde_json::to_vec(state).map_err(|e| Error::serialization(A::TYPE, e)),
            decode: |bytes| {
                serde_json::from_slice(bytes).map_err(|e| Error::serialization(A::TYPE, e))
            },
        });
        self
    }

    /// Keeps the state of up to `capacity` recently used aggregates in memory (with the
    /// version it reflects), so that a load reads only the events written after it: on a warm
    /// aggregate, one query that returns nothing instead of a replay of the stream (or of its
    /// tail after a snapshot). After this repository's own appends the cache takes the new
    /// state without reading. Clones of the repository share the cache.
    ///
    /// It stays correct beside other writers (other processes, other repositories): the load
    /// still reads the stream's newer events, and the append still expects the version the
    /// decision was made on, so a decision on state that went stale meanwhile fails with a
    /// conflict, and the retry reads the events it missed and decides again. When the
    /// capacity is reached, entries not used lately make room (CLOCK eviction); a capacity of
    /// 0 caches nothing.
    ///
    /// The cached state is the fold of decoded (upcast) events, as a load without the cache
    /// builds it; snapshots are still read on a miss and saved when due. Memory: `capacity`
    /// states of `A` at most.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use es_core::{Aggregate, DomainEvent, EventStore, Metadata, Repository};
    /// # use es_core::memory::MemoryEventStore;
    /// # #[derive(Debug, Default, Clone, PartialEq)] struct Count { n: u64 }
    /// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    /// # enum Ev { Added }
    /// # impl DomainEvent for Ev {}
    /// # #[derive(Debug, thiserror::Error)] #[error("never")] struct Never;
    /// # impl Aggregate for Count {
    /// #     const TYPE: &'static str = "count";
    /// #     type Command = (); type Event = Ev; type Error = Never;
    /// #     fn handle(&self, _: ()) -> Result<Vec<Ev>, Never> { Ok(vec![Ev::Added]) }
    /// #     fn apply(&mut self, _: &Ev) { self.n += 1 }
    /// # }
    /// let store = MemoryEventStore::new();
    /// let counts = Repository::<Count>::new(store.clone()).with_cache(10_000);
    /// counts.execute("a", (), Metadata::default()).await?; // a miss: reads the stream
    /// counts.execute("a", (), Metadata::default()).await?; // a hit: reads only newer events
    ///
    /// // Another writer (here a repository without the cache) appends meanwhile ...
    /// Repository::<Count>::new(store).execute("a", (), Metadata::default()).await?;
    /// // ... and the cached repository reads just that event on top of its state.
    /// let loaded = counts.load("a").await?;
    /// assert_eq!((loaded.state.n, loaded.version), (3, 3));
    /// assert_eq!(counts.cache_stats().map(|s| s.hits), Some(2));
    /// # Ok(()) }
    /// ```
    pub fn with_cache(mut self, capacity: usize) -> Self
    where
        A: Clone,
    {
        self.cache = Some(Arc::new(AggregateCache::new(capacity, A::clone)));
        self
    }

    /// [`with_cache`](Self::with_cache), and a command on a cached aggregate
    /// ([`execute`](Self::execute), [`execute_batch`](Self::execute_batch)) decides on the
    /// cached state without reading the stream first: one query fewer per command.
    ///
    /// It stays correct beside other writers, for the same reason the plain cache does: the
    /// append expects the version the decision was made on, so a decision on state another
    /// writer moved on fails with a conflict, and the retry reads the stream and decides again.
    /// A decision the store cannot check that way is made again on fresh state before it is
    /// answered: a refusal ([`CommandError::Rejected`]) and a decision to do nothing with no
    /// message riding on it. So the trade is one read saved per command on an aggregate only
    /// this repository's clones write (a service that owns its aggregates, the usual case),
    /// against a failed append and a read for each command that finds another writer's events
    /// (several instances writing the same aggregates, or a second repository with a cache of
    /// its own). [`load`](Self::load) and [`decide`](Self::decide) still read the stream.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use es_core::{Aggregate, DomainEvent, Metadata, Repository};
    /// # use es_core::memory::MemoryEventStore;
    /// # #[derive(Debug, Default, Clone, PartialEq)] struct Count { n: u64 }
    /// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    /// # enum Ev { Added }
    /// # impl DomainEvent for Ev {}
    /// # #[derive(Debug, thiserror::Error)] #[error("never")] struct Never;
    /// # impl Aggregate for Count {
    /// #     const TYPE: &'static str = "count";
    /// #     type Command = (); type Event = Ev; type Error = Never;
    /// #     fn handle(&self, _: ()) -> Result<Vec<Ev>, Never> { Ok(vec![Ev::Added]) }
    /// #     fn apply(&mut self, _: &Ev) { self.n += 1 }
    /// # }
    /// let store = MemoryEventStore::new();
    /// let counts = Repository::<Count>::new(store.clone()).with_trusted_cache(10_000);
    /// counts.execute("a", (), Metadata::default()).await?; // a miss: reads the stream
    /// counts.execute("a", (), Metadata::default()).await?; // a hit: appends at version 1
    ///
    /// // Another writer appends meanwhile ...
    /// Repository::<Count>::new(store).execute("a", (), Metadata::default()).await?;
    /// // ... so the next append at version 2 conflicts, and the retry reads version 3.
    /// let done = counts.execute("a", (), Metadata::default()).await?;
    /// assert_eq!((done.state.n, done.version), (4, 4));
    /// # Ok(()) }
    /// ```
    pub fn with_trusted_cache(mut self, capacity: usize) -> Self
    where
        A: Clone,
    {
        self = self.with_cache(capacity);
        self.trust_cache = true;
        self
    }

    /// The cached state of `stream_id`, when the cache is trusted and holds it.
    fn trusted(&self, stream_id: &StreamId) -> Option<Loaded<A>> {
        let cache = self.cache.as_ref().filter(|_| self.trust_cache)?;
        let (state, version) = cache.get(stream_id)?;
        Some(Loaded { state, version })
    }

    /// The counters of the aggregate cache, `None` without one.
    pub fn cache_stats(&self) -> Option<AggregateCacheStats> {
        self.cache.as_ref().map(|cache| cache.stats())
    }

    /// How often a conflicting command is reloaded and decided again before the conflict is
    /// returned.
    pub fn with_max_retries(mut self, max_retries: usize) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// The store under this repository.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// The stream id of aggregate `id`.
    pub fn stream_id(id: &str) -> Result<StreamId> {
        StreamId::for_aggregate(A::TYPE, id)
    }

    /// Loads aggregate `id`: its default state at version 0 when it has no events.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>> {
        let stream_id = Self::stream_id(id)?;
        self.load_stream(&stream_id).await
    }

    /// Loads aggregate `id`, `None` when it has no events.
    pub async fn find(&self, id: &str) -> Result<Option<Loaded<A>>> {
        let loaded = self.load(id).await?;
        Ok((loaded.version > 0).then_some(loaded))
    }

    /// Loads several aggregates at once, in the order of `ids`: the events of all their
    /// streams come in one [`EventStore::replay_streams`] call (one query on PostgreSQL),
    /// each stream read from its cached state or snapshot, if any. For the aggregates one
    /// unit of work decides on (an order and every product it reserves, say).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use es_core::{Aggregate, DomainEvent, EventStore, Metadata, Repository};
    /// # use es_core::memory::MemoryEventStore;
    /// # #[derive(Debug, Default, Clone, PartialEq)] struct Count { n: u64 }
    /// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    /// # enum Ev { Added }
    /// # impl DomainEvent for Ev {}
    /// # #[derive(Debug, thiserror::Error)] #[error("never")] struct Never;
    /// # impl Aggregate for Count {
    /// #     const TYPE: &'static str = "count";
    /// #     type Command = (); type Event = Ev; type Error = Never;
    /// #     fn handle(&self, _: ()) -> Result<Vec<Ev>, Never> { Ok(vec![Ev::Added]) }
    /// #     fn apply(&mut self, _: &Ev) { self.n += 1 }
    /// # }
    /// let store = MemoryEventStore::new();
    /// let counts = Repository::<Count>::new(store);
    /// counts.execute("a", (), Metadata::default()).await?;
    /// let loaded = counts.load_many(&["a", "b"]).await?;
    /// assert_eq!((loaded[0].version, loaded[1].version), (1, 0));
    /// # Ok(()) }
    /// ```
    pub async fn load_many<S: AsRef<str>>(&self, ids: &[S]) -> Result<Vec<Loaded<A>>> {
        let stream_ids = ids
            .iter()
            .map(|id| Self::stream_id(id.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let mut starts = Vec::with_capacity(stream_ids.len());
        for stream_id in &stream_ids {
            starts.push(self.start(stream_id).await);
        }
        let requests: Vec<(StreamId, u64)> = stream_ids
            .iter()
            .zip(&starts)
            .map(|(stream_id, start)| (stream_id.clone(), start.version + 1))
            .collect();
        let pages = self.store.replay_streams(&requests, FIRST_PAGE).await?;
        if pages.len() != requests.len() {
            return Err(Error::backend(
                "event store",
                format!(
                    "replay_streams answered {} lists for {} streams",
                    pages.len(),
                    requests.len()
                ),
            ));
        }
        let mut loaded = Vec::with_capacity(stream_ids.len());
        for ((stream_id, start), page) in stream_ids.iter().zip(starts).zip(pages) {
            loaded.push(self.fold_tail(stream_id, start, Some(page)).await?);
        }
        Ok(loaded)
    }

    /// The aggregates of a batch, each with whether its state was read from the store (rather
    /// than taken from the trusted cache, when `may_trust`); those not taken from the cache in
    /// one [`load_many`](Self::load_many).
    async fn load_batch(
        &self,
        streams: &[StreamId],
        may_trust: bool,
    ) -> Result<(Vec<Loaded<A>>, Vec<bool>)> {
        let mut found: Vec<Option<Loaded<A>>> = streams
            .iter()
            .map(|s| if may_trust { self.trusted(s) } else { None })
            .collect();
        let verified: Vec<bool> = found.iter().map(Option::is_none).collect();
        let missing: Vec<&str> = streams
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|(s, _)| s.entity_id())
            .collect();
        let mut read = if missing.is_empty() {
            Vec::new()
        } else {
            self.load_many(&missing).await?
        }
        .into_iter();
        for slot in &mut found {
            if slot.is_none() {
                *slot = read.next();
            }
        }
        let loaded = found
            .into_iter()
            .map(|f| f.ok_or_else(|| Error::backend("event store", "a batch load came back short")))
            .collect::<Result<Vec<_>>>()?;
        Ok((loaded, verified))
    }

    async fn load_stream(&self, stream_id: &StreamId) -> Result<Loaded<A>> {
        let start = self.start(stream_id).await;
        self.fold_tail(stream_id, start, None).await
    }

    /// Where a load starts: the cached state, else the latest usable snapshot, else nothing.
    async fn start(&self, stream_id: &StreamId) -> Loaded<A> {
        if let Some((state, version)) = self.cache.as_ref().and_then(|c| c.get(stream_id)) {
            return Loaded { state, version };
        }
        let mut loaded = Loaded {
            state: A::default(),
            version: 0,
        };
        if let Some(snapshots) = &self.snapshots {
            match snapshots.store.load(stream_id).await {
                Ok(Some(snapshot)) if snapshot.schema_version == A::SNAPSHOT_VERSION => {
                    match (snapshots.decode)(&snapshot.payload) {
                        Ok(state) => {
                            loaded = Loaded {
                                state,
                                version: snapshot.version,
                            }
                        }
                        Err(error) => {
                            tracing::warn!(stream = %stream_id, %error, "ignoring an undecodable snapshot")
                        }
                    }
                }
                Ok(_) => {}
                // Snapshots only save time: without one, replay the whole stream.
                Err(error) => {
                    tracing::warn!(stream = %stream_id, %error, "snapshot store failed; replaying the stream")
                }
            }
        }
        loaded
    }

    /// Folds the stream's events after `loaded` into it (starting with `first_page` when the
    /// caller already read it, with a limit of [`FIRST_PAGE`]), and caches the result.
    ///
    /// A long stream comes in pages, and each page after a full one is read while the one
    /// before it is folded (see [`fold_page`]): read one after the other, the store would idle
    /// while the page is folded and the fold would wait while the store reads the next. The
    /// pages double from [`FIRST_PAGE`] to [`PAGE`].
    async fn fold_tail(
        &self,
        stream_id: &StreamId,
        mut loaded: Loaded<A>,
        first_page: Option<Vec<ReplayedEvent>>,
    ) -> Result<Loaded<A>> {
        let mut page = match first_page {
            Some(page) => page,
            None => {
                self.store
                    .replay_stream(stream_id, loaded.version + 1, FIRST_PAGE)
                    .await?
            }
        };
        let mut limit = FIRST_PAGE;
        loop {
            let next_from = match page.last() {
                Some(last) if page.len() >= limit => last.stream_version + 1,
                _ => {
                    fold_page(&mut loaded, &page, false).await?;
                    break;
                }
            };
            // Twice the page being folded: read beside the fold, it is ready about when the
            // fold is done (a page of the largest size at once kept the fold waiting for most
            // of it), and the pages grow to `PAGE` in a few reads.
            limit = (limit * 2).min(PAGE);
            let next = self.store.replay_stream(stream_id, next_from, limit);
            // A page that fails to fold drops the read of the next.
            let ((), next) = tokio::try_join!(fold_page(&mut loaded, &page, true), next)?;
            page = next;
        }
        self.remember(stream_id, &loaded.state, loaded.version);
        Ok(loaded)
    }

    /// Caches `state` at `version` (a no-op without a cache, or when it holds newer).
    fn remember(&self, stream_id: &StreamId, state: &A, version: u64) {
        if let Some(cache) = &self.cache {
            cache.put(stream_id, state, version);
        }
    }

    /// Carries out `command` on aggregate `id`, retrying on a conflict.
    ///
    /// `context` is either plain [`Metadata`] for the events, or a [`CommandContext`] that also
    /// records the message being handled ([`CommandContext::caused_by`]) in the same commit, so
    /// that a redelivered message finds it and changes nothing.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use es_core::{Aggregate, CommandContext, DomainEvent, EventStore, Metadata, Repository};
    /// # use es_core::memory::MemoryEventStore;
    /// # #[derive(Debug, Default, Clone)] struct Count { n: u64 }
    /// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)] enum Counted { One }
    /// # impl DomainEvent for Counted {}
    /// # #[derive(Debug, thiserror::Error)] #[error("never")] struct Never;
    /// # impl Aggregate for Count {
    /// #     const TYPE: &'static str = "count";
    /// #     type Command = (); type Event = Counted; type Error = Never;
    /// #     fn handle(&self, _: ()) -> Result<Vec<Counted>, Never> { Ok(vec![Counted::One]) }
    /// #     fn apply(&mut self, _: &Counted) { self.n += 1 }
    /// # }
    /// let store = MemoryEventStore::new();
    /// let counts = Repository::<Count>::new(store.clone());
    /// // From an HTTP request: metadata alone.
    /// counts.execute("a", (), Metadata::default()).await?;
    /// // From a message: the inbox entry commits with the events, so a redelivery is skipped.
    /// # let message = store.read_stream(&Repository::<Count>::stream_id("a")?, 1, 1).await?.remove(0);
    /// let first = counts.execute("a", (), CommandContext::caused_by(&message, "counter")).await?;
    /// let again = counts.execute("a", (), CommandContext::caused_by(&message, "counter")).await?;
    /// assert!(!first.already_handled && again.already_handled);
    /// assert_eq!(counts.load("a").await?.state.n, 2);
    /// # Ok(()) }
    /// ```
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
        context: impl Into<CommandContext>,
    ) -> Result<Executed<A>, CommandError<A::Error>>
    where
        A::Command: Clone,
    {
        let context = context.into();
        let stream_id = Self::stream_id(id)?;
        let mut attempt = 0;
        let mut contention = Contention::new();
        // Only the first decision may rest on the trusted cache; after it, the stream is read.
        let mut may_trust = true;
        loop {
            let trusted = if may_trust {
                self.trusted(&stream_id)
            } else {
                None
            };
            may_trust = false;
            let verified = trusted.is_none();
            let Loaded { mut state, version } = match trusted {
                Some(loaded) => loaded,
                None => self.load_stream(&stream_id).await?,
            };
            let events = match state.handle(command.clone()) {
                Ok(events) => events,
                // A refusal the store cannot check: decide again on what the stream holds.
                Err(_) if !verified => continue,
                Err(refused) => return Err(CommandError::Rejected(refused)),
            };
            // Nothing to commit, so nothing to check the version: the same.
            if events.is_empty() && context.inbox.is_none() && !verified {
                continue;
            }
            if events.is_empty() && context.inbox.is_none() {
                return Ok(Executed {
                    state,
                    version,
                    events,
                    already_handled: false,
                });
            }
            let new_events = events
                .iter()
                .map(|event| NewEvent::from_domain(event, context.metadata.clone()))
                .collect::<Result<Vec<_>>>()?;
            let unit = UnitOfWork {
                appends: vec![StreamAppend::new(
                    stream_id.clone(),
                    ExpectedVersion::Exact(version),
                    new_events,
                )],
                inbox: context.inbox.iter().cloned().collect(),
                checkpoint: None,
            };
            match self.store.commit(unit).await {
                Ok(CommitOutcome::Committed(results)) => {
                    let new_version = results.first().map_or(version, |r| r.next_expected_version);
                    for event in &events {
                        state.apply(event);
                    }
                    // The append expected `version`, so this is the stream's state now: no
                    // read needed to keep the cache warm.
                    self.remember(&stream_id, &state, new_version);
                    self.maybe_snapshot(&stream_id, &state, version, new_version)
                        .await;
                    return Ok(Executed {
                        state,
                        version: new_version,
                        events,
                        already_handled: false,
                    });
                }
                Ok(CommitOutcome::AlreadyHandled) => {
                    let Loaded { state, version } = self.load_stream(&stream_id).await?;
                    return Ok(Executed {
                        state,
                        version,
                        events: Vec::new(),
                        already_handled: true,
                    });
                }
                // Stale cached state is no race: read and decide again, with no retry spent.
                Err(error) if error.is_conflict() && !verified => {
                    tracing::debug!(stream = %stream_id, "the cached state was stale; deciding again");
                }
                Err(error) if error.is_conflict() && attempt < self.max_retries => {
                    attempt += 1;
                    tracing::debug!(stream = %stream_id, attempt, "version conflict; deciding again");
                    contention.wait(attempt).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Carries out several commands, each within its context, in one [`UnitOfWork`]: a batched
    /// consumer's way to handle N messages with one commit ([`MessageHandler::handle_batch`]).
    ///
    /// The aggregates are loaded together ([`load_many`](Repository::load_many)); the commands
    /// run in order, a later command on an aggregate seeing the events of an earlier one; then
    /// one commit appends to every aggregate touched (expecting the version it was loaded at)
    /// with every context's inbox entry. A version conflict reloads and decides the whole batch
    /// again. When the store says a message was handled already, the commands are carried out
    /// one at a time instead ([`execute`](Repository::execute)), so each finds its
    /// own answer. A refused command refuses the batch and writes nothing (a batched consumer
    /// then handles its messages one at a time, and the refused one goes its own way).
    ///
    /// The answer has one [`Executed`] per command, in order: the aggregate's state and
    /// version after the whole batch, and the events that command decided.
    ///
    /// [`MessageHandler::handle_batch`]: crate::bus::MessageHandler::handle_batch
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::sync::Arc;
    /// # use es_core::{Aggregate, CommandContext, DomainEvent, EventStore, Repository};
    /// # use es_core::memory::MemoryEventStore;
    /// # #[derive(Debug, Default, Clone, PartialEq)] struct Count { n: u64 }
    /// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)] enum Ev { Added }
    /// # impl DomainEvent for Ev {}
    /// # #[derive(Debug, thiserror::Error)] #[error("never")] enum Never {}
    /// # impl Aggregate for Count {
    /// #     const TYPE: &'static str = "count";
    /// #     type Command = (); type Event = Ev; type Error = Never;
    /// #     fn handle(&self, _: ()) -> Result<Vec<Ev>, Never> { Ok(vec![Ev::Added]) }
    /// #     fn apply(&mut self, _: &Ev) { self.n += 1 }
    /// # }
    /// let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
    /// let counts = Repository::<Count>::new(store);
    /// // Three messages, two aggregates, one commit.
    /// let done = counts
    ///     .execute_batch(vec![
    ///         ("a", (), CommandContext::default()),
    ///         ("b", (), CommandContext::default()),
    ///         ("a", (), CommandContext::default()),
    ///     ])
    ///     .await?;
    /// assert_eq!((done[0].version, done[1].version, done[2].version), (2, 1, 2));
    /// assert_eq!(counts.load("a").await?.state.n, 2);
    /// # Ok(()) }
    /// ```
    pub async fn execute_batch<S: AsRef<str>>(
        &self,
        commands: Vec<(S, A::Command, CommandContext)>,
    ) -> Result<Vec<Executed<A>>, CommandError<A::Error>>
    where
        A: Clone,
        A::Command: Clone,
    {
        let ids: Vec<StreamId> = commands
            .iter()
            .map(|(id, _, _)| Self::stream_id(id.as_ref()))
            .collect::<Result<_>>()?;
        // Each aggregate once, in first-seen order; `slot[i]` is command i's aggregate.
        let mut distinct: Vec<StreamId> = Vec::new();
        let mut slot = Vec::with_capacity(ids.len());
        for id in &ids {
            match distinct.iter().position(|d| d == id) {
                Some(i) => slot.push(i),
                None => {
                    slot.push(distinct.len());
                    distinct.push(id.clone());
                }
            }
        }
        let mut attempt = 0;
        let mut contention = Contention::new();
        let mut may_trust = true;
        'decide: loop {
            let (loaded, verified) = self.load_batch(&distinct, may_trust).await?;
            may_trust = false;
            let base: Vec<u64> = loaded.iter().map(|l| l.version).collect();
            let mut states: Vec<A> = loaded.into_iter().map(|l| l.state).collect();
            let mut appends: Vec<Vec<NewEvent>> = vec![Vec::new(); distinct.len()];
            let mut decided: Vec<Vec<A::Event>> = Vec::with_capacity(commands.len());
            for ((_, command, context), &i) in commands.iter().zip(&slot) {
                let events = match states[i].handle(command.clone()) {
                    Ok(events) => events,
                    // As `execute`: a refusal on a trusted state is made again on fresh ones.
                    Err(_) if verified.iter().any(|v| !v) => continue 'decide,
                    Err(refused) => return Err(CommandError::Rejected(refused)),
                };
                for event in &events {
                    appends[i].push(NewEvent::from_domain(event, context.metadata.clone())?);
                    states[i].apply(event);
                }
                decided.push(events);
            }
            // As `execute`: an aggregate that decided nothing is still checked at its
            // version when a message rides on it (its inbox entry commits a decision made on
            // that state), and left out otherwise.
            let mut checked = vec![false; distinct.len()];
            for ((_, _, context), &i) in commands.iter().zip(&slot) {
                checked[i] |= context.inbox.is_some();
            }
            // One left out on a trusted state goes unchecked: decide again on fresh ones.
            if (0..distinct.len()).any(|i| appends[i].is_empty() && !checked[i] && !verified[i]) {
                continue 'decide;
            }
            let mut versions = base.clone();
            let mut written = Vec::new();
            let mut unit = UnitOfWork::new();
            for (i, events) in appends.into_iter().enumerate() {
                if !events.is_empty() || checked[i] {
                    written.push(i);
                    unit = unit.append(StreamAppend::new(
                        distinct[i].clone(),
                        ExpectedVersion::Exact(base[i]),
                        events,
                    ));
                }
            }
            unit.inbox = commands
                .iter()
                .filter_map(|(_, _, context)| context.inbox.clone())
                .collect();
            let outcome = if unit.appends.is_empty() && unit.inbox.is_empty() {
                Ok(CommitOutcome::Committed(Vec::new()))
            } else {
                self.store.commit(unit).await
            };
            match outcome {
                Ok(CommitOutcome::Committed(results)) => {
                    for (&i, result) in written.iter().zip(&results) {
                        versions[i] = result.next_expected_version;
                    }
                    for (i, id) in distinct.iter().enumerate() {
                        self.remember(id, &states[i], versions[i]);
                        self.maybe_snapshot(id, &states[i], base[i], versions[i])
                            .await;
                    }
                    return Ok(decided
                        .into_iter()
                        .zip(&slot)
                        .map(|(events, &i)| Executed {
                            state: states[i].clone(),
                            version: versions[i],
                            events,
                            already_handled: false,
                        })
                        .collect());
                }
                Ok(CommitOutcome::AlreadyHandled) => {
                    tracing::debug!(
                        size = commands.len(),
                        "a message of the batch was handled before; one at a time"
                    );
                    let mut executed = Vec::with_capacity(commands.len());
                    for (id, command, context) in commands {
                        executed.push(self.execute(id.as_ref(), command, context).await?);
                    }
                    return Ok(executed);
                }
                Err(error) if error.is_conflict() && verified.iter().any(|v| !v) => {
                    tracing::debug!("a cached state of the batch was stale; deciding again");
                }
                Err(error) if error.is_conflict() && attempt < self.max_retries => {
                    attempt += 1;
                    contention.wait(attempt).await;
                    tracing::debug!(attempt, "version conflict in a batch; deciding again");
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Decides `command` on aggregate `id` without committing: the append to put in a
    /// [`UnitOfWork`] beside other streams' appends (e.g. an order's reservation and every
    /// product it holds, all or nothing). On a conflict, decide again on fresh state.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use es_core::{Aggregate, DomainEvent, EventStore, Metadata, Repository, UnitOfWork};
    /// # use es_core::memory::MemoryEventStore;
    /// # #[derive(Debug, Default, Clone, PartialEq)] struct Stock { left: u64 }
    /// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    /// # enum StockEvent { Added(u64), Taken(u64) }
    /// # impl DomainEvent for StockEvent {}
    /// # #[derive(Debug, Clone, PartialEq, thiserror::Error)] #[error("too few")] struct TooFew;
    /// # impl Aggregate for Stock {
    /// #     const TYPE: &'static str = "stock";
    /// #     type Command = i64; type Event = StockEvent; type Error = TooFew;
    /// #     fn handle(&self, n: i64) -> Result<Vec<StockEvent>, TooFew> {
    /// #         if n >= 0 { return Ok(vec![StockEvent::Added(n as u64)]) }
    /// #         if self.left < n.unsigned_abs() { Err(TooFew) } else { Ok(vec![StockEvent::Taken(n.unsigned_abs())]) }
    /// #     }
    /// #     fn apply(&mut self, e: &StockEvent) { match e { StockEvent::Added(n) => self.left += n, StockEvent::Taken(n) => self.left -= n } }
    /// # }
    /// let store = MemoryEventStore::new();
    /// let stock = Repository::<Stock>::new(store.clone());
    /// stock.execute("a", 5, Metadata::default()).await?;
    /// stock.execute("b", 1, Metadata::default()).await?;
    /// // Take 2 of `a` and 2 of `b` together, or neither.
    /// let a = stock.decide("a", -2, Metadata::default()).await?;
    /// let b = stock.decide("b", -2, Metadata::default()).await?;
    /// assert!(!a.is_rejected() && b.is_rejected());
    /// if !b.is_rejected() {
    ///     store.commit(UnitOfWork::new().append(a.append).append(b.append)).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn decide(
        &self,
        id: &str,
        command: A::Command,
        metadata: Metadata,
    ) -> Result<Decision<A>> {
        let stream_id = Self::stream_id(id)?;
        let loaded = self.load_stream(&stream_id).await?;
        Self::decide_on(stream_id, loaded, command, &metadata)
    }

    /// [`decide`](Repository::decide) for several aggregates of one unit of work, loaded
    /// together by [`load_many`](Repository::load_many) (one store call): one decision per
    /// `(id, command)`, in order. Commit the appends of those you keep in one [`UnitOfWork`]
    /// (it refuses a stream twice: give each aggregate once).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use es_core::{Aggregate, DomainEvent, EventStore, Metadata, Repository, UnitOfWork};
    /// # use es_core::memory::MemoryEventStore;
    /// # #[derive(Debug, Default, Clone, PartialEq)] struct Stock { left: u64 }
    /// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    /// # enum StockEvent { Added(u64), Taken(u64) }
    /// # impl DomainEvent for StockEvent {}
    /// # #[derive(Debug, Clone, PartialEq, thiserror::Error)] #[error("too few")] struct TooFew;
    /// # impl Aggregate for Stock {
    /// #     const TYPE: &'static str = "stock";
    /// #     type Command = i64; type Event = StockEvent; type Error = TooFew;
    /// #     fn handle(&self, n: i64) -> Result<Vec<StockEvent>, TooFew> {
    /// #         if n >= 0 { return Ok(vec![StockEvent::Added(n as u64)]) }
    /// #         if self.left < n.unsigned_abs() { Err(TooFew) } else { Ok(vec![StockEvent::Taken(n.unsigned_abs())]) }
    /// #     }
    /// #     fn apply(&mut self, e: &StockEvent) { match e { StockEvent::Added(n) => self.left += n, StockEvent::Taken(n) => self.left -= n } }
    /// # }
    /// let store = MemoryEventStore::new();
    /// let stock = Repository::<Stock>::new(store.clone()).with_cache(1_000);
    /// stock.execute("a", 5, Metadata::default()).await?;
    /// stock.execute("b", 3, Metadata::default()).await?;
    /// let decisions = stock.decide_many(vec![("a", -2), ("b", -2)], Metadata::default()).await?;
    /// assert!(decisions.iter().all(|d| !d.is_rejected()));
    /// let unit = decisions.iter().fold(UnitOfWork::new(), |unit, d| unit.append(d.append.clone()));
    /// store.commit(unit).await?;
    /// for decision in decisions {
    ///     stock.committed(decision).await;
    /// }
    /// assert_eq!(stock.load("b").await?.state.left, 1);
    /// # Ok(()) }
    /// ```
    pub async fn decide_many<S: AsRef<str>>(
        &self,
        commands: Vec<(S, A::Command)>,
        metadata: Metadata,
    ) -> Result<Vec<Decision<A>>> {
        let ids: Vec<&str> = commands.iter().map(|(id, _)| id.as_ref()).collect();
        let loaded = self.load_many(&ids).await?;
        let mut decisions = Vec::with_capacity(loaded.len());
        for ((id, command), loaded) in commands.into_iter().zip(loaded) {
            let stream_id = Self::stream_id(id.as_ref())?;
            decisions.push(Self::decide_on(stream_id, loaded, command, &metadata)?);
        }
        Ok(decisions)
    }

    fn decide_on(
        stream_id: StreamId,
        loaded: Loaded<A>,
        command: A::Command,
        metadata: &Metadata,
    ) -> Result<Decision<A>> {
        let Loaded { state, version } = loaded;
        let outcome = state.handle(command);
        let events = match &outcome {
            Ok(events) => events
                .iter()
                .map(|event| NewEvent::from_domain(event, metadata.clone()))
                .collect::<Result<Vec<_>>>()?,
            Err(_) => Vec::new(),
        };
        Ok(Decision {
            append: StreamAppend::new(stream_id, ExpectedVersion::Exact(version), events),
            outcome,
            state,
            version,
        })
    }

    /// After `decision`'s append committed (in a unit of work of the caller's): the state with
    /// its events applied at the new version, and a snapshot saved when one is due, as
    /// [`execute`](Repository::execute) does after its own commits.
    pub async fn committed(&self, decision: Decision<A>) -> Loaded<A> {
        let Decision {
            append,
            outcome,
            mut state,
            version,
        } = decision;
        let events = outcome.unwrap_or_default();
        for event in &events {
            state.apply(event);
        }
        let new_version = version + events.len() as u64;
        self.after_commit(&append.stream_id, &state, version, new_version)
            .await;
        Loaded {
            state,
            version: new_version,
        }
    }

    /// After a commit of the caller's moved `stream_id` from `before` to `after`, leaving
    /// `state`: the cache keeps it and a snapshot is saved when one is due.
    pub(crate) async fn after_commit(
        &self,
        stream_id: &StreamId,
        state: &A,
        before: u64,
        after: u64,
    ) {
        self.remember(stream_id, state, after);
        self.maybe_snapshot(stream_id, state, before, after).await;
    }

    async fn maybe_snapshot(&self, stream_id: &StreamId, state: &A, before: u64, after: u64) {
        let Some(snapshots) = &self.snapshots else {
            return;
        };
        if after / snapshots.every == before / snapshots.every {
            return;
        }
        let payload = match (snapshots.encode)(state) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::warn!(stream = %stream_id, %error, "cannot serialize a snapshot");
                return;
            }
        };
        let snapshot = Snapshot {
            stream_id: stream_id.clone(),
            version: after,
            schema_version: A::SNAPSHOT_VERSION,
            payload: payload.into(),
            taken_at: Utc::now(),
        };
        // A lost snapshot costs a longer replay, never correctness.
        if let Err(error) = snapshots.store.save(snapshot).await {
            tracing::warn!(stream = %stream_id, %error, "cannot save a snapshot");
        }
    }
}
