//! What `PgEventStore::health()` costs the server.
//!
//! A file of its own: the rows a report reads depend on what other write transactions hold
//! back on the whole server, so these tests measure with none but their own.

mod common;

use sqlx::Connection;

/// `health` counts the events held back beyond the horizon, which are only the newest: with no
/// checkpoint to measure and no write transaction open, the rows it reads do not grow with the
/// log, on a generic plan too (the count read the whole log on every call before).
#[tokio::test]
async fn health_reads_a_few_rows_however_long_the_log() {
    let store = common::store_with_a_long_log("health").await;
    for _ in 0..6 {
        store.health().await.unwrap();
    }
    let read = ten_reports_read(&store).await;
    assert!(
        read <= 100,
        "10 health reports of a 2,000-event log read {read} rows"
    );
    common::drop_schema(&store).await;
}

/// Reports taken while a transaction holds the whole log back count it all, rightly; once it
/// ended, a report reads a few rows again. A prepared count switched to a generic plan (a
/// sequential scan) after five such reports and kept it: every later report read the whole log.
#[tokio::test]
async fn health_after_a_long_transaction_reads_a_few_rows_again() {
    let store = common::one_connection_store("health_held").await;
    let mut held = sqlx::PgConnection::connect(&common::database_url())
        .await
        .expect("a second connection");
    sqlx::query("BEGIN").execute(&mut held).await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut held)
        .await
        .unwrap();
    common::write_long_log(&store, "health_held").await;
    for _ in 0..6 {
        let health = store.health().await.unwrap();
        assert_eq!(health.events_held_back, 2000, "the whole log is held back");
    }
    sqlx::query("COMMIT").execute(&mut held).await.unwrap();
    let read = ten_reports_read(&store).await;
    assert!(
        read <= 100,
        "10 health reports after the transaction ended read {read} rows"
    );
    common::drop_schema(&store).await;
}

/// Rows of the log read by ten health reports, once none of the log's events is held back: a
/// transaction beside a report (the second test holds one) holds the newest events back, and a
/// report counts them by reading them, rightly.
async fn ten_reports_read(store: &es_postgres::PgEventStore) -> i64 {
    common::settle(store).await;
    common::rows_read_by_ten(store, || async {
        store.health().await.unwrap();
    })
    .await
}
