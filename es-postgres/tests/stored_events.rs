//! Reading stored history: old event versions through upcasters, long streams page by page,
//! bad input as typed errors, and the health report.

mod common;

use std::time::Duration;

use es_core::testing::sample_event;
use es_core::{
    Aggregate, CheckpointStore, DomainEvent, Error, EventStore, ExpectedVersion, NewEvent,
    Repository, StreamFilter, StreamId, Upcaster,
};
use es_postgres::{PgConfig, PgEventStore};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    /// Version 2; version 1 stored the owner as `fullName`.
    Opened { owner: String },
    /// Version 2; version 1 was called `Credited` and stored cents as `cents`.
    Deposited { amount: u64 },
}

fn opened_v1_to_v2(v: Value) -> Result<Value, String> {
    let owner = v["fullName"].as_str().ok_or("no fullName")?;
    Ok(json!({ "owner": owner }))
}

fn credited_v1_to_deposited_v2(v: Value) -> Result<Value, String> {
    let cents = v["cents"].as_u64().ok_or("no cents")?;
    Ok(json!({ "amount": cents }))
}

static UPCASTERS: &[Upcaster] = &[
    Upcaster::new("Opened", 1, opened_v1_to_v2),
    Upcaster::new("Credited", 1, credited_v1_to_deposited_v2).renaming_to("Deposited"),
];

impl DomainEvent for AccountEvent {
    fn schema_version(_event_type: &str) -> u32 {
        2
    }
    fn upcasters() -> &'static [Upcaster] {
        UPCASTERS
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Account {
    owner: String,
    balance: u64,
    events: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = u64;
    type Event = AccountEvent;
    type Error = Never;

    fn handle(&self, amount: u64) -> Result<Vec<AccountEvent>, Never> {
        Ok(vec![AccountEvent::Deposited { amount }])
    }

    fn apply(&mut self, event: &AccountEvent) {
        self.events += 1;
        match event {
            AccountEvent::Opened { owner } => self.owner = owner.clone(),
            AccountEvent::Deposited { amount } => self.balance += amount,
        }
    }
}

fn old_event(event_type: &str, payload: Value) -> NewEvent {
    NewEvent {
        schema_version: 1,
        ..NewEvent::raw(event_type, serde_json::to_vec(&payload).unwrap())
    }
}

#[tokio::test]
async fn stored_old_event_versions_are_read_through_upcasters() {
    let store = common::store("upcast").await;
    let stream = StreamId::for_aggregate("account", "7").unwrap();
    // History written by an older release of the application, stored as it was.
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![
                old_event("Opened", json!({ "fullName": "Ada Lovelace" })),
                old_event("Credited", json!({ "cents": 250 })),
            ],
        )
        .await
        .unwrap();
    let stored = store.read_stream(&stream, 1, 10).await.unwrap();
    assert_eq!(
        stored[0].schema_version, 1,
        "the store keeps what was written"
    );
    assert_eq!(&stored[1].payload[..], br#"{"cents":250}"#);

    let repository = Repository::<Account>::new(store.clone());
    let executed = repository
        .execute("7", 100, es_core::Metadata::default())
        .await
        .unwrap();
    assert_eq!(executed.state.owner, "Ada Lovelace");
    assert_eq!(
        executed.state.balance, 350,
        "old and new deposits fold together"
    );
    assert_eq!(executed.version, 3);
    let newest = store.read_stream(&stream, 3, 1).await.unwrap();
    assert_eq!(
        (newest[0].event_type.as_str(), newest[0].schema_version),
        ("Deposited", 2)
    );
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_event_stream_replays_page_by_page() {
    let store = common::store("replay").await;
    let stream = StreamId::for_aggregate("account", "long").unwrap();
    const TOTAL: u64 = 100_000;
    const BATCH: u64 = 5_000;
    for batch in 0..TOTAL / BATCH {
        let events = (0..BATCH)
            .map(|i| {
                let n = batch * BATCH + i;
                let event = if n == 0 {
                    AccountEvent::Opened {
                        owner: "Grace".into(),
                    }
                } else {
                    AccountEvent::Deposited { amount: 1 }
                };
                NewEvent::from_domain(&event, es_core::Metadata::default()).unwrap()
            })
            .collect();
        store
            .append(&stream, ExpectedVersion::Exact(batch * BATCH), events)
            .await
            .unwrap();
    }
    // The repository reads pages of 4096; each page is a bounded query.
    let loaded = Repository::<Account>::new(store.clone())
        .load("long")
        .await
        .unwrap();
    assert_eq!(loaded.version, TOTAL);
    assert_eq!(loaded.state.events, TOTAL);
    assert_eq!(loaded.state.balance, TOTAL - 1);
    let page = store.read_stream(&stream, 99_990, 4096).await.unwrap();
    assert_eq!(page.len(), 11, "a page past the middle reads to the end");
    common::drop_schema(&store).await;
}

#[tokio::test]
async fn bad_input_and_unreachable_servers_give_typed_errors() {
    assert!(matches!(
        PgEventStore::connect(&common::database_url(), PgConfig::new("Bad-Name")).await,
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        PgEventStore::connect("not a url", PgConfig::new("es")).await,
        Err(Error::InvalidInput(_))
    ));
    // Nothing listens on a port we just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = PgConfig::new("es");
    config.acquire_timeout = Duration::from_millis(500);
    let down = PgEventStore::connect(
        &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        config,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            down,
            Error::Unavailable {
                backend: "postgres",
                ..
            }
        ),
        "got {down:?}"
    );

    let store = common::store("bad").await;
    let stream = StreamId::new("bad-1").unwrap();
    let nul = store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![NewEvent::raw("Has\0Nul", "{}")],
        )
        .await
        .unwrap_err();
    assert!(matches!(nul, Error::InvalidInput(_)), "got {nul:?}");
    let empty = store
        .append(&stream, ExpectedVersion::Any, vec![NewEvent::raw("", "{}")])
        .await
        .unwrap_err();
    assert!(matches!(empty, Error::InvalidInput(_)), "got {empty:?}");
    let same = sample_event("Twice", 1);
    let twice = store
        .append(&stream, ExpectedVersion::Any, vec![same.clone(), same])
        .await
        .unwrap_err();
    assert!(matches!(twice, Error::InvalidInput(_)), "got {twice:?}");
    let zero = store
        .read_all(&StreamFilter::All, Default::default(), 0)
        .await
        .unwrap_err();
    assert!(matches!(zero, Error::InvalidInput(_)), "got {zero:?}");
    let far = es_core::Position::new(u64::MAX, 0);
    assert!(matches!(
        store.read_all(&StreamFilter::All, far, 10).await,
        Err(Error::InvalidInput(_))
    ));
    assert_eq!(
        store.stream_version(&stream).await.unwrap(),
        None,
        "nothing was written"
    );
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_the_head_checkpoint_lag_and_the_oldest_write_transaction() {
    let store = common::store("health").await;
    let stream = StreamId::new("health-1").unwrap();
    let mut positions = Vec::new();
    for n in 0..10 {
        let r = store
            .append(&stream, ExpectedVersion::Any, vec![sample_event("Tick", n)])
            .await
            .unwrap();
        positions.push(r.positions[0]);
    }
    CheckpointStore::save(&store, "projector", positions[3])
        .await
        .unwrap();
    CheckpointStore::save(&store, "relay", positions[9])
        .await
        .unwrap();

    // A write transaction left open holds readers back; health shows its age.
    let mut open = store.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *open)
        .await
        .unwrap();
    store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![sample_event("Tick", 10)],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health = store.health().await.unwrap();
    assert_eq!(
        health.head, positions[9],
        "the head stops before the held-back event"
    );
    assert_eq!(health.events_held_back, 1);
    let age = health
        .oldest_write_transaction_age
        .expect("an open write transaction");
    assert!(age >= Duration::from_millis(300), "age {age:?}");
    let lag: Vec<_> = health
        .checkpoints
        .iter()
        .map(|c| (c.name.as_str(), c.events_behind))
        .collect();
    assert_eq!(lag, vec![("projector", 6), ("relay", 0)]);
    open.rollback().await.unwrap();

