//! Commands over several aggregates: load them into a [`Workspace`], decide over them
//! together, commit every change in one unit of work with the message's inbox entry, and
//! decide again on a version conflict ([`MultiCommand`]).

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::aggregate::Aggregate;
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::event::{Metadata, NewEvent};
use crate::repository::{CommandContext, CommandError, Repository};
use crate::store::{CommitOutcome, EventStore, InboxEntry, StreamAppend, UnitOfWork};
use crate::stream::{ExpectedVersion, StreamId};

/// Carries out a command that reads and changes several aggregates, of one type or of several,
/// all or nothing.
///
/// [`run`](MultiCommand::run) hands a decide closure a fresh [`Workspace`]; the closure loads
/// the aggregates it needs (also ones it only learns of from another's state), decides, and
/// records events on them. Then one commit appends to every aggregate the workspace loaded,
/// each expecting the version it was loaded at — also those the closure only read, so a
/// decision never stands on state another writer changed meanwhile — together with the
/// context's inbox entry. When another writer got there first, the closure runs again on fresh
/// state after a jittered wait, up to [`with_max_retries`](MultiCommand::with_max_retries)
/// times.
///
/// The closure takes the workspace by value and gives it back with its answer. It runs once
/// per attempt, so its `async move` block takes references to what it uses from around it
/// (`let accounts = &accounts;`), not the values themselves:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use es_core::memory::MemoryEventStore;
/// use es_core::{Aggregate, CommandContext, DomainEvent, Metadata, MultiCommand, Repository};
/// # #[derive(Debug, Default, Clone)] struct Account { balance: u64 }
/// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
/// # enum Moved { In(u64), Out(u64) }
/// # impl DomainEvent for Moved {}
/// # #[derive(Debug, thiserror::Error)] #[error("insufficient funds")] struct Insufficient;
/// # impl Aggregate for Account {
/// #     const TYPE: &'static str = "account";
/// #     type Command = i64; type Event = Moved; type Error = Insufficient;
/// #     fn handle(&self, amount: i64) -> Result<Vec<Moved>, Insufficient> {
/// #         if amount >= 0 { return Ok(vec![Moved::In(amount as u64)]) }
/// #         if self.balance < amount.unsigned_abs() { return Err(Insufficient) }
/// #         Ok(vec![Moved::Out(amount.unsigned_abs())])
/// #     }
/// #     fn apply(&mut self, event: &Moved) {
/// #         match event { Moved::In(n) => self.balance += n, Moved::Out(n) => self.balance -= n }
/// #     }
/// # }
/// let store = MemoryEventStore::new();
/// let accounts = Repository::<Account>::new(store.clone());
/// accounts.execute("alice", 100, Metadata::default()).await?;
///
/// // Move 30 from alice to bob: both change, or neither.
/// let transfer = MultiCommand::new(store.clone());
/// let accounts = &accounts;
/// let done = transfer
///     .run(Metadata::default(), |mut work| async move {
///         let from = work.load(accounts, "alice").await?;
///         let to = work.load(accounts, "bob").await?;
///         work.execute(from, -30)?;
///         work.execute(to, 30)?;
///         let left = work.state(from).balance;
///         Ok::<_, es_core::CommandError<Insufficient>>((work, left))
///     })
///     .await?;
/// assert_eq!(done.value, 70);
/// assert_eq!(accounts.load("bob").await?.state.balance, 30);
///
/// // Refused: nothing is written.
/// let refused = transfer
///     .run(Metadata::default(), |mut work| async move {
///         let from = work.load(accounts, "bob").await?;
///         work.execute(from, -31)?;
///         Ok::<_, es_core::CommandError<Insufficient>>((work, ()))
///     })
///     .await;
/// assert!(matches!(refused, Err(es_core::CommandError::Rejected(Insufficient))));
/// assert_eq!(accounts.load("bob").await?.state.balance, 30);
/// # Ok(()) }
/// ```
///
/// A consumer passes [`CommandContext::caused_by`] as the context: the message's inbox entry
/// commits with the events, and a redelivery finds it, writes nothing and answers
/// [`Done::already_handled`]. A batch of messages adds one entry per message with
/// [`Workspace::handled`].
#[derive(Clone)]
pub struct MultiCommand {
    store: Arc<dyn EventStore>,
    max_retries: usize,
    backoff: (Duration, Duration),
}

