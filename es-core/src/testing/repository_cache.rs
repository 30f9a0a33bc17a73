use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::unique_category;
use crate::aggregate::Aggregate;
use crate::error::Result;
use crate::event::{DomainEvent, Metadata, NewEvent, RecordedEvent};
use crate::repository::Repository;
use crate::store::{
    AppendResult, CommitOutcome, EventStore, EventSubscription, ReplayedEvent, UnitOfWork,
};
use crate::stream::ExpectedVersion;
use crate::stream::{Position, StreamFilter, StreamId};

/// Checks [`Repository::with_cache`], [`Repository::with_trusted_cache`] and
/// [`Repository::load_many`] against `store`: a warm load reads only newer events, several
/// loads share one replay call, repositories with separate caches (trusted or not) racing on
/// one stream (as processes do) lose no update and never decide on stale state, and a trusted
/// cache reads the stream only after its append met a conflict.
pub async fn repository_cache_conformance(store: Arc<dyn EventStore>) {
    let counted = Arc::new(Counting::new(store));
    a_warm_load_reads_only_newer_events(counted.clone()).await;
    load_many_reads_every_tail_in_one_call(counted.clone()).await;
    cached_repositories_racing_lose_no_update(counted.clone(), false).await;
    cached_repositories_racing_lose_no_update(counted.clone(), true).await;
    a_trusted_cache_reads_only_after_a_conflict(counted).await;
}

/// Each event records the total it brings the tally to, decided from the state: a decision
/// on stale state would store a total that repeats or skips one.
#[derive(Debug, Default, Clone, PartialEq)]
struct Tally {
    total: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
enum TallyEvent {
    Counted { to: u64 },
}

impl DomainEvent for TallyEvent {}

#[derive(Debug, thiserror::Error)]
#[error("never refused")]
struct Never;

impl Aggregate for Tally {
    const TYPE: &'static str = "tally";
    type Command = ();
    type Event = TallyEvent;
    type Error = Never;

    fn handle(&self, (): ()) -> std::result::Result<Vec<TallyEvent>, Never> {
        Ok(vec![TallyEvent::Counted { to: self.total + 1 }])
    }

    fn apply(&mut self, event: &TallyEvent) {
        match event {
            TallyEvent::Counted { to } => self.total = *to,
        }
    }
}

/// Passes everything to the store under test, counting replayed events, replay calls and
/// conflicts, and yielding after each replay so that concurrent commands interleave between
/// their load and their append even on a single-threaded runtime. A race can also hold its
/// first commits back ([`Counting::hold_next_commits`]) so that it provokes conflicts however
/// the runtime schedules its tasks.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn EventStore>,
    replay_calls: AtomicU64,
    replayed: AtomicU64,
    conflicts: AtomicU64,
    /// The barrier the next commits wait at, and how many more commits still take it.
    commit_gate: Mutex<Option<(Arc<tokio::sync::Barrier>, usize)>>,
}

impl Counting {
    fn new(inner: Arc<dyn EventStore>) -> Self {
        Counting {
            inner,
            replay_calls: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            commit_gate: Mutex::new(None),
        }
    }

    /// Holds each of the next `commits` commits until all of them have arrived. When `commits`
    /// tasks race, each one's first commit is among them (none can commit again before they
    /// are all let through), so every task has decided before any appends: all but one of
    /// those commits meet a conflict.
    fn hold_next_commits(&self, commits: usize) {
        let barrier = Arc::new(tokio::sync::Barrier::new(commits));
        *self.commit_gate.lock().expect("gate") = Some((barrier, commits));
    }

    /// `(replay calls, replayed events)` so far.
    fn reads(&self) -> (u64, u64) {
        (
            self.replay_calls.load(Ordering::SeqCst),
            self.replayed.load(Ordering::SeqCst),
        )
    }
}

#[async_trait]
impl EventStore for Counting {
    async fn commit(&self, unit: UnitOfWork) -> Result<CommitOutcome> {
        let held = match &mut *self.commit_gate.lock().expect("gate") {
            Some((barrier, left)) if *left > 0 => {
                *left -= 1;
                Some(barrier.clone())
            }
            _ => None,
        };
        if let Some(barrier) = held {
            // A racing task that failed before its first commit would hold the others here
            // for ever: fail the test instead.
            tokio::time::timeout(std::time::Duration::from_secs(30), barrier.wait())
                .await
                .expect("every racing task reaches its first commit");
        }
        let outcome = self.inner.commit(unit).await;
        if matches!(&outcome, Err(e) if e.is_conflict()) {
            self.conflicts.fetch_add(1, Ordering::SeqCst);
        }
        outcome
    }

    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.inner.read_stream(stream_id, from_version, limit).await
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<Option<u64>> {
        self.inner.stream_version(stream_id).await
    }

    async fn read_all(
        &self,
        filter: &StreamFilter,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.inner.read_all(filter, after, limit).await
    }

    async fn head(&self) -> Result<Position> {
        self.inner.head().await
    }

