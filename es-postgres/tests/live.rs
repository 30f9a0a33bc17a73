//! Live delivery across processes: an append in one store reaches a subscriber of another
//! store (as in another process) through NOTIFY within milliseconds, not a poll interval.

mod common;

use std::time::{Duration, Instant};

use es_core::testing::sample_event;
use es_core::{EventStore, ExpectedVersion, Position, StreamFilter, StreamId};
use es_postgres::PgConfig;
use futures_util::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_stores_subscriber_hears_of_an_append_within_milliseconds() {
    let schema = common::schema_name("live");
    let mut reader_config = PgConfig::new(schema.clone());
    // Far longer than the test: only a notification can deliver in time.
    reader_config.poll_interval = Duration::from_secs(60);
    let reader = common::store_with(reader_config).await;
    let writer = common::store_with(PgConfig::new(schema)).await;
    let stream = StreamId::new("live-1").unwrap();

    let mut subscription = reader.subscribe(StreamFilter::All, Position::START);
    // The first read finds nothing; give the listener its connection.
    let idle = tokio::time::timeout(Duration::from_millis(500), subscription.next()).await;
    assert!(idle.is_err(), "nothing to deliver yet: {idle:?}");

    for n in 0..5u64 {
        let event = sample_event("Live", n);
        let id = event.event_id;
        let appended = Instant::now();
        writer
            .append(&stream, ExpectedVersion::Exact(n), vec![event])
            .await
            .unwrap();
        let delivered = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("delivered through the notification")
            .expect("a subscription does not end")
            .expect("reads succeed");
        assert_eq!(delivered.event_id, id);
        let latency = appended.elapsed();
        assert!(
            latency < Duration::from_secs(2),
            "append {n} reached the other store's subscriber after {latency:?}"
        );
        // Past the announcer's coalescing window, so each append is announced on its own.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(subscription);
    reader.close().await;
    common::drop_schema(&writer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_wakes_only_the_categories_it_names() {
    let schema = common::schema_name("live_categories");
    let reader = common::store_with(PgConfig::new(schema.clone())).await;
    let writer = common::store_with(PgConfig::new(schema)).await;

    let mut orders = reader.wake_receiver_for(&StreamFilter::category("order"));
    let mut payments = reader.wake_receiver_for(&StreamFilter::category("payment"));
    let mut everything = reader.wake_receiver();
    // The listener wakes everyone once it listens (announcements before were missed). The
    // wake-ups of that round go out one receiver after another: let it end before marking
    // them seen.
    tokio::time::timeout(Duration::from_secs(10), orders.changed())
        .await
        .expect("the listener connects")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    orders.borrow_and_update();
    payments.borrow_and_update();
    everything.borrow_and_update();

    writer
        .append(
            &StreamId::new("payment-1").unwrap(),
            ExpectedVersion::NoStream,
            vec![sample_event("Paid", 1)],
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), payments.changed())
        .await
        .expect("the payment subscription hears of the payment")
        .unwrap();
    assert!(
        everything.has_changed().unwrap(),
        "a subscription to every stream hears of every append"
    );
    // Give a wrongly addressed wake-up time to arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !orders.has_changed().unwrap(),
        "the order subscription is not woken by a payment"
    );

    writer
        .append(
            &StreamId::new("order-1").unwrap(),
            ExpectedVersion::NoStream,
            vec![sample_event("Placed", 1)],
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), orders.changed())
        .await
        .expect("the order subscription hears of the order")
        .unwrap();
    reader.close().await;
    common::drop_schema(&writer).await;
}