impl fmt::Debug for MultiCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiCommand")
            .field("max_retries", &self.max_retries)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

/// What [`MultiCommand::run`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Done<T> {
    /// What the decide closure answered on the attempt that counted.
    pub value: T,
    /// `true` when the inbox said the message behind the command had already been handled:
    /// nothing was written.
    pub already_handled: bool,
    /// How many times the closure ran (1 when no conflict got in the way).
    pub attempts: usize,
}

impl MultiCommand {
    /// The default number of attempts again after a version conflict.
    pub const DEFAULT_MAX_RETRIES: usize = 16;

    /// Multi-aggregate commands on `store`, with the default retries and waits (from 1 ms,
    /// doubling up to 100 ms, each drawn between half and all of that).
    ///
    /// Takes the store by value, as [`Repository::new`] does; give it the store the
    /// repositories of the aggregates use.
    pub fn new(store: impl EventStore + 'static) -> Self {
        MultiCommand {
            store: crate::shared::event_store(store),
            max_retries: Self::DEFAULT_MAX_RETRIES,
            backoff: (Duration::from_millis(1), Duration::from_millis(100)),
        }
    }

    /// How many times to decide again after a version conflict before giving up with
    /// [`Error::Conflict`].
    pub fn with_max_retries(mut self, max_retries: usize) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// The wait before deciding again: from about `initial`, doubling up to `max`, with
    /// jitter ([`Backoff`]), so contenders that conflicted together do not retry together.
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = (initial, max);
        self
    }

    /// Runs `decide` on a fresh [`Workspace`] and commits what it recorded, deciding again on
    /// a conflict.
    ///
    /// `decide` answers the workspace and a value of its own, or an error that ends the run
    /// with nothing written: a refusal ([`CommandError::Rejected`] through `?` on
    /// [`Workspace::execute`]), or anything the caller's error type `E` holds. The store's
    /// errors become `E` through `From<Error>`; a conflict that outlasts the retries is
    /// [`Error::Conflict`].
    ///
    /// When `decide` recorded no event and the context has no inbox entry there is nothing
    /// to write, and nothing is committed.
    pub async fn run<T, E, F, Fut>(
        &self,
        context: impl Into<CommandContext>,
        mut decide: F,
    ) -> std::result::Result<Done<T>, E>
    where
        F: FnMut(Workspace) -> Fut,
        Fut: Future<Output = std::result::Result<(Workspace, T), E>>,
        E: From<Error>,
    {
        let context = context.into();
        let mut backoff = Backoff::new(self.backoff.0, self.backoff.1);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (workspace, value) = decide(Workspace::new(context.clone())).await?;
            match self.commit(workspace).await {
                Ok(already_handled) => {
                    return Ok(Done {
                        value,
                        already_handled,
                        attempts,
                    })
                }
                Err(error) if error.is_conflict() && attempts <= self.max_retries => {
                    tracing::debug!(attempts, %error, "version conflict; deciding again");
                    backoff.sleep().await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Commits the workspace; `Ok(true)` when its inbox entry was there already.
    async fn commit(&self, workspace: Workspace) -> Result<bool> {
        let Workspace { entries, inbox, .. } = workspace;
        if inbox.is_empty() && entries.iter().all(|entry| !entry.changed()) {
            return Ok(false);
        }
        let unit = UnitOfWork {
            appends: entries.iter().map(|entry| entry.append()).collect(),
            inbox,
            checkpoint: None,
        };
        match self.store.commit(unit).await? {
            CommitOutcome::Committed(_) => {
                // Every append expected the version it was loaded at, so each state is the
                // stream's state now: the repositories' caches take it without a read.
                for entry in entries {
                    entry.committed().await;
                }
                Ok(false)
            }
            CommitOutcome::AlreadyHandled => Ok(true),
        }
    }
}

/// An aggregate loaded into a [`Workspace`]: a typed place to read its state and record its
/// events. Only good with the workspace that made it.
pub struct Slot<A> {
    workspace: u64,
    index: usize,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A> Clone for Slot<A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A> Copy for Slot<A> {}

impl<A> PartialEq for Slot<A> {
    fn eq(&self, other: &Self) -> bool {
        self.workspace == other.workspace && self.index == other.index
    }
}

impl<A> Eq for Slot<A> {}

impl<A> fmt::Debug for Slot<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Slot({}#{})", std::any::type_name::<A>(), self.index)
    }
}

/// One attempt of a [`MultiCommand`]: the aggregates it loaded, the events recorded on them,
/// and the inbox entries to commit with them.
///
/// Loading a stream twice gives the same [`Slot`], so a batch that touches an aggregate from
/// several messages decides each on what the earlier ones recorded.
pub struct Workspace {
    id: u64,
    entries: Vec<Box<dyn Staged>>,
    streams: HashMap<StreamId, usize>,
    metadata: Metadata,
    inbox: Vec<InboxEntry>,
}

impl fmt::Debug for Workspace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let loaded: Vec<(&StreamId, usize)> = self
            .entries
            .iter()
            .map(|entry| (entry.stream(), entry.recorded()))
            .collect();
        f.debug_struct("Workspace")
            .field("loaded", &loaded)
            .field("inbox", &self.inbox)
            .finish_non_exhaustive()
    }
}

