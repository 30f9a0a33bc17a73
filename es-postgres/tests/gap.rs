//! The gap test: transactions commit out of order while a subscriber reads the global log;
//! it sees every event exactly once, in order.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use es_core::testing::sample_event;
use es_core::{
    EventStore, ExpectedVersion, Position, StreamAppend, StreamFilter, StreamId, UnitOfWork,
};
use es_postgres::PgConfig;
use futures_util::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_sees_every_event_once_in_order_while_commits_land_out_of_order() {
    let mut config = PgConfig::new(common::schema_name("gap"));
    config.max_connections = 24;
    let store = common::store_with(config).await;
    const WRITERS: u64 = 16;
    const APPENDS: u64 = 20;
    const PER_APPEND: u64 = 3;
    let total = (WRITERS * APPENDS * PER_APPEND) as usize;

    let mut subscription = store.subscribe(StreamFilter::All, Position::START);
    // (position of the first event, when its commit returned) for each append.
    let commits = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (store, commits) = (store.clone(), commits.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..APPENDS {
                    let stream = StreamId::new(format!("gap-{writer}-{}", i % 4)).unwrap();
                    let events: Vec<_> = (0..PER_APPEND)
                        .map(|k| sample_event("Written", writer * 10_000 + i * 10 + k))
                        .collect();
                    ids.extend(events.iter().map(|e| e.event_id));
                    let unit = UnitOfWork::new().append(StreamAppend::new(
                        stream,
                        ExpectedVersion::Any,
                        events,
                    ));
                    // Every third append keeps its transaction open after taking its
                    // positions, so later transactions commit first.
                    let hold = if (writer + i) % 3 == 0 {
                        Duration::from_millis(5 + (writer * 7 + i * 13) % 60)
                    } else {
                        Duration::ZERO
                    };
                    let results = common::commit_holding(&store, unit, hold).await;
                    commits
                        .lock()
                        .unwrap()
                        .push((results[0].positions[0], started.elapsed()));
                }
                ids
            })
        })
        .collect();

    let mut seen = Vec::with_capacity(total);
    let mut ids = HashSet::new();
    let collect = async {
        while seen.len() < total {
            let event = subscription
                .next()
                .await
                .expect("a subscription does not end")
                .expect("reads succeed");
            if let Some(last) = seen.last() {
                assert!(
                    event.position > *last,
                    "delivered in order: {} after {last}",
                    event.position
                );
            }
            assert!(
                ids.insert(event.event_id),
                "{} delivered twice",
                event.event_id
            );
            seen.push(event.position);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), collect)
        .await
        .expect("the subscriber sees every event within a minute");

    let mut written = HashSet::new();
    for writer in writers {
        written.extend(writer.await.unwrap());
    }
    assert_eq!(
        written, ids,
        "the subscriber saw exactly the written events"
    );
    let extra = tokio::time::timeout(Duration::from_millis(300), subscription.next()).await;
    assert!(extra.is_err(), "nothing more arrives: {extra:?}");

    // The test is only meaningful if commits did land out of position order.
    let mut commits = commits.lock().unwrap().clone();
    commits.sort_by_key(|(position, _)| *position);
    let inversions = commits
        .windows(2)
        .filter(|w| w[0].1 > w[1].1 + Duration::from_millis(2))
        .count();
    assert!(
        inversions > 0,
        "some later positions must have committed before earlier ones"
    );

    // A reader paging through read_all sees the same order.
    let mut after = Position::START;
    let mut paged = Vec::new();
    loop {
        let page = store.read_all(&StreamFilter::All, after, 97).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        paged.extend(page.iter().map(|e| e.position));
    }
    assert_eq!(paged, seen, "read_all pages agree with the subscription");
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_waits_for_an_older_open_transaction_and_resumes_as_soon_as_it_ends() {
    let mut config = PgConfig::new(common::schema_name("held"));
    // Far longer than the test: what it sees cannot come from the fallback poll.
    config.poll_interval = Duration::from_secs(30);
    config.read_settle = Duration::ZERO;
    let store = common::store_with(config).await;
    let mut subscription = store.subscribe(StreamFilter::All, Position::START);

    // A write transaction that began before the append and is still open.
    let mut blocker = store.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let event = sample_event("Late", 1);
    let id = event.event_id;
    store
        .append(
            &StreamId::new("held-1").unwrap(),
            ExpectedVersion::NoStream,
            vec![event],
        )
        .await
        .unwrap();

    let early = tokio::time::timeout(Duration::from_millis(400), subscription.next()).await;
    assert!(
        early.is_err(),
        "nothing is handed out while an older transaction may still write: {early:?}"
    );
    assert!(
        store
            .read_all(&StreamFilter::All, Position::START, 10)
            .await
            .unwrap()
            .is_empty(),
        "read_all holds it back too"
    );

    // The blocker ends without appending, so no notification announces it.
    blocker.rollback().await.unwrap();
    let ended = Instant::now();
    // Other tests' write transactions older than the event hold it back too, rightly; the
    // bound is far below the 30 s poll interval all the same.
    let delivered = match tokio::time::timeout(Duration::from_secs(10), subscription.next()).await {
        Ok(next) => next
            .expect("a subscription does not end")
            .expect("reads succeed"),
        Err(_) => panic!(
            "delivered once the blocker ends; transactions holding the horizon back: {:?}",
            common::open_write_transactions(&store).await
        ),
    };
    assert_eq!(delivered.event_id, id);
    println!("delivered {:?} after the blocker ended", ended.elapsed());
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_all_waits_for_transactions_older_than_the_read_but_not_for_newer_ones() {
    let mut config = PgConfig::new(common::schema_name("settle"));
    config.read_settle = Duration::from_secs(60);
    let store = common::store_with(config).await;
    // Idle connections ready, so the read below starts as soon as it is spawned: a read that
    // began only after `newer` would rightly wait for it too.
    common::warm_pool(&store, 4).await;
    let stream = StreamId::new("settle-1").unwrap();
    let open_write = || async {
        let mut tx = store.pool().begin().await.unwrap();
        sqlx::query("SELECT pg_current_xact_id()")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx
    };

    let older = open_write().await;
    let first = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![sample_event("A", 1)],
        )
        .await
        .unwrap();
    let read = {
        let store = store.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let events = store
                .read_all(&StreamFilter::All, Position::START, 10)
                .await
                .unwrap();
            (events, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A transaction that begins after the read and holds back a newer event.
    let newer = open_write().await;
    store
        .append(
            &stream,
            ExpectedVersion::Exact(1),
            vec![sample_event("A", 2)],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !read.is_finished(),
        "the read waits for the older transaction"
    );
    older.rollback().await.unwrap();

    let (events, elapsed) = match tokio::time::timeout(Duration::from_secs(20), read).await {
        Ok(finished) => finished.unwrap(),
        Err(_) => panic!(
            "the read returns once the older transaction ends, not after the settle time; \
             transactions holding the horizon back: {:?}",
            common::open_write_transactions(&store).await
        ),
    };
    assert_eq!(
        events.iter().map(|e| e.position).collect::<Vec<_>>(),
        first.positions,
        "it sees the event committed before it began, and nothing the newer one holds back"
    );
    assert!(
        elapsed >= Duration::from_millis(700),
        "it did wait: {elapsed:?}"
    );
    newer.rollback().await.unwrap();
    assert_eq!(
        store
            .read_all(&StreamFilter::All, Position::START, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_page_with_newer_events_held_back_behind_it_has_not_reached_the_head() {
    let mut config = PgConfig::new(common::schema_name("behind"));
    config.read_settle = Duration::ZERO;
    let store = common::store_with(config).await;
    let stream = StreamId::new("behind-1").unwrap();
    let first = sample_event("Early", 1);
    let first_id = first.event_id;
    store
        .append(&stream, ExpectedVersion::NoStream, vec![first])
        .await
        .unwrap();
    // A write transaction that began after the first append and before the second, still open:
    // the second event is committed but held back behind it.
    let mut blocker = store.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let second = sample_event("Late", 2);
    let second_id = second.event_id;
    store
        .append(&stream, ExpectedVersion::Exact(1), vec![second])
        .await
        .unwrap();

    let page = store
        .read_page(&StreamFilter::All, Position::START, 10)
        .await
        .unwrap();
    let ids: Vec<_> = page.events.iter().map(|e| e.event_id).collect();
    assert_eq!(ids, vec![first_id], "only the event older than the blocker");
    assert!(
        !page.at_head,
        "a short page with an event held back behind it has not reached the head"
    );

    // A subscription that took that page for the head would wait for a wake-up that the
    // blocker's end never sends (it wrote no event): the poll interval, far beyond this test.
    let subscription_config = es_core::polling::PollConfig {
        page_size: 10,
        poll_interval: Duration::from_secs(30),
        ..Default::default()
    };
    let mut subscription = es_core::polling::poll_subscription(
        Arc::new(store.clone()),
        StreamFilter::All,
        Position::START,
        Some(store.wake_receiver_for(&StreamFilter::All)),
        subscription_config,
    );
    let delivered = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("the first event is safe")
        .unwrap()
        .unwrap();
    assert_eq!(delivered.event_id, first_id);
    blocker.rollback().await.unwrap();
    let delivered = match tokio::time::timeout(Duration::from_secs(10), subscription.next()).await {
        Ok(next) => next.unwrap().unwrap(),
        Err(_) => panic!(
            "delivered once the blocker ends; transactions holding the horizon back: {:?}",
            common::open_write_transactions(&store).await
        ),
    };
    assert_eq!(delivered.event_id, second_id);
    drop(subscription);
    common::drop_schema(&store).await;
}
