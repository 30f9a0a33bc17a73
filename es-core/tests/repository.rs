//! The typed repository over the in-memory store: decisions, conflicts, snapshots, inbox.

mod common;

use std::sync::Arc;

use common::{Account, AccountCommand, AccountError, AccountEvent};
use es_core::memory::MemoryEventStore;
use es_core::testing::AggregateTest;
use es_core::{
    CommandContext, CommandError, Error, EventStore, ExpectedVersion, Metadata, NewEvent,
    Repository, SnapshotStore, StreamId,
};

fn repo(store: &MemoryEventStore) -> Repository<Account> {
    Repository::new(store.clone())
}

#[tokio::test]
async fn a_command_appends_its_events_with_the_given_metadata() {
    let store = MemoryEventStore::new();
    let accounts = repo(&store);
    let meta = Metadata::new_correlation();
    let done = accounts
        .execute(
            "a",
            AccountCommand::Open {
                owner: "ann".into(),
            },
            meta.clone(),
        )
        .await
        .unwrap();
    assert_eq!(done.version, 1);
    assert_eq!(
        done.events,
        vec![AccountEvent::Opened {
            owner: "ann".into()
        }]
    );
    assert!(done.state.open);
    let events = store
        .read_stream(&StreamId::new("account-a").unwrap(), 1, 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].metadata, meta);
    assert_eq!(
        events[0].schema_version, 2,
        "new events carry today's schema version"
    );
}

#[tokio::test]
async fn a_rejected_command_writes_nothing() {
    let store = MemoryEventStore::new();
    let accounts = repo(&store);
    let err = accounts
        .execute("a", AccountCommand::Deposit(5), Metadata::default())
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Rejected(AccountError::NotOpen)));
    assert!(store.is_empty());
    assert!(accounts.find("a").await.unwrap().is_none());
}