static WORKSPACES: AtomicU64 = AtomicU64::new(0);

impl Workspace {
    fn new(context: CommandContext) -> Self {
        Workspace {
            id: WORKSPACES.fetch_add(1, Ordering::Relaxed),
            entries: Vec::new(),
            streams: HashMap::new(),
            metadata: context.metadata,
            inbox: context.inbox.into_iter().collect(),
        }
    }

    /// Loads aggregate `id` through `repository` (its cache and snapshots), or gives the slot
    /// it already has.
    pub async fn load<A: Aggregate>(
        &mut self,
        repository: &Repository<A>,
        id: &str,
    ) -> Result<Slot<A>> {
        let stream = Repository::<A>::stream_id(id)?;
        if let Some(slot) = self.find::<A>(&stream)? {
            return Ok(slot);
        }
        let loaded = repository.load(id).await?;
        Ok(self.insert(repository, stream, loaded.state, loaded.version))
    }

    /// Loads several aggregates of one type, those not loaded yet in one store call
    /// ([`Repository::load_many`]); one slot per id, in order.
    pub async fn load_many<A: Aggregate, S: AsRef<str>>(
        &mut self,
        repository: &Repository<A>,
        ids: &[S],
    ) -> Result<Vec<Slot<A>>> {
        let mut missing: Vec<(&str, StreamId)> = Vec::new();
        for id in ids {
            let stream = Repository::<A>::stream_id(id.as_ref())?;
            if self.find::<A>(&stream)?.is_none()
                && !missing.iter().any(|(_, known)| *known == stream)
            {
                missing.push((id.as_ref(), stream));
            }
        }
        let names: Vec<&str> = missing.iter().map(|(id, _)| *id).collect();
        let loaded = repository.load_many(&names).await?;
        for ((_, stream), loaded) in missing.into_iter().zip(loaded) {
            self.insert(repository, stream, loaded.state, loaded.version);
        }
        ids.iter()
            .map(|id| {
                let stream = Repository::<A>::stream_id(id.as_ref())?;
                Ok(self.find::<A>(&stream)?.expect("loaded just above"))
            })
            .collect()
    }

