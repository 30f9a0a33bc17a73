//! The outbox relay on PostgreSQL while the bus is down: it holds no query, snapshot or
//! transaction open for the outage (they would hold back VACUUM for as long), and once the bus
//! is back everything goes out. An event the bus can never carry is parked in the store.

mod common;

use std::sync::Arc;
use std::time::Duration;

use es_core::memory::MemoryEventBus;
use es_core::testing::{unique_category, FaultyBus, RecordingHandler};
use es_core::{Consumer, EventBus, EventStore, ExpectedVersion, NewEvent, Relay, StreamId};
use es_postgres::{PgConfig, PgEventStore};
use tokio::sync::oneshot;

/// The relay's connections that hold a snapshot or are inside a statement or transaction:
/// `(pid, state, backend_xmin, query)`. The caller's own connection is left out.
async fn held_open(store: &PgEventStore, app: &str) -> Vec<(i32, String, String, String)> {
    sqlx::query_as(
        "SELECT pid, coalesce(state, ''), coalesce(backend_xmin::text, ''), left(query, 80) \
         FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid() \
           AND (backend_xmin IS NOT NULL OR state IN ('active', 'idle in transaction'))",
    )
    .bind(app)
    .fetch_all(store.pool())
    .await
    .expect("read pg_stat_activity")
}

/// Appends `count` events of about `size` bytes each, 500 to a stream.
async fn append_large(store: &PgEventStore, category: &str, count: usize, size: usize) {
    let pad = "x".repeat(size);
    for chunk in 0..count.div_ceil(500) {
        let stream = StreamId::for_aggregate(category, &chunk.to_string()).unwrap();
        let events = (0..500.min(count - chunk * 500))
            .map(|n| {
                NewEvent::raw(
                    "Placed",
                    serde_json::to_vec(&serde_json::json!({ "n": n, "pad": pad })).unwrap(),
                )
            })
            .collect();
        store
            .append(&stream, ExpectedVersion::NoStream, events)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_waiting_for_the_bus_holds_no_query_open_and_publishes_everything_after() {
    let app = format!(
        "relay-outage-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut config = PgConfig::new(common::schema_name("relay_outage"));
    config.application_name = app.clone();
    let store = common::store_with(config).await;
    let category = unique_category("outage");
    // Tens of megabytes: far more than the socket buffers hold, so a catch-up query that
    // nobody reads stays in the middle of sending (active, with its snapshot).
    let count = 12_000;
    append_large(&store, &category, count, 3_000).await;

    let memory = MemoryEventBus::new();
    let consumer = RecordingHandler::new();
    let _consuming = memory
        .subscribe(
            Consumer::new(unique_category("consumer"), [format!("{category}.#")]),
            consumer.clone(),
        )
        .await
        .unwrap();
    let bus = FaultyBus::new(Arc::new(memory));
    bus.set_down(true);
    let relay = Relay::builder("outbox")
        .store(store.clone())
        .bus(bus.clone())
        .checkpoints(store.clone())
        .build();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn({
        let relay = relay.clone();
        async move {
            relay
                .run(async {
                    let _ = stopped.await;
                })
                .await
        }
    });

    // A few failed publishes in, with backoff between them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while bus.publish_attempts() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never tried to publish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let a connection that was dropped mid-query drain back to idle, then look several times
    // during the outage: never a query, transaction or snapshot of the relay's held open.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..10 {
        let held = held_open(&store, &app).await;
        assert!(
            held.is_empty(),
            "the relay holds the log open while the bus is down: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(consumer.handled_count(), 0);

    bus.set_down(false);
    assert_eq!(
        consumer.wait_for(count, Duration::from_secs(60)).await,
        count,
        "everything goes out once the bus is back"
    );
    let head = store.head().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while relay.checkpoint().await.unwrap() != head {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the checkpoint reaches the head"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    running.await.unwrap();
    assert_eq!(consumer.handled_count(), count, "each once");
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_parked_in_postgres_and_the_relay_goes_on() {
    let store = common::store("relay_poison").await;
    let category = unique_category("poison");
    let memory = MemoryEventBus::new();
    let consumer = RecordingHandler::new();
    let _consuming = memory
        .subscribe(
            Consumer::new(unique_category("consumer"), [format!("{category}.#")]),
            consumer.clone(),
        )
        .await
        .unwrap();
    let bus = FaultyBus::new(Arc::new(memory));
    bus.refuse("Poisoned");
    let stream = StreamId::for_aggregate(&category, "1").unwrap();
    let poison = NewEvent::raw("Poisoned", b"not json".to_vec());
    let poison_id = poison.event_id;
    let events = vec![
        NewEvent::raw("Placed", br#"{"n":1}"#.to_vec()),
        poison,
        NewEvent::raw("Placed", br#"{"n":2}"#.to_vec()),
    ];
    store
        .append(&stream, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    common::settle(&store).await;
    let relay = Relay::builder("outbox")
        .store(store.clone())
        .bus(bus.clone())
        .checkpoints(store.clone())
        .parked_events(store.clone())
        .build();
    assert_eq!(relay.relay_available().await.unwrap(), 3);
    assert_eq!(consumer.wait_for(2, Duration::from_secs(10)).await, 2);
    let parked = relay.parked(10).await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(
        (parked[0].event_id, parked[0].stream_version),
        (poison_id, 2)
    );
    // Durable: a fresh store on the same schema lists it too.
    let again = common::store_with(PgConfig::new(store.config().schema.clone())).await;
    let relay = Relay::builder("outbox")
        .store(again.clone())
        .bus(bus)
        .checkpoints(again.clone())
        .parked_events(again.clone())
        .build();
    assert_eq!(relay.parked(10).await.unwrap().len(), 1);
    again.close().await;
    common::drop_schema(&store).await;
}