    fn subscribe(&self, filter: StreamFilter, after: Position) -> EventSubscription {
        self.inner.subscribe(filter, after)
    }

    async fn append(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        self.inner.append(stream_id, expected, events).await
    }

    async fn replay_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<ReplayedEvent>> {
        let page = self
            .inner
            .replay_stream(stream_id, from_version, limit)
            .await?;
        // Between a command's load and its append: let the others load the same version.
        tokio::task::yield_now().await;
        self.replay_calls.fetch_add(1, Ordering::SeqCst);
        self.replayed.fetch_add(page.len() as u64, Ordering::SeqCst);
        Ok(page)
    }

    async fn replay_streams(
        &self,
        requests: &[(StreamId, u64)],
        limit: usize,
    ) -> Result<Vec<Vec<ReplayedEvent>>> {
        let pages = self.inner.replay_streams(requests, limit).await?;
        tokio::task::yield_now().await;
        self.replay_calls.fetch_add(1, Ordering::SeqCst);
        let events: usize = pages.iter().map(Vec::len).sum();
        self.replayed.fetch_add(events as u64, Ordering::SeqCst);
        Ok(pages)
    }
}

fn tally_stream(id: &str) -> StreamId {
    Repository::<Tally>::stream_id(id).expect("valid id")
}

/// The totals stored in `id`'s stream, in order.
async fn stored_totals(store: &dyn EventStore, id: &str) -> Vec<u64> {
    store
        .read_stream_to_end(&tally_stream(id), 1)
        .await
        .expect("read the stream")
        .iter()
        .map(|e| {
            let TallyEvent::Counted { to } = e.decode::<TallyEvent>().expect("decodes");
            to
        })
        .collect()
}

async fn a_warm_load_reads_only_newer_events(store: Arc<Counting>) {
    let id = unique_category("warm");
    let cached = Repository::<Tally>::new(store.clone()).with_cache(8);
    let other = Repository::<Tally>::new(store.clone());
    for _ in 0..5 {
        other.execute(&id, (), Metadata::default()).await.unwrap();
    }

    let cold = store.reads();
    assert_eq!(cached.load(&id).await.unwrap().version, 5);
    let warm = store.reads();
    assert_eq!(warm.1 - cold.1, 5, "a cold load replays the stream");

    let loaded = cached.load(&id).await.unwrap();
    let again = store.reads();
    assert_eq!(
        (loaded.state.total, loaded.version),
        (5, 5),
        "a warm load gives the state"
    );
    assert_eq!(
        (again.0 - warm.0, again.1 - warm.1),
        (1, 0),
        "a warm load asks once for newer events and replays none"
    );

    // Another writer appends: the cached repository reads that event alone.
    other.execute(&id, (), Metadata::default()).await.unwrap();
    let before = store.reads();
    let loaded = cached.load(&id).await.unwrap();
    assert_eq!((loaded.state.total, loaded.version), (6, 6));
    assert_eq!(
        store.reads().1 - before.1,
        1,
        "only the event written since the cached version is replayed"
    );

    // Its own append updates the cache without a read; the next load replays nothing.
    let executed = cached.execute(&id, (), Metadata::default()).await.unwrap();
    assert_eq!((executed.state.total, executed.version), (7, 7));
    let before = store.reads();
    let loaded = cached.load(&id).await.unwrap();
    assert_eq!((loaded.state.total, loaded.version), (7, 7));
    assert_eq!(store.reads().1 - before.1, 0, "nothing new to replay");
    let stats = cached.cache_stats().expect("a cache");
    assert!(
        stats.hits >= 3 && stats.entries == 1,
        "loads were served from the cache: {stats:?}"
    );
}

async fn load_many_reads_every_tail_in_one_call(store: Arc<Counting>) {
    let category = unique_category("many");
    let ids: Vec<String> = (0..4).map(|i| format!("{category}{i}")).collect();
    let plain = Repository::<Tally>::new(store.clone());
    for (i, id) in ids.iter().enumerate().take(3) {
        for _ in 0..=i {
            plain.execute(id, (), Metadata::default()).await.unwrap();
        }
    }
    for repository in [plain.clone(), plain.clone().with_cache(8)] {
        let before = store.reads();
        let many = repository.load_many(&ids).await.unwrap();
        assert_eq!(
            store.reads().0 - before.0,
            1,
            "load_many reads every stream in one call"
        );
        let mut one_by_one = Vec::new();
        for id in &ids {
            one_by_one.push(repository.load(id).await.unwrap());
        }
        assert_eq!(many, one_by_one, "load_many loads what load does");
        assert_eq!(
            many.iter().map(|l| l.version).collect::<Vec<_>>(),
            vec![1, 2, 3, 0]
        );
    }

    // Deciding on all of them: one replay call, one unit of work, each expecting its version.
    let cached = plain.clone().with_cache(8);
    let before = store.reads();
    let decisions = cached
        .decide_many(
            ids.iter().map(|id| (id.as_str(), ())).collect(),
            Metadata::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        store.reads().0 - before.0,
        1,
        "decide_many loads in one call"
    );
    let mut unit = UnitOfWork::new();
    for (decision, version) in decisions.iter().zip([1u64, 2, 3, 0]) {
        assert_eq!(decision.append.expected, ExpectedVersion::Exact(version));
        assert_eq!(
            decision.outcome.as_ref().ok(),
            Some(&vec![TallyEvent::Counted { to: version + 1 }])
        );
        unit = unit.append(decision.append.clone());
    }
    store.commit(unit).await.unwrap();
    for decision in decisions {
        cached.committed(decision).await;
    }
    for (id, version) in ids.iter().zip([2u64, 3, 4, 1]) {
        assert_eq!(stored_totals(&*store, id).await.last(), Some(&version));
        let loaded = cached.load(id).await.unwrap();
        assert_eq!((loaded.state.total, loaded.version), (version, version));
    }
}