    /// The aggregate's state: as loaded, with every event recorded on it since applied.
    pub fn state<A: Aggregate>(&self, slot: Slot<A>) -> &A {
        &self.entry(slot).state
    }

    /// The stream version the aggregate was loaded at (0: a new aggregate); the commit
    /// expects it.
    pub fn version<A: Aggregate>(&self, slot: Slot<A>) -> u64 {
        self.entry(slot).version
    }

    /// Every event recorded on the aggregate in this workspace, in order.
    pub fn events<A: Aggregate>(&self, slot: Slot<A>) -> &[A::Event] {
        &self.entry(slot).events
    }

    /// Lets the aggregate decide `command` on its current state and records the events; a
    /// refusal records nothing. Answers the events it recorded.
    pub fn execute<A: Aggregate>(
        &mut self,
        slot: Slot<A>,
        command: A::Command,
    ) -> std::result::Result<&[A::Event], CommandError<A::Error>> {
        let events = self
            .entry(slot)
            .state
            .handle(command)
            .map_err(CommandError::Rejected)?;
        Ok(self.record(slot, events)?)
    }

    /// Records events decided elsewhere (on [`state`](Workspace::state), say, when a decision
    /// must first see that every part of it succeeds), applying each to the state. Answers
    /// the events it recorded.
    pub fn record<A: Aggregate>(
        &mut self,
        slot: Slot<A>,
        events: Vec<A::Event>,
    ) -> Result<&[A::Event]> {
        let metadata = &self.metadata;
        let entry = Self::entry_mut(&mut self.entries, self.id, slot);
        let start = entry.events.len();
        for event in events {
            entry
                .written
                .push(NewEvent::from_domain(&event, metadata.clone())?);
            entry.state.apply(&event);
            entry.events.push(event);
        }
        Ok(&entry.events[start..])
    }

    /// The metadata given to the events recorded from now on (at first the context's): a
    /// batch sets each message's before deciding on it.
    pub fn set_metadata(&mut self, metadata: Metadata) {
        self.metadata = metadata;
    }

    /// Commits `entry` with the changes as well: a batch adds one per message. If any of the
    /// entries was committed before, nothing is written and the run answers
    /// [`Done::already_handled`].
    pub fn handled(&mut self, entry: InboxEntry) {
        self.inbox.push(entry);
    }

    fn find<A: Aggregate>(&self, stream: &StreamId) -> Result<Option<Slot<A>>> {
        let Some(&index) = self.streams.get(stream) else {
            return Ok(None);
        };
        if !self.entries[index].as_any().is::<Entry<A>>() {
            return Err(Error::InvalidInput(format!(
                "stream {stream} is loaded in this workspace as another aggregate type"
            )));
        }
        Ok(Some(self.slot(index)))
    }

    fn insert<A: Aggregate>(
        &mut self,
        repository: &Repository<A>,
        stream: StreamId,
        state: A,
        version: u64,
    ) -> Slot<A> {
        let index = self.entries.len();
        self.streams.insert(stream.clone(), index);
        self.entries.push(Box::new(Entry {
            repository: repository.clone(),
            stream,
            version,
            state,
            events: Vec::new(),
            written: Vec::new(),
        }));
        self.slot(index)
    }

    fn slot<A>(&self, index: usize) -> Slot<A> {
        Slot {
            workspace: self.id,
            index,
            _aggregate: PhantomData,
        }
    }

    fn entry<A: Aggregate>(&self, slot: Slot<A>) -> &Entry<A> {
        assert_eq!(
            slot.workspace, self.id,
            "a Slot is only good with the Workspace that loaded it"
        );
        self.entries[slot.index]
            .as_any()
            .downcast_ref()
            .expect("a slot's type is its entry's")
    }

    fn entry_mut<A: Aggregate>(
        entries: &mut [Box<dyn Staged>],
        id: u64,
        slot: Slot<A>,
    ) -> &mut Entry<A> {
        assert_eq!(
            slot.workspace, id,
            "a Slot is only good with the Workspace that loaded it"
        );
        entries[slot.index]
            .as_any_mut()
            .downcast_mut()
            .expect("a slot's type is its entry's")
    }
}

