//! The store's hot statements keep one plan per connection: PostgreSQL plans a prepared
//! statement for the call's values five times, then keeps a generic plan only when that one
//! is estimated no dearer. The reads and appends of a few streams at once were planned again
//! on nearly every call (for the same index scans), which cost the example at a steady load a
//! tenth of PostgreSQL's CPU. Each test runs a statement many times on a store of one
//! connection, so that `pg_prepared_statements` of that very session shows how it was planned.
//!
//! A subscription's page read runs on a pool of its own that keeps generic plans
//! (`PgConfig::page_read_connections`); the crate's unit test
//! `a_page_read_keeps_one_plan_on_a_growing_log` checks it on that pool's connection.

mod common;

use es_core::testing::sample_event;
use es_core::{EventStore, ExpectedVersion, StreamAppend, StreamId};
use es_postgres::{PgConfig, PgEventStore};

/// Calls of the statement under test: five custom plans, then the generic one if kept.
const CALLS: usize = 20;

/// A store of one connection holding a log the planner knows, analyzed as a server with
/// autovacuum would have it: 20 batches of `streams` streams of `events` events each, a quarter
/// of the streams in a rarer category. On a log of a few hundred events every plan costs about
/// the same, and PostgreSQL keeps the generic one whatever the statement; which values it
/// re-plans for depends on the log's shape, so each test takes a shape on which its statement
/// was planned on every call before its parameters were made opaque.
async fn store_with_a_log(prefix: &str, streams: u64, events: u64) -> PgEventStore {
    let mut config = PgConfig::new(common::schema_name(prefix));
    config.max_connections = 1;
    let store = common::store_with(config).await;
    for batch in 0..20u64 {
        let appends = (0..streams)
            .map(|n| {
                let n = batch * streams + n;
                let category = if n % 4 == 0 { "rare" } else { "common" };
                let events = (0..events)
                    .map(|k| sample_event("Happened", n * 1000 + k))
                    .collect();
                StreamAppend::new(
                    StreamId::new(format!("{category}-{n}")).unwrap(),
                    ExpectedVersion::NoStream,
                    events,
                )
            })
            .collect();
        store.append_many(appends).await.unwrap();
    }
    sqlx::query("ANALYZE events")
        .execute(store.pool())
        .await
        .unwrap();
    store
}

/// How the session's prepared statement containing `fragment` was planned so far:
/// `(generic plans, custom plans)`; none yet when it was not prepared.
async fn plans_of(store: &PgEventStore, fragment: &str) -> (i64, i64) {
    let found: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements \
         WHERE strpos(statement, $1) > 0",
    )
    .bind(fragment)
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert!(
        found.len() <= 1,
        "one prepared statement holds {fragment:?}"
    );
    found.first().copied().unwrap_or((0, 0))
}

/// Runs `calls` (the statement holding `fragment`, [`CALLS`] times) and checks that
/// PostgreSQL planned it for the values at most the five times it always does.
async fn assert_planned_once<F: std::future::Future<Output = ()>>(
    store: &PgEventStore,
    fragment: &str,
    calls: F,
) {
    let (generic_before, custom_before) = plans_of(store, fragment).await;
    calls.await;
    let (generic_after, custom_after) = plans_of(store, fragment).await;
    let (generic, custom) = (generic_after - generic_before, custom_after - custom_before);
    assert!(
        custom <= 5 && generic >= (CALLS - 5) as i64,
        "{fragment:?} was planned for its values {custom} times and ran its generic plan \
         {generic} times in {CALLS} calls"
    );
}

#[tokio::test]
async fn reading_a_few_streams_at_once_keeps_one_plan() {
    let store = store_with_a_log("plans_replay", 250, 4).await;
    let calls = async {
        for call in 0..CALLS as u64 {
            // As a repository loads a unit's aggregates at a steady rate: mostly one stream,
            // now and then two, each from its start.
            let requests: Vec<(StreamId, u64)> = (0..1 + u64::from(call % 5 == 4))
                .map(|k| {
                    let stream = 1 + 4 * call + k;
                    (StreamId::new(format!("common-{stream}")).unwrap(), 1)
                })
                .collect();
            let answers = store.replay_streams(&requests, 4096).await.unwrap();
            assert!(answers.iter().all(|events| events.len() == 4));
        }
    };
    let fragment = "WITH ORDINALITY AS r(stream_id, from_version, ord)";
    assert_planned_once(&store, fragment, calls).await;
}

#[tokio::test]
async fn appending_to_a_few_streams_at_once_keeps_one_plan() {
    let store = store_with_a_log("plans_append", 10, 100).await;
    let calls = async {
        for call in 0..CALLS as u64 {
            let appends = (0..2)
                .map(|k| {
                    StreamAppend::new(
                        StreamId::new(format!("new-{call}-{k}")).unwrap(),
                        ExpectedVersion::NoStream,
                        vec![sample_event("Started", 1_000_000 + call * 10 + k)],
                    )
                })
                .collect();
            let results = store.append_many(appends).await.unwrap();
            assert_eq!(results.len(), 2);
        }
    };
    assert_planned_once(&store, "AS x(stream_id, version)", calls).await;
}
