//! Read-ahead of `read_all` scans: the page after a full one is read before it is asked for,
//! handed out only when it is exactly what a fresh read would return, and never in place of a
//! read that must see what was appended since.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use es_core::testing::sample_event;
use es_core::{
    EventStore, ExpectedVersion, Position, RecordedEvent, StreamAppend, StreamFilter, StreamId,
    UnitOfWork,
};
use es_postgres::{PgConfig, PgEventStore};

async fn append(store: &PgEventStore, stream: &str, count: u64) {
    let events = (0..count).map(|i| sample_event("Written", i)).collect();
    store
        .append(
            &StreamId::new(stream).unwrap(),
            ExpectedVersion::Any,
            events,
        )
        .await
        .expect("append");
}

/// Waits until `count` events are safe to hand out: transactions of other tests on the same
/// server can hold the horizon back for a moment.
async fn wait_visible(store: &PgEventStore, count: usize) {
    for _ in 0..500 {
        let all = store
            .read_all(&StreamFilter::All, Position::START, usize::MAX)
            .await
            .expect("read_all");
        if all.len() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{count} events did not become visible");
}

async fn page(store: &PgEventStore, after: Position) -> Vec<RecordedEvent> {
    store
        .read_all(&StreamFilter::All, after, 100)
        .await
        .expect("read_all")
}

#[tokio::test]
async fn the_page_after_a_full_one_is_read_before_it_is_asked_for() {
    let mut config = PgConfig::new(common::schema_name("ahead"));
    // One connection: the statistics flushed below are the reads' own.
    config.max_connections = 1;
    let store = common::store_with(config).await;
    append(&store, "ahead-1", 300).await;
    wait_visible(&store, 300).await;
    let before = common::rows_read(&store, "events").await;

    let first = page(&store, Position::START).await;
    assert_eq!(first.len(), 100);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let read = common::rows_read(&store, "events").await - before;
    assert!(
        read >= 200,
        "the second page was read with the first: {read} rows"
    );

    let second = page(&store, first[99].position).await;
    let versions: Vec<u64> = second.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, (101..=200).collect::<Vec<_>>());
    // No permit to stream (one connection): still every page after a full one is read ahead,
    // so the third page is read once the second is handed out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = common::rows_read(&store, "events").await - before - read;
    assert!(
        third >= 100,
        "the third page was read with the second: {third} more rows"
    );
    let mut off = PgConfig::new(store.config().schema.clone());
    off.read_ahead = false;
    let fresh = PgEventStore::connect(&common::database_url(), off)
        .await
        .expect("connect");
    let fresh_second = page(&fresh, first[99].position).await;
    assert_eq!(
        second.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        fresh_second.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        "the page read ahead is the page a fresh read returns"
    );
    fresh.close().await;
    common::drop_schema(&store).await;
}

#[tokio::test]
async fn a_scan_that_reached_the_head_sees_what_was_appended_after_the_read_ahead() {
    let store = common::store("ahead_head").await;
    append(&store, "head-1", 200).await;
    wait_visible(&store, 200).await;
    let first = page(&store, Position::START).await;
    // The second page is full, so the third (empty: the head) is read ahead.
    let second = page(&store, first[99].position).await;
    assert_eq!(second.len(), 100);
    tokio::time::sleep(Duration::from_millis(200)).await;

    append(&store, "head-2", 1).await;
    // Visible to a read from the start (which leaves the page read ahead where it is).
    wait_visible(&store, 201).await;
    let third = page(&store, second[99].position).await;
    assert_eq!(
        third
            .iter()
            .map(|e| e.stream_id.as_str())
            .collect::<Vec<_>>(),
        vec!["head-2"],
        "a read after an append sees it, whatever was read ahead before"
    );
    common::drop_schema(&store).await;
}

