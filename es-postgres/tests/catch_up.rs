//! A subscription far behind the head streams what is safe in one query after another, then
//! follows the log live: every event once, in order, across the hand-over, while commits land
//! out of order; dropped midway it gives its connection back; a lost connection midway costs
//! nothing.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use es_core::testing::sample_event;
use es_core::{
    Error, EventStore, ExpectedVersion, Position, StreamAppend, StreamFilter, StreamId, UnitOfWork,
};
use es_postgres::{PgConfig, PgEventStore};
use futures_util::StreamExt;
use uuid::Uuid;

/// Appends `appends` batches of `per_append` events to streams `{prefix}-0..3`; their ids.
async fn seed(store: &PgEventStore, prefix: &str, appends: u64, per_append: u64) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 0..appends {
        let events: Vec<_> = (0..per_append)
            .map(|k| sample_event("Seeded", i * 1000 + k))
            .collect();
        ids.extend(events.iter().map(|e| e.event_id));
        store
            .append(
                &StreamId::new(format!("{prefix}-{}", i % 4)).unwrap(),
                ExpectedVersion::Any,
                events,
            )
            .await
            .unwrap();
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_far_behind_streams_everything_once_in_order_then_follows_live() {
    let mut config = PgConfig::new(common::schema_name("catchup"));
    // Many short streaming queries, so the hand-over between them is exercised too.
    config.catch_up_rows = 7;
    config.max_connections = 16;
    let store = common::store_with(config).await;
    let mut written: HashSet<Uuid> = seed(&store, "old", 60, 5).await.into_iter().collect();
    let mut subscription = store.subscribe(StreamFilter::All, Position::START);

    // Writers commit out of order while the subscription is still catching up: every third
    // append holds its transaction open after taking its positions.
    let writers: Vec<_> = (0..4u64)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..25u64 {
                    let events: Vec<_> = (0..2)
                        .map(|k| sample_event("Live", writer * 10_000 + i * 10 + k))
                        .collect();
                    ids.extend(events.iter().map(|e| e.event_id));
                    let unit = UnitOfWork::new().append(StreamAppend::new(
                        StreamId::new(format!("new-{writer}")).unwrap(),
                        ExpectedVersion::Any,
                        events,
                    ));
                    let hold = Duration::from_millis(if (writer + i) % 3 == 0 { 20 } else { 0 });
                    common::commit_holding(&store, unit, hold).await;
                }
                ids
            })
        })
        .collect();

    let total = written.len() + 4 * 25 * 2;
    let (mut seen, mut last) = (HashSet::new(), Position::START);
    let collect = async {
        while seen.len() < total {
            let event = subscription
                .next()
                .await
                .expect("a subscription does not end")
                .expect("reads succeed");
            assert!(
                event.position > last,
                "in order: {} after {last}",
                event.position
            );
            last = event.position;
            assert!(seen.insert(event.event_id), "{} twice", event.event_id);
            if seen.len() % 50 == 0 {
                // A consumer slower than the log, so the writers overlap the catch-up.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), collect)
        .await
        .expect("everything arrives within a minute");
    for writer in writers {
        written.extend(writer.await.unwrap());
    }
    assert_eq!(seen, written, "exactly the written events");
    let extra = tokio::time::timeout(Duration::from_millis(300), subscription.next()).await;
    assert!(extra.is_err(), "nothing more arrives: {extra:?}");

    // Live again after the hand-over: a new append arrives within moments.
    let late = seed(&store, "late", 1, 1).await;
    let event = tokio::time::timeout(Duration::from_secs(5), subscription.next())
        .await
        .expect("a live append arrives")
        .unwrap()
        .unwrap();
    assert_eq!(event.event_id, late[0]);
    drop(subscription);
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_category_subscription_catches_up_on_its_category_only() {
    let mut config = PgConfig::new(common::schema_name("catchcat"));
    config.catch_up_rows = 3;
    let store = common::store_with(config).await;
    let wanted: Vec<Uuid> = seed(&store, "wanted", 10, 2).await;
    seed(&store, "other", 10, 2).await;
    let got: Vec<Uuid> = store
        .subscribe(StreamFilter::category("wanted"), Position::START)
        .take(wanted.len())
        .map(|e| e.unwrap().event_id)
        .collect()
        .await;
    assert_eq!(got, wanted, "the category's events, in order, and no other");
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_subscription_midway_gives_its_connection_back() {
    let mut config = PgConfig::new(common::schema_name("catchdrop"));
    // One connection for the listener, one that may stream, one for the rest.
    config.max_connections = 3;
    let store = common::store_with(config).await;
    seed(&store, "big", 20, 100).await;
    for _ in 0..3 {
        let mut subscription = store.subscribe(StreamFilter::All, Position::START);
        for _ in 0..10 {
            subscription.next().await.unwrap().unwrap();
        }
        // Connections come and go in the background (the listener's is taken by a task of
        // its own), so each count is waited for.
        wait_for_in_use(
            &store,
            2,
            "the listener's connection and the streaming query's",
        )
        .await;
        drop(subscription);
        wait_for_in_use(&store, 1, "the query's connection comes back to the pool").await;
        seed(&store, "after", 1, 1).await;
    }
    common::drop_schema(&store).await;
}

/// Waits until exactly `n` connections of the store's pool are checked out.
async fn wait_for_in_use(store: &PgEventStore, n: u32, what: &str) {
    let in_use = || store.pool().size() - store.pool().num_idle() as u32;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while in_use() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {n} connections in use, not {}",
            in_use()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_beyond_the_streaming_permits_read_page_by_page() {
    let mut config = PgConfig::new(common::schema_name("catchmany"));
    // The listener's connection and two more: one subscription may stream.
    config.max_connections = 3;
    config.page_size = 100;
    let store = common::store_with(config).await;
    let written = seed(&store, "many", 20, 100).await;
    let mut first = store.subscribe(StreamFilter::All, Position::START);
    let mut second = store.subscribe(StreamFilter::All, Position::START);
    let (mut got_first, mut got_second) = (Vec::new(), Vec::new());
    // Interleaved, and each event costs the consumer a query of its own on the same pool: a
    // second stream would leave it no connection.
    while got_first.len() < written.len() || got_second.len() < written.len() {
        for (subscription, got) in [(&mut first, &mut got_first), (&mut second, &mut got_second)] {
            if got.len() < written.len() {
                let event = tokio::time::timeout(Duration::from_secs(10), subscription.next())
                    .await
                    .expect("no starved pool")
                    .unwrap()
                    .unwrap();
                store.stream_version(&event.stream_id).await.unwrap();
                got.push(event.event_id);
            }
        }
    }
    assert_eq!(got_first, written, "the streaming one: all, in order");
    assert_eq!(got_second, written, "the paging one: all, in order");
    drop((first, second));
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_while_catching_up_costs_no_event() {
    let schema = common::schema_name("catchkill");
    let app = format!("es-catchkill-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let mut config = PgConfig::new(schema.clone());
    config.application_name = app.clone();
    config.catch_up_rows = 500;
    config.poll_interval = Duration::from_millis(200);
    let reader = common::store_with(config).await;
    let writer = Arc::new(common::store_with(PgConfig::new(schema)).await);
    let written: HashSet<Uuid> = seed(&writer, "kill", 30, 100).await.into_iter().collect();

    let mut subscription = reader.subscribe(StreamFilter::All, Position::START);
    let (mut seen, mut last, mut errors, mut killed) = (HashSet::new(), Position::START, 0, false);
    while seen.len() < written.len() {
        let item = tokio::time::timeout(Duration::from_secs(30), subscription.next())
            .await
            .expect("the subscription goes on")
            .expect("a subscription does not end");
        match item {
            Ok(event) => {
                assert!(event.position > last, "in order");
                last = event.position;
                assert!(seen.insert(event.event_id), "{} twice", event.event_id);
            }
            Err(error) => {
                assert!(
                    matches!(error, Error::Unavailable { .. }),
                    "a lost connection reads as unavailable: {error:?}"
                );
                errors += 1;
            }
        }
        if seen.len() == 700 && !killed {
            // Midway through the second streaming query.
            let terminated = common::terminate_connections(&writer, &app).await;
            assert!(terminated >= 1, "the reader's connections were killed");
            killed = true;
        }
    }
    assert_eq!(seen, written, "every event once, none lost");
    assert!(
        errors <= 3,
        "a few errors at most, not a loop of them: {errors}"
    );
    drop(subscription);
    reader.close().await;
    common::drop_schema(&writer).await;
}