async fn cached_repositories_racing_lose_no_update(store: Arc<Counting>, trusted: bool) {
    let id = unique_category("race");
    // Two caches on one store, as two processes have; and a writer without a cache.
    let retries = 10_000;
    let cached = |repository: Repository<Tally>| match trusted {
        true => repository.with_trusted_cache(4),
        false => repository.with_cache(4),
    };
    let left = cached(Repository::<Tally>::new(store.clone())).with_max_retries(retries);
    let right = cached(Repository::<Tally>::new(store.clone())).with_max_retries(retries);
    let plain = Repository::<Tally>::new(store.clone()).with_max_retries(retries);
    // Warm both caches, so that every racing command starts from a cached state that the
    // other side makes stale.
    left.execute(&id, (), Metadata::default()).await.unwrap();
    right.execute(&id, (), Metadata::default()).await.unwrap();
    let conflicts_before = store.conflicts.load(Ordering::SeqCst);

    let tasks_per_side: u64 = 6;
    let commands_per_task: u64 = 5;
    store.hold_next_commits((tasks_per_side * 2 + 1) as usize);
    let mut tasks = Vec::new();
    for t in 0..tasks_per_side * 2 + 1 {
        let repository = match t % 3 {
            0 => left.clone(),
            1 => right.clone(),
            _ => plain.clone(),
        };
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..commands_per_task {
                let executed = repository
                    .execute(&id, (), Metadata::default())
                    .await
                    .expect("every command gets through");
                seen.push(executed);
            }
            seen
        }));
    }
    let mut totals = Vec::new();
    for task in tasks {
        for executed in task.await.expect("task") {
            assert_eq!(
                executed.state.total, executed.version,
                "a command's state reflects exactly the events up to its version"
            );
            assert_eq!(
                executed.events,
                vec![TallyEvent::Counted {
                    to: executed.version
                }],
                "each command decided on the state of the version it appended after"
            );
            totals.push(executed.version);
        }
    }
    let commands = (tasks_per_side * 2 + 1) * commands_per_task + 2;
    totals.sort_unstable();
    totals.dedup();
    assert_eq!(
        totals.len() as u64,
        commands - 2,
        "every racing command got its own version"
    );
    assert_eq!(
        stored_totals(&*store, &id).await,
        (1..=commands).collect::<Vec<_>>(),
        "no lost update: the stream counts every command once, in order"
    );
    assert!(
        store.conflicts.load(Ordering::SeqCst) > conflicts_before,
        "the race provoked conflicts (else it proved nothing)"
    );
    for repository in [&left, &right] {
        let loaded = repository.load(&id).await.unwrap();
        assert_eq!(
            (loaded.state.total, loaded.version),
            (commands, commands),
            "each cache ends at the fold of the stored events"
        );
    }
}

async fn a_trusted_cache_reads_only_after_a_conflict(store: Arc<Counting>) {
    let id = unique_category("trusted");
    let trusted = Repository::<Tally>::new(store.clone()).with_trusted_cache(4);
    trusted.execute(&id, (), Metadata::default()).await.unwrap();
    let (reads, conflicts) = (store.reads().0, store.conflicts.load(Ordering::SeqCst));
    for _ in 0..3 {
        trusted.execute(&id, (), Metadata::default()).await.unwrap();
    }
    assert_eq!(
        store.reads().0,
        reads,
        "commands on a cached aggregate read nothing"
    );

    // Another writer moves the stream on: the trusted append conflicts, the retry reads.
    Repository::<Tally>::new(store.clone())
        .execute(&id, (), Metadata::default())
        .await
        .unwrap();
    let reads = store.reads().0;
    let executed = trusted.execute(&id, (), Metadata::default()).await.unwrap();
    assert_eq!((executed.state.total, executed.version), (6, 6));
    assert_eq!(
        executed.events,
        vec![TallyEvent::Counted { to: 6 }],
        "decided again on the stream's state"
    );
    assert_eq!(
        store.conflicts.load(Ordering::SeqCst),
        conflicts + 1,
        "the stale decision met the store's version check"
    );
    assert_eq!(store.reads().0, reads + 1, "one read after the conflict");
    assert_eq!(
        stored_totals(&*store, &id).await,
        (1..=6).collect::<Vec<_>>()
    );
}