#[tokio::test]
async fn an_empty_decision_appends_nothing() {
    let store = MemoryEventStore::new();
    let accounts = repo(&store);
    accounts
        .execute(
            "a",
            AccountCommand::Open { owner: "x".into() },
            Metadata::default(),
        )
        .await
        .unwrap();
    let done = accounts
        .execute("a", AccountCommand::Noop, Metadata::default())
        .await
        .unwrap();
    assert_eq!((done.version, done.events.len()), (1, 0));
    assert_eq!(store.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_commands_are_retried_until_each_lands_once() {
    let store = MemoryEventStore::new();
    let accounts = repo(&store);
    accounts
        .execute(
            "a",
            AccountCommand::Open { owner: "x".into() },
            Metadata::default(),
        )
        .await
        .unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let accounts = accounts.clone();
            tokio::spawn(async move {
                accounts
                    .execute("a", AccountCommand::Deposit(1), Metadata::default())
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("conflicts are retried");
    }
    let loaded = accounts.load("a").await.unwrap();
    assert_eq!((loaded.state.balance, loaded.version), (32, 33));
}

/// The in-memory store, counting commits and stream reads; when `contended`, another writer
/// always gets in between a load and the commit.
#[derive(Debug, Default)]
struct Instrumented {
    inner: MemoryEventStore,
    contended: bool,
    commits: std::sync::atomic::AtomicUsize,
    reads: std::sync::atomic::AtomicUsize,
}

impl Instrumented {
    fn reads(&self) -> usize {
        self.reads.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[es_core::async_trait]
impl EventStore for Instrumented {
    async fn commit(&self, unit: es_core::UnitOfWork) -> es_core::Result<es_core::CommitOutcome> {
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        for append in unit.appends.iter().filter(|_| self.contended) {
            self.inner
                .append(
                    &append.stream_id,
                    ExpectedVersion::Any,
                    vec![NewEvent::raw("Deposited", r#"{"amount":1}"#)],
                )
                .await?;
        }
        self.inner.commit(unit).await
    }
    async fn read_stream(
        &self,
        s: &StreamId,
        from: u64,
        limit: usize,
    ) -> es_core::Result<Vec<es_core::RecordedEvent>> {
        // The default `replay_stream` and `replay_streams` come through here.
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.read_stream(s, from, limit).await
    }
    async fn stream_version(&self, s: &StreamId) -> es_core::Result<Option<u64>> {
        self.inner.stream_version(s).await
    }
    async fn read_all(
        &self,
        f: &es_core::StreamFilter,
        after: es_core::Position,
        limit: usize,
    ) -> es_core::Result<Vec<es_core::RecordedEvent>> {
        self.inner.read_all(f, after, limit).await
    }
    async fn head(&self) -> es_core::Result<es_core::Position> {
        self.inner.head().await
    }
    fn subscribe(
        &self,
        f: es_core::StreamFilter,
        after: es_core::Position,
    ) -> es_core::EventSubscription {
        self.inner.subscribe(f, after)
    }
}

#[tokio::test]
async fn conflicts_beyond_the_retry_bound_are_returned() {
    let inner = MemoryEventStore::new();
    repo(&inner)
        .execute(
            "a",
            AccountCommand::Open { owner: "x".into() },
            Metadata::default(),
        )
        .await
        .unwrap();
    let contended = Arc::new(Instrumented {
        inner: inner.clone(),
        contended: true,
        ..Default::default()
    });
    let accounts = Repository::<Account>::new(contended.clone()).with_max_retries(2);
    let err = accounts
        .execute("a", AccountCommand::Deposit(5), Metadata::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::Store(Error::Conflict { .. })),
        "got {err:?}"
    );
    assert_eq!(
        contended.commits.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "one try and two retries"
    );
    let loaded = repo(&inner).load("a").await.unwrap();
    assert_eq!(
        loaded.state.balance, 3,
        "only the other writer's events landed"
    );
}

#[tokio::test]
async fn snapshots_are_taken_every_n_events_and_loading_reads_only_the_tail() {
    let store = MemoryEventStore::new();
    let accounts = repo(&store).with_snapshots(store.clone(), 10);
    accounts
        .execute(
            "a",
            AccountCommand::Open { owner: "x".into() },
            Metadata::default(),
        )
        .await
        .unwrap();
    for _ in 0..24 {
        accounts
            .execute("a", AccountCommand::Deposit(2), Metadata::default())
            .await
            .unwrap();
    }
    let stream = Repository::<Account>::stream_id("a").unwrap();
    let snapshot = SnapshotStore::load(&store, &stream)
        .await
        .unwrap()
        .expect("a snapshot was taken");
    assert_eq!(snapshot.version, 20, "the newest multiple of 10");
    let loaded = accounts.load("a").await.unwrap();
    assert_eq!((loaded.state.balance, loaded.version), (48, 25));
    // `applied` counts folds since the default state: the snapshot carried 20 of them.
    assert_eq!(loaded.state.applied, 25);

    // Loading from a snapshot gives the same state as replaying everything.
    let replayed = repo(&store).load("a").await.unwrap();
    assert_eq!(replayed, loaded);
}

#[tokio::test]
async fn an_undecodable_snapshot_falls_back_to_replay() {
    let store = MemoryEventStore::new();
    let accounts = repo(&store).with_snapshots(store.clone(), 1);
    accounts
        .execute(
            "a",
            AccountCommand::Open { owner: "x".into() },
            Metadata::default(),
        )
        .await
        .unwrap();
    let stream = Repository::<Account>::stream_id("a").unwrap();
    let mut snapshot = SnapshotStore::load(&store, &stream).await.unwrap().unwrap();
    snapshot.payload = bytes::Bytes::from_static(b"{broken");
    snapshot.version = 2;
    store.delete(&stream).await.unwrap();
    SnapshotStore::save(&store, snapshot).await.unwrap();
    let loaded = accounts.load("a").await.unwrap();
    assert!(loaded.state.open, "the state is rebuilt from the events");
}

#[tokio::test]
async fn a_corrupt_stored_payload_is_a_typed_error() {
    let store = MemoryEventStore::new();
    let stream = Repository::<Account>::stream_id("a").unwrap();
    store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![NewEvent::raw("Deposited", "{oops")],
        )
        .await
        .unwrap();
    let err = repo(&store).load("a").await.unwrap_err();
    assert!(matches!(err, Error::Serialization { .. }), "got {err:?}");

    let other = Repository::<Account>::stream_id("b").unwrap();
    store
        .append(
            &other,
            ExpectedVersion::Any,
            vec![NewEvent::raw("Teleported", "{}")],
        )
        .await
        .unwrap();
    let err = repo(&store).load("b").await.unwrap_err();
    assert!(matches!(err, Error::UnknownEventType { .. }), "got {err:?}");
}

/// Appends `n` deposits of 1..=n to `stream`, the `corrupt`-th (1-based) unreadable.
async fn deposits(store: &MemoryEventStore, stream: &StreamId, n: i64, corrupt: Option<i64>) {
    let events = (1..=n)
        .map(|amount| match corrupt {
            Some(at) if at == amount => NewEvent::raw("Deposited", "{oops"),
            _ => NewEvent::raw("Deposited", format!("{{\"amount\":{amount}}}")),
        })
        .collect::<Vec<_>>();
    store
        .append(stream, ExpectedVersion::Any, events)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_stream_of_many_pages_folds_every_event_once_in_order() {
    // Longer than the first page and two full pages after it, so the loads below read some
    // pages while folding others, and end on a short page.
    let n: i64 = 10_000;
    let store = MemoryEventStore::new();
    for id in ["long", "exact"] {
        let stream = Repository::<Account>::stream_id(id).unwrap();
        // "exact" ends on a full page (pages of 512, 1024 and 2048): the load must read once
        // more and stop.
        let count = if id == "exact" { 512 + 1024 + 2048 } else { n };
        deposits(&store, &stream, count, None).await;
    }
    let accounts = repo(&store);
    let loaded = accounts.load("long").await.unwrap();
    assert_eq!(loaded.version, n as u64);
    assert_eq!(loaded.state.applied, n as u64);
    assert_eq!(loaded.state.balance, n * (n + 1) / 2);

    let many = accounts.load_many(&["exact", "long"]).await.unwrap();
    assert_eq!(many[0].version, 3584);
    assert_eq!(many[0].state.balance, 3584 * 3585 / 2);
    assert_eq!(many[1].version, n as u64);
    assert_eq!(many[1].state.applied, n as u64);
}

#[tokio::test]
async fn a_corrupt_event_on_a_later_page_fails_the_load() {
    let store = MemoryEventStore::new();
    let stream = Repository::<Account>::stream_id("a").unwrap();
    // On the fourth page read (after 512, 1024 and 2048 events), short, so folded while
    // nothing is read after it.
    deposits(&store, &stream, 6_000, Some(5_000)).await;
    let err = repo(&store).load("a").await.unwrap_err();
    assert!(matches!(err, Error::Serialization { .. }), "got {err:?}");
    // On the first page, folded while the second is being read.
    let other = Repository::<Account>::stream_id("b").unwrap();
    deposits(&store, &other, 6_000, Some(300)).await;
    let err = repo(&store).load("b").await.unwrap_err();
    assert!(matches!(err, Error::Serialization { .. }), "got {err:?}");
}

#[tokio::test]
async fn an_empty_aggregate_id_is_invalid_input() {
    let store = MemoryEventStore::new();
    let err = repo(&store).load("").await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)));
}

#[tokio::test]
async fn old_event_versions_are_read_through_upcasters() {
    let store = MemoryEventStore::new();
    let stream = Repository::<Account>::stream_id("old").unwrap();
    let mut v1 = NewEvent::raw("Opened", r#"{"name":"olga"}"#);
    v1.schema_version = 1;
    store
        .append(&stream, ExpectedVersion::NoStream, vec![v1])
        .await
        .unwrap();
    let loaded = repo(&store).load("old").await.unwrap();
    assert_eq!(loaded.state.owner, "olga");
}

#[tokio::test]
async fn a_redelivered_message_is_handled_once_through_the_inbox() {
    let store = MemoryEventStore::new();
    let accounts = repo(&store);
    accounts
        .execute(
            "a",
            AccountCommand::Open { owner: "x".into() },
            Metadata::default(),
        )
        .await
        .unwrap();
    let cause_stream = StreamId::new("payment-1").unwrap();
    store
        .append(
            &cause_stream,
            ExpectedVersion::Any,
            vec![NewEvent::raw("Paid", "{}")],
        )
        .await
        .unwrap();
    let cause = store
        .read_stream(&cause_stream, 1, 1)
        .await
        .unwrap()
        .remove(0);
    let ctx = CommandContext::caused_by(&cause, "accounts");
    let first = accounts
        .execute("a", AccountCommand::Deposit(5), ctx.clone())
        .await
        .unwrap();
    assert!(!first.already_handled);
    let second = accounts
        .execute("a", AccountCommand::Deposit(5), ctx)
        .await
        .unwrap();
    assert!(second.already_handled, "the second delivery is recognised");
    assert_eq!(second.state.balance, 5, "and changes nothing");

    let events = store
        .read_stream(&Repository::<Account>::stream_id("a").unwrap(), 2, 10)
        .await
        .unwrap();
    assert_eq!(
        events[0].metadata.causation_id,
        Some(cause.event_id),
        "causation is the message"
    );
    assert_eq!(
        events[0].metadata.correlation_id,
        Some(cause.event_id),
        "a cause without correlation starts one"
    );
}

#[test]
fn the_given_when_then_kit_checks_decisions() {
    AggregateTest::<Account>::given(vec![
        AccountEvent::Opened { owner: "x".into() },
        AccountEvent::Deposited { amount: 3 },
    ])
    .when(AccountCommand::Withdraw(2))
    .then_expect_events(vec![AccountEvent::Withdrawn { amount: 2 }]);
    AggregateTest::<Account>::given(vec![AccountEvent::Opened { owner: "x".into() }])
        .when(AccountCommand::Withdraw(2))
        .then_expect_error(AccountError::InsufficientFunds);
    AggregateTest::<Account>::given_no_events()
        .when(AccountCommand::Deposit(1))
        .then_expect_error_matching(|e| *e == AccountError::NotOpen);
}

#[test]
#[should_panic(expected = "the command decided other events")]
fn the_kit_fails_on_other_events() {
    AggregateTest::<Account>::given(vec![AccountEvent::Opened { owner: "x".into() }])
        .when(AccountCommand::Deposit(1))
        .then_expect_events(vec![AccountEvent::Deposited { amount: 2 }]);
}

#[test]
fn stored_events_of_every_past_version_still_decode() {
    es_core::testing::golden::check_event_fixtures::<AccountEvent>(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/account"),
        &[
            AccountEvent::Opened {
                owner: "ann".into(),
            },
            AccountEvent::Deposited { amount: 10 },
            AccountEvent::Withdrawn { amount: 4 },
        ],
    );
}

#[tokio::test]
async fn decisions_on_two_aggregates_commit_together_or_conflict() {
    use es_core::UnitOfWork;
    let store = MemoryEventStore::new();
    let accounts = repo(&store);
    for id in ["a", "b"] {
        accounts
            .execute(
                id,
                AccountCommand::Open { owner: id.into() },
                Metadata::default(),
            )
            .await
            .unwrap();
    }
    accounts
        .execute("a", AccountCommand::Deposit(10), Metadata::default())
        .await
        .unwrap();
    let meta = Metadata::new_correlation();
    let withdraw = accounts
        .decide("a", AccountCommand::Withdraw(4), meta.clone())
        .await
        .unwrap();
    let deposit = accounts
        .decide("b", AccountCommand::Deposit(4), meta.clone())
        .await
        .unwrap();
    assert_eq!(withdraw.version, 2);
    assert_eq!(withdraw.append.expected, ExpectedVersion::Exact(2));
    assert_eq!(withdraw.append.events[0].metadata, meta);
    let refused = accounts
        .decide("b", AccountCommand::Withdraw(100), meta.clone())
        .await
        .unwrap();
    assert!(refused.is_rejected() && refused.append.events.is_empty());
    assert!(matches!(
        refused.outcome,
        Err(AccountError::InsufficientFunds)
    ));

    // Another writer moves `b` before the pair commits: nothing of the pair is written.
    accounts
        .execute("b", AccountCommand::Deposit(1), Metadata::default())
        .await
        .unwrap();
    let unit = UnitOfWork::new()
        .append(withdraw.append.clone())
        .append(deposit.append.clone());
    assert!(matches!(
        store.commit(unit).await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(accounts.load("a").await.unwrap().state.balance, 10);

    // Decided again on fresh state, the pair commits as one.
    let withdraw = accounts
        .decide("a", AccountCommand::Withdraw(4), meta.clone())
        .await
        .unwrap();
    let deposit = accounts
        .decide("b", AccountCommand::Deposit(4), meta.clone())
        .await
        .unwrap();
    store
        .commit(
            UnitOfWork::new()
                .append(withdraw.append)
                .append(deposit.append),
        )
        .await
        .unwrap();
    assert_eq!(accounts.load("a").await.unwrap().state.balance, 6);
    assert_eq!(accounts.load("b").await.unwrap().state.balance, 5);
}

#[tokio::test]
async fn a_decision_committed_elsewhere_is_folded_and_snapshotted() {
    use es_core::UnitOfWork;
    let store = MemoryEventStore::new();
    let accounts = repo(&store).with_snapshots(store.clone(), 2);
    accounts
        .execute(
            "a",
            AccountCommand::Open { owner: "a".into() },
            Metadata::default(),
        )
        .await
        .unwrap();
    let decision = accounts
        .decide("a", AccountCommand::Deposit(7), Metadata::default())
        .await
        .unwrap();
    store
        .commit(UnitOfWork::new().append(decision.append.clone()))
        .await
        .unwrap();
    let loaded = accounts.committed(decision).await;
    assert_eq!((loaded.version, loaded.state.balance), (2, 7));
    let stream = StreamId::new("account-a").unwrap();
    let snapshot = SnapshotStore::load(&store, &stream).await.unwrap();
    assert_eq!(
        snapshot.map(|s| s.version),
        Some(2),
        "version 2 is due with every = 2"
    );
}

#[tokio::test]
async fn a_cached_repository_keeps_snapshots_and_agrees_with_a_cold_load() {
    let store = MemoryEventStore::new();
    let accounts = repo(&store).with_snapshots(store.clone(), 10).with_cache(4);
    accounts
        .execute(
            "a",
            AccountCommand::Open { owner: "x".into() },
            Metadata::default(),
        )
        .await
        .unwrap();
    for _ in 0..24 {
        accounts
            .execute("a", AccountCommand::Deposit(2), Metadata::default())
            .await
            .unwrap();
    }
    let stream = Repository::<Account>::stream_id("a").unwrap();
    let snapshot = SnapshotStore::load(&store, &stream).await.unwrap();
    assert_eq!(
        snapshot.map(|s| s.version),
        Some(20),
        "snapshots are still saved when the loads come from the cache"
    );
    let cached = accounts.load("a").await.unwrap();
    assert_eq!((cached.state.balance, cached.version), (48, 25));
    assert_eq!(cached.state.applied, 25, "every event folded exactly once");
    let cold = repo(&store)
        .with_snapshots(store.clone(), 10)
        .load("a")
        .await
        .unwrap();
    assert_eq!(
        cold, cached,
        "a cold load (snapshot and tail) builds the same state"
    );
    let stats = accounts.cache_stats().unwrap();
    assert_eq!(
        (stats.misses, stats.entries),
        (1, 1),
        "only the first load missed"
    );
}

#[tokio::test]
async fn a_cached_decision_reaches_the_cache_only_once_committed() {
    use es_core::UnitOfWork;
    let store = MemoryEventStore::new();
    let accounts = repo(&store).with_cache(4);
    accounts
        .execute(
            "a",
            AccountCommand::Open { owner: "a".into() },
            Metadata::default(),
        )
        .await
        .unwrap();
    // A decision that is never committed leaves the cached state as it was.
    let abandoned = accounts
        .decide("a", AccountCommand::Deposit(5), Metadata::default())
        .await
        .unwrap();
    assert_eq!(abandoned.append.expected, ExpectedVersion::Exact(1));
    let loaded = accounts.load("a").await.unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (1, 0));

    // One committed in the caller's unit of work is folded into the cache by `committed`.
    let decision = accounts
        .decide("a", AccountCommand::Deposit(7), Metadata::default())
        .await
        .unwrap();
    store
        .commit(UnitOfWork::new().append(decision.append.clone()))
        .await
        .unwrap();
    accounts.committed(decision).await;
    let next = accounts
        .decide("a", AccountCommand::Deposit(1), Metadata::default())
        .await
        .unwrap();
    assert_eq!(next.append.expected, ExpectedVersion::Exact(2));
    assert_eq!(next.state.balance, 7);
    assert_eq!(next.state, repo(&store).load("a").await.unwrap().state);
}

/// A batch entry with no message riding on it.
fn plain(id: &str, command: AccountCommand) -> (&str, AccountCommand, CommandContext) {
    (id, command, CommandContext::default())
}

fn open(owner: &str) -> AccountCommand {
    AccountCommand::Open {
        owner: owner.into(),
    }
}

#[tokio::test]
async fn a_trusted_cache_decides_without_reading_and_a_conflict_reads_what_it_missed() {
    let store = Arc::new(Instrumented::default());
    // No retries: a stale cached state is not a race, and costs none.
    let accounts = Repository::<Account>::new(store.clone())
        .with_trusted_cache(100)
        .with_max_retries(0);
    accounts
        .execute("a", open("ann"), Metadata::default())
        .await
        .unwrap();
    let after_open = store.reads();
    assert_eq!(after_open, 1, "a miss reads the stream");
    for _ in 0..3 {
        accounts
            .execute("a", AccountCommand::Deposit(10), Metadata::default())
            .await
            .unwrap();
    }
    assert_eq!(store.reads(), after_open, "hits decide on the cached state");

    // Another writer moves the stream on; the trusted decision conflicts and is made again.
    Repository::<Account>::new(store.inner.clone())
        .execute("a", AccountCommand::Deposit(5), Metadata::default())
        .await
        .unwrap();
    let done = accounts
        .execute("a", AccountCommand::Deposit(1), Metadata::default())
        .await
        .unwrap();
    assert_eq!((done.state.balance, done.version), (36, 6));
    assert_eq!(store.reads(), after_open + 1, "the retry read the tail");
    let fresh = repo(&store.inner).load("a").await.unwrap();
    assert_eq!((fresh.state.balance, fresh.version), (36, 6));

    // The same with a plain cache reads before every command.
    let plain = Repository::<Account>::new(store.clone()).with_cache(100);
    plain.load("a").await.unwrap();
    let before = store.reads();
    plain
        .execute("a", AccountCommand::Deposit(1), Metadata::default())
        .await
        .unwrap();
    assert_eq!(store.reads(), before + 1);
}

#[tokio::test]
async fn a_refusal_or_a_no_op_on_a_trusted_state_is_decided_again_on_fresh_state() {
    let store = MemoryEventStore::new();
    let accounts = repo(&store).with_trusted_cache(100);
    accounts
        .execute("a", open("ann"), Metadata::default())
        .await
        .unwrap();
    let other = repo(&store);
    other
        .execute("a", AccountCommand::Deposit(50), Metadata::default())
        .await
        .unwrap();
    // The cache says 0; the stream says 50: the withdrawal goes through.
    let done = accounts
        .execute("a", AccountCommand::Withdraw(30), Metadata::default())
        .await
        .expect("a refusal on the cached state is checked against the stream");
    assert_eq!((done.state.balance, done.version), (20, 3));

    // A no-op answers with the stream's state, not the cache's.
    other
        .execute("a", AccountCommand::Deposit(7), Metadata::default())
        .await
        .unwrap();
    let noop = accounts
        .execute("a", AccountCommand::Noop, Metadata::default())
        .await
        .unwrap();
    assert_eq!((noop.state.balance, noop.version), (27, 4));

    // A refusal that holds on the stream's state is still a refusal.
    let err = accounts
        .execute("a", AccountCommand::Withdraw(100), Metadata::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::Rejected(AccountError::InsufficientFunds)),
        "got {err:?}"
    );
}

#[tokio::test]
async fn a_trusted_batch_reads_only_the_aggregates_not_cached_and_retries_stale_ones() {
    let store = Arc::new(Instrumented::default());
    let accounts = Repository::<Account>::new(store.clone()).with_trusted_cache(100);
    for id in ["a", "b"] {
        accounts
            .execute(id, open(id), Metadata::default())
            .await
            .unwrap();
    }
    let before = store.reads();
    let done = accounts
        .execute_batch(vec![
            plain("a", AccountCommand::Deposit(1)),
            plain("b", AccountCommand::Deposit(2)),
        ])
        .await
        .unwrap();
    assert_eq!((done[0].version, done[1].version), (2, 2));
    assert_eq!(store.reads(), before, "both were cached");

    // "d" is not cached: one read for it alone, and each command lands on its own account.
    repo(&store.inner)
        .execute("d", open("d"), Metadata::default())
        .await
        .unwrap();
    let before = store.reads();
    let done = accounts
        .execute_batch(vec![
            plain("d", AccountCommand::Deposit(4)),
            plain("a", AccountCommand::Deposit(1)),
            plain("b", AccountCommand::Deposit(2)),
        ])
        .await
        .unwrap();
    assert_eq!(store.reads(), before + 1, "only the uncached one was read");
    let answers: Vec<(i64, u64)> = done.iter().map(|d| (d.state.balance, d.version)).collect();
    assert_eq!(answers, vec![(4, 2), (2, 3), (4, 3)]);

    // "b" moved on elsewhere, and "c" is not cached: a refusal on "b"'s cached state and a
    // conflict are both decided again on what the stream holds.
    repo(&store.inner)
        .execute("b", AccountCommand::Deposit(40), Metadata::default())
        .await
        .unwrap();
    repo(&store.inner)
        .execute("c", open("c"), Metadata::default())
        .await
        .unwrap();
    let done = accounts
        .execute_batch(vec![
            plain("b", AccountCommand::Withdraw(30)),
            plain("c", AccountCommand::Deposit(3)),
            plain("a", AccountCommand::Deposit(1)),
        ])
        .await
        .expect("decided again on fresh state");
    assert_eq!(done[0].state.balance, 14);
    assert_eq!(done[1].state.balance, 3);
    assert_eq!(done[2].state.balance, 3);
    for (id, balance) in [("a", 3), ("b", 14), ("c", 3), ("d", 4)] {
        assert_eq!(
            repo(&store.inner).load(id).await.unwrap().state.balance,
            balance
        );
    }
}