/// Commits land out of position order (some transactions hold their positions open while
/// later ones commit) while a reader scans page by page with read-ahead: it sees every event
/// once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scan_reading_ahead_misses_nothing_while_commits_land_out_of_order() {
    let mut config = PgConfig::new(common::schema_name("ahead_gap"));
    config.max_connections = 16;
    let store = common::store_with(config).await;
    const WRITERS: u64 = 8;
    const APPENDS: u64 = 25;
    const PER_APPEND: u64 = 4;
    let total = (WRITERS * APPENDS * PER_APPEND) as usize;
    // A head start, so that the scan reads full pages (and ahead) from its first read.
    append(&store, "ahead-gap-seed", 400).await;
    wait_visible(&store, 400).await;

    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..APPENDS {
                    let events = (0..PER_APPEND)
                        .map(|k| sample_event("Written", writer * 10_000 + i * 10 + k))
                        .collect();
                    let unit = UnitOfWork::new().append(StreamAppend::new(
                        StreamId::new(format!("ahead-gap-{writer}")).unwrap(),
                        ExpectedVersion::Any,
                        events,
                    ));
                    let hold = if (writer + i) % 3 == 0 {
                        Duration::from_millis(3 + (writer * 7 + i * 13) % 40)
                    } else {
                        Duration::ZERO
                    };
                    common::commit_holding(&store, unit, hold).await;
                }
            })
        })
        .collect();

    let mut seen = Vec::new();
    let mut ids = HashSet::new();
    let mut after = Position::START;
    let scan = async {
        while seen.len() < total + 400 {
            let events = page(&store, after).await;
            if events.len() < 100 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            for event in events {
                assert!(event.position > after, "in order");
                assert!(ids.insert(event.event_id), "{} twice", event.event_id);
                after = event.position;
                seen.push(event.position);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), scan)
        .await
        .expect("the scan sees every event within a minute");
    for writer in writers {
        writer.await.unwrap();
    }
    let all = store
        .read_all(&StreamFilter::All, Position::START, usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        seen,
        "the scan saw every event of the log"
    );
    common::drop_schema(&store).await;
}

/// Reads pages of 100 from the start until a short one, as a scan does.
async fn scan(store: &PgEventStore) -> Vec<Vec<RecordedEvent>> {
    let mut pages = Vec::new();
    let mut after = Position::START;
    loop {
        let events = page(store, after).await;
        let full = events.len() == 100;
        if let Some(last) = events.last() {
            after = last.position;
        }
        pages.push(events);
        if !full {
            return pages;
        }
    }
}

#[tokio::test]
async fn a_scan_streamed_ahead_over_several_queries_gets_the_pages_of_fresh_reads() {
    let mut config = PgConfig::new(common::schema_name("ahead_stream"));
    // Pages read ahead stream (a permit is free) in queries of two pages, so the scan below
    // crosses several queries' ends.
    config.max_connections = 4;
    config.catch_up_rows = 250;
    let store = common::store_with(config).await;
    for stream in ["stream-1", "stream-2", "stream-3"] {
        append(&store, stream, 350).await;
    }
    wait_visible(&store, 1050).await;
    let in_use = || store.pool().size() as usize - store.pool().num_idle();

    // Two pages in, a stream reads ahead on a connection of its own.
    let first = page(&store, Position::START).await;
    let second = page(&store, first[99].position).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(in_use(), 1, "a stream reads the pages ahead");
    let mut ahead = vec![first, second];
    let mut after = ahead[1][99].position;
    loop {
        let events = page(&store, after).await;
        let full = events.len() == 100;
        if let Some(last) = events.last() {
            after = last.position;
        }
        ahead.push(events);
        if !full {
            break;
        }
    }
    let mut off = PgConfig::new(store.config().schema.clone());
    off.read_ahead = false;
    let fresh = PgEventStore::connect(&common::database_url(), off)
        .await
        .expect("connect");
    let fresh_pages = scan(&fresh).await;
    let ids = |pages: &[Vec<RecordedEvent>]| -> Vec<Vec<uuid::Uuid>> {
        pages
            .iter()
            .map(|p| p.iter().map(|e| e.event_id).collect())
            .collect()
    };
    assert_eq!(ahead.len(), 11, "ten full pages and the head's 50");
    assert_eq!(ids(&ahead), ids(&fresh_pages));

    // The head's page was left to the caller: what lands after it is seen.
    append(&store, "stream-4", 60).await;
    wait_visible(&store, 1110).await;
    let last = ahead[10].last().unwrap().position;
    let next = page(&store, last).await;
    assert_eq!(next.len(), 60);
    assert!(next.iter().all(|e| e.stream_id.as_str() == "stream-4"));
    fresh.close().await;
    common::drop_schema(&store).await;
}

#[tokio::test]
async fn a_scan_that_stops_gives_its_connection_back() {
    let mut config = PgConfig::new(common::schema_name("ahead_stop"));
    config.max_connections = 3;
    let store = common::store_with(config).await;
    append(&store, "stop-1", 1000).await;
    wait_visible(&store, 1000).await;
    let in_use = || store.pool().size() as usize - store.pool().num_idle();

    // Two pages, and the scan stops: its stream waits for a third page to be taken.
    let first = page(&store, Position::START).await;
    let second = page(&store, first[99].position).await;
    assert_eq!(second.len(), 100);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(in_use(), 1, "the stream reading ahead holds a connection");
    // After a second with no page taken, it ends its query and closes its connection.
    let mut waited = Duration::ZERO;
    while in_use() > 0 && waited < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    assert_eq!(
        in_use(),
        0,
        "the stopped scan's connection is given up ({waited:?})"
    );
    common::drop_schema(&store).await;
}