/// One loaded aggregate and what the workspace recorded on it.
struct Entry<A: Aggregate> {
    repository: Repository<A>,
    stream: StreamId,
    version: u64,
    state: A,
    events: Vec<A::Event>,
    written: Vec<NewEvent>,
}

/// An [`Entry`] of any aggregate type, as the commit sees it.
trait Staged: Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn stream(&self) -> &StreamId;
    fn recorded(&self) -> usize;
    fn changed(&self) -> bool {
        self.recorded() > 0
    }
    /// Its events, expecting the version it was loaded at (none: a check that it did not move).
    fn append(&self) -> StreamAppend;
    /// After the commit: the repository's cache and snapshots learn the new state.
    fn committed(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

impl<A: Aggregate> Staged for Entry<A> {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn stream(&self) -> &StreamId {
        &self.stream
    }

    fn recorded(&self) -> usize {
        self.events.len()
    }

    fn append(&self) -> StreamAppend {
        StreamAppend::new(
            self.stream.clone(),
            ExpectedVersion::Exact(self.version),
            self.written.clone(),
        )
    }

    fn committed(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let after = self.version + self.events.len() as u64;
            self.repository
                .after_commit(&self.stream, &self.state, self.version, after)
                .await;
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::event::DomainEvent;
    use crate::memory::MemoryEventStore;
    use crate::store::EventStore;

    #[derive(Debug, Default, Clone, PartialEq)]
    struct Account {
        balance: u64,
    }

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Moved {
        In(u64),
        Out(u64),
    }

    impl DomainEvent for Moved {}

    #[derive(Debug, PartialEq, thiserror::Error)]
    #[error("insufficient funds")]
    struct Insufficient;

    impl Aggregate for Account {
        const TYPE: &'static str = "mcaccount";
        type Command = i64;
        type Event = Moved;
        type Error = Insufficient;

        fn handle(&self, amount: i64) -> std::result::Result<Vec<Moved>, Insufficient> {
            if amount >= 0 {
                return Ok(vec![Moved::In(amount as u64)]);
            }
            if self.balance < amount.unsigned_abs() {
                return Err(Insufficient);
            }
            Ok(vec![Moved::Out(amount.unsigned_abs())])
        }

        fn apply(&mut self, event: &Moved) {
            match event {
                Moved::In(n) => self.balance += n,
                Moved::Out(n) => self.balance -= n,
            }
        }
    }

    #[tokio::test]
    async fn loading_a_stream_twice_gives_one_slot_whose_state_carries_what_was_recorded() {
        let store = MemoryEventStore::new();
        let accounts = Repository::<Account>::new(store.clone());
        let accounts = &accounts;
        accounts
            .execute("a", 10, Metadata::default())
            .await
            .unwrap();
        let done = MultiCommand::new(store.clone())
            .run(Metadata::default(), |mut work| async move {
                let first = work.load(accounts, "a").await?;
                work.execute(first, -4)?;
                let again = work.load_many(accounts, &["b", "a", "b"]).await?;
                assert_eq!(again[1], first);
                assert_eq!(again[0], again[2]);
                assert_eq!(work.state(again[1]).balance, 6);
                work.execute(again[1], -6)?;
                work.execute(again[0], 10)?;
                Ok::<_, CommandError<Insufficient>>((work, ()))
            })
            .await
            .unwrap();
        assert_eq!(done.attempts, 1);
        assert_eq!(accounts.load("a").await.unwrap().state.balance, 0);
        assert_eq!(accounts.load("b").await.unwrap().state.balance, 10);
        let a = store
            .read_stream_to_end(&Repository::<Account>::stream_id("a").unwrap(), 0)
            .await
            .unwrap();
        assert_eq!(
            a.len(),
            3,
            "one deposit, then two withdrawals in one commit"
        );
        assert_eq!(a[1].position.commit, a[2].position.commit);
    }

    #[tokio::test]
    async fn a_read_only_aggregate_that_moved_makes_the_decision_again() {
        let store = MemoryEventStore::new();
        let accounts = Repository::<Account>::new(store.clone());
        let accounts = &accounts;
        accounts
            .execute("limit", 5, Metadata::default())
            .await
            .unwrap();
        let runs = &AtomicUsize::new(0);
        // Pay "out" as much as "limit" holds; "limit" is only read. Another writer raises the
        // limit between the first decision and its commit.
        let done = MultiCommand::new(store.clone())
            .run(Metadata::default(), |mut work| async move {
                let limit = work.load(accounts, "limit").await?;
                let out = work.load(accounts, "out").await?;
                let amount = work.state(limit).balance;
                work.execute(out, amount as i64)?;
                if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                    accounts.execute("limit", 3, Metadata::default()).await?;
                }
                Ok::<_, CommandError<Insufficient>>((work, amount))
            })
            .await
            .unwrap();
        assert_eq!(done.attempts, 2, "the stale decision was refused");
        assert_eq!(done.value, 8);
        assert_eq!(accounts.load("out").await.unwrap().state.balance, 8);
    }

    #[tokio::test]
    async fn a_redelivered_message_writes_nothing() {
        let store = MemoryEventStore::new();
        let accounts = Repository::<Account>::new(store.clone());
        let accounts = &accounts;
        let first = accounts.execute("a", 1, Metadata::default()).await.unwrap();
        assert_eq!(first.version, 1);
        let message = store
            .read_stream_to_end(&Repository::<Account>::stream_id("a").unwrap(), 0)
            .await
            .unwrap()
            .remove(0);
        let command = MultiCommand::new(store.clone());
        let message = &message;
        let deposit = || {
            command.run(
                CommandContext::caused_by(message, "mc-test"),
                |mut work| async move {
                    let b = work.load(accounts, "b").await?;
                    work.execute(b, 7)?;
                    Ok::<_, CommandError<Insufficient>>((work, ()))
                },
            )
        };
        assert!(!deposit().await.unwrap().already_handled);
        assert!(deposit().await.unwrap().already_handled);
        assert_eq!(accounts.load("b").await.unwrap().state.balance, 7);
    }

    #[tokio::test]
    async fn conflicts_past_the_retries_end_with_a_conflict_and_nothing_written() {
        let store = MemoryEventStore::new();
        let accounts = Repository::<Account>::new(store.clone());
        let accounts = &accounts;
        let outcome = MultiCommand::new(store.clone())
            .with_max_retries(2)
            .with_backoff(Duration::from_millis(1), Duration::from_millis(2))
            .run(Metadata::default(), |mut work| async move {
                let a = work.load(accounts, "a").await?;
                work.execute(a, 1)?;
                // Someone else writes every time.
                accounts.execute("a", 100, Metadata::default()).await?;
                Ok::<_, CommandError<Insufficient>>((work, ()))
            })
            .await;
        match outcome {
            Err(CommandError::Store(error)) => assert!(error.is_conflict(), "{error}"),
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(accounts.load("a").await.unwrap().state.balance, 300);
    }

    #[tokio::test]
    async fn nothing_recorded_and_no_inbox_commits_nothing() {
        let store = MemoryEventStore::new();
        let accounts = Repository::<Account>::new(store.clone());
        let accounts = &accounts;
        let head = store.head().await.unwrap();
        let done = MultiCommand::new(store.clone())
            .run(Metadata::default(), |mut work| async move {
                let a = work.load(accounts, "a").await?;
                let refused = work.execute(a, -1).is_err();
                Ok::<_, Error>((work, refused))
            })
            .await
            .unwrap();
        assert!(done.value);
        assert_eq!(store.head().await.unwrap(), head);
    }
}