    let health = store.health().await.unwrap();
    assert_eq!(health.events_held_back, 0);
    assert!(health.head > positions[9]);
    assert_eq!(health.checkpoints[1].events_behind, 1);
    common::drop_schema(&store).await;
}

#[tokio::test]
async fn a_log_whose_transaction_ids_are_ahead_of_the_cluster_is_refused() {
    let store = common::store("restored").await;
    // What a logical restore from an older, busier cluster looks like.
    sqlx::query(
        "INSERT INTO events (tx_id, stream_id, stream_version, category, event_id, event_type, \
         schema_version, payload, metadata) \
         VALUES (9000000000000, 'old-1', 1, 'old', $1, 'Old', 1, '\\x7b7d', '\\x7b7d')",
    )
    .bind(uuid::Uuid::new_v4())
    .execute(store.pool())
    .await
    .unwrap();
    let refused = store.migrate().await.unwrap_err();
    assert!(
        matches!(refused, Error::Backend { .. }) && refused.to_string().contains("restored"),
        "got {refused:?}"
    );
    common::drop_schema(&store).await;
}

/// `head` looks at the newest events only: the rows it reads do not grow with the log, also
/// once its statement runs on a generic plan (after five runs).
#[tokio::test]
async fn head_reads_a_few_rows_however_long_the_log() {
    let store = common::store_with_a_long_log("head").await;
    for _ in 0..6 {
        store.head().await.unwrap();
    }
    let read = common::rows_read_by_ten(&store, || async {
        store.head().await.unwrap();
    })
    .await;
    assert!(
        read <= 100,
        "10 heads of a 2,000-event log read {read} rows"
    );
    common::drop_schema(&store).await;
}
