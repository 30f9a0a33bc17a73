//! Live delivery across processes: an append in one store reaches a subscriber of another
//! store (as in another process) through NOTIFY within milliseconds, not a poll interval.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use es_core::polling::{poll_subscription, PollConfig};
use es_core::testing::sample_event;
use es_core::{
    async_trait, CommitOutcome, EventStore, EventSubscription, ExpectedVersion, Page, Position,
    RecordedEvent, StreamFilter, StreamId, UnitOfWork,
};
use es_postgres::{PgConfig, PgEventStore};
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

/// The store, counting the pages a subscription reads.
#[derive(Debug)]
struct CountingReads {
    store: PgEventStore,
    pages: AtomicUsize,
}

#[async_trait]
impl EventStore for CountingReads {
    async fn commit(&self, unit: UnitOfWork) -> es_core::Result<CommitOutcome> {
        self.store.commit(unit).await
    }
    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> es_core::Result<Vec<RecordedEvent>> {
        self.store.read_stream(stream_id, from_version, limit).await
    }
    async fn stream_version(&self, stream_id: &StreamId) -> es_core::Result<Option<u64>> {
        self.store.stream_version(stream_id).await
    }
    async fn read_all(
        &self,
        filter: &StreamFilter,
        after: Position,
        limit: usize,
    ) -> es_core::Result<Vec<RecordedEvent>> {
        panic!("a subscription reads pages, not read_all({filter:?}, {after:?}, {limit})")
    }
    async fn read_page(
        &self,
        filter: &StreamFilter,
        after: Position,
        limit: usize,
    ) -> es_core::Result<Page> {
        self.pages.fetch_add(1, Ordering::SeqCst);
        self.store.read_page(filter, after, limit).await
    }
    async fn head(&self) -> es_core::Result<Position> {
        self.store.head().await
    }
    fn subscribe(&self, filter: StreamFilter, after: Position) -> EventSubscription {
        self.store.subscribe(filter, after)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_reads_one_page_per_wake_up() {
    let mut config = PgConfig::new(common::schema_name("wakes"));
    // Each append wakes the subscription once, in process; no notification doubles it.
    config.notify = false;
    let store = common::store_with(config).await;
    let stream = StreamId::new("wakes-1").unwrap();
    // The listener wakes every subscription when it connects (announcements may have been lost
    // before): let that happen before the subscription starts counting.
    let _listening = store.wake_receiver_for(&StreamFilter::All);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let batch = |n: u64| {
        (0..3)
            .map(|i| sample_event("Woken", n * 3 + i))
            .collect::<Vec<_>>()
    };
    store
        .append(&stream, ExpectedVersion::NoStream, batch(0))
        .await
        .unwrap();
    // Other tests' transactions may hold the events back for a moment; once they are safe and
    // nothing of this schema is held back, a short page reaches the head.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = store
            .read_page(&StreamFilter::All, Position::START, 10)
            .await
            .unwrap();
        if page.events.len() == 3 {
            assert!(
                page.at_head,
                "a short page with nothing held back is the head"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the first events became safe");
    }

    let counting = Arc::new(CountingReads {
        store: store.clone(),
        pages: AtomicUsize::new(0),
    });
    let config = PollConfig {
        page_size: 10,
        // Far longer than the test: only wake-ups end a wait.
        poll_interval: Duration::from_secs(60),
        ..PollConfig::default()
    };
    let mut subscription = poll_subscription(
        counting.clone(),
        StreamFilter::All,
        Position::START,
        Some(store.wake_receiver_for(&StreamFilter::All)),
        config,
    );
    for wake_up in 1..=3u64 {
        for _ in 0..3 {
            tokio::time::timeout(Duration::from_secs(10), subscription.next())
                .await
                .expect("delivered")
                .unwrap()
                .unwrap();
        }
        let idle = tokio::time::timeout(Duration::from_millis(300), subscription.next()).await;
        assert!(idle.is_err(), "nothing new yet: {idle:?}");
        assert_eq!(
            counting.pages.load(Ordering::SeqCst) as u64,
            wake_up,
            "one page per wake-up: none after the short page that reached the head"
        );
        store
            .append(&stream, ExpectedVersion::Exact(wake_up * 3), batch(wake_up))
            .await
            .unwrap();
    }
    drop(subscription);
    common::drop_schema(&store).await;
}
