//! What `PgEventStore::health()` costs the server.
//!
//! A file of its own: the count of held-back events is planned from the table's statistics, and
//! with a write transaction open anywhere on the server (as tests beside it in another file
//! hold) PostgreSQL still chose a sequential scan for it. What this checks is the quiet case.

mod common;

/// `health` counts the events held back beyond the horizon, which are only the newest: with no
/// checkpoint to measure and no write transaction open, the rows it reads do not grow with the
/// log, on a generic plan too (the count read the whole log on every call before).
#[tokio::test]
async fn health_reads_a_few_rows_however_long_the_log() {
    let store = common::store_with_a_long_log("health").await;
    for _ in 0..6 {
        store.health().await.unwrap();
    }
    let before = common::rows_read(&store, "events").await;
    for _ in 0..10 {
        store.health().await.unwrap();
    }
    let read = common::rows_read(&store, "events").await - before;
    assert!(
        read <= 100,
        "10 health reports of a 2,000-event log read {read} rows"
    );
    common::drop_schema(&store).await;
}
