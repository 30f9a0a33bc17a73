//! Shared test setup: each test gets its own schema in the database that `es-test-services`
//! finds (`DATABASE_URL`, else the local port, else a container).

#![allow(dead_code, unreachable_pub)]

use es_postgres::{PgConfig, PgEventStore};

/// The test server's URL; fails the test, saying how to provide one, when there is none.
pub fn database_url() -> String {
    es_test_services::database_url()
}

/// A fresh, random schema name starting with `prefix`.
pub fn schema_name(prefix: &str) -> String {
    format!(
        "t_{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A migrated store in a fresh schema.
pub async fn store(prefix: &str) -> PgEventStore {
    store_with(PgConfig::new(schema_name(prefix))).await
}

/// A migrated store with `config` (its schema should be fresh).
pub async fn store_with(config: PgConfig) -> PgEventStore {
    store_at(&database_url(), config).await
}

pub async fn store_at(url: &str, config: PgConfig) -> PgEventStore {
    let store = PgEventStore::connect(url, config)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach PostgreSQL at {url}: {e}. Start a server there, or set DATABASE_URL \
             to one (e.g. postgres://user:pass@host:5432/db)"
            )
        });
    store.migrate().await.expect("migrations apply");
    store
}

/// Commits `unit` and keeps its transaction open for `hold` after the appends took their
/// positions, so that transactions begun later can commit first (the out-of-order commits a
/// gap-safe reader must not skip). Panics on failure: for concurrent writers in tests.
pub async fn commit_holding(
    store: &PgEventStore,
    unit: es_core::UnitOfWork,
    hold: std::time::Duration,
) -> Vec<es_core::AppendResult> {
    let (results, ()) = store
        .commit_with(unit, move |_conn, _results| {
            Box::pin(async move {
                tokio::time::sleep(hold).await;
                Ok(())
            })
        })
        .await
        .expect("the append commits")
        .committed()
        .expect("no inbox entry, so committed");
    results
}

/// Drops the store's schema and closes its pool.
pub async fn drop_schema(store: &PgEventStore) {
    let schema = store.config().schema.clone();
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(store.pool())
        .await
        .expect("drop the test schema");
    store.close().await;
}

/// Opens `n` connections of the store's pool at once and returns them to it idle, so that the
/// next calls need not wait for a connection to be established.
pub async fn warm_pool(store: &PgEventStore, n: usize) {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(store.pool().acquire().await.expect("a connection"));
    }
}

/// Waits until no committed event of the store's log is held back beyond the horizon, so a
/// step that reads only what is safe sees every event committed so far.
///
/// The horizon is the server's: a transaction of a test running beside this one (or a commit
/// a busy disk is slow to flush) holds this store's newest events back for a moment. A test of
/// what a runner does with the events, not of the horizon, waits for that moment to pass.
pub async fn settle(store: &PgEventStore) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.health().await.expect("health").events_held_back > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "events still held back after 30 s by {:?}",
            open_write_transactions(store).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The write transactions open anywhere on the server (pid, transaction id, age, application,
/// query), for the message of a test that waits on the horizon.
pub async fn open_write_transactions(
    store: &PgEventStore,
) -> Vec<(i32, String, String, String, String)> {
    sqlx::query_as(
        "SELECT pid, backend_xid::text, (now() - xact_start)::text, application_name, \
                left(query, 80) \
         FROM pg_stat_activity WHERE backend_xid IS NOT NULL ORDER BY xact_start",
    )
    .fetch_all(store.pool())
    .await
    .unwrap_or_default()
}

/// Terminates, from the server side, every connection whose `application_name` is `app`
/// (through `via`, whose own connections carry another name); how many it terminated.
pub async fn terminate_connections(via: &PgEventStore, app: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1) AS k",
    )
    .bind(app)
    .fetch_one(via.pool())
    .await
    .expect("terminate the connections")
}

/// Rows of `table` (in the store's schema) read so far, by index scans and sequential scans
/// alike: for tests that a query probes an index instead of reading the table. Meaningful when
/// the store's pool has one connection, so the flushed statistics are the measured query's own.
pub async fn rows_read(store: &PgEventStore, table: &str) -> i64 {
    let mut connection = store.pool().acquire().await.expect("a connection");
    // The one pooled connection ran the query: flush its counters, then read fresh ones.
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *connection)
        .await
        .expect("flush the statistics");
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *connection)
        .await
        .expect("clear the statistics snapshot");
    sqlx::query_scalar(
        "SELECT (coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0))::bigint \
         FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2",
    )
    .bind(&store.config().schema)
    .bind(table)
    .fetch_one(&mut *connection)
    .await
    .expect("the table's statistics")
}

/// Rows of the store's `events` read by ten runs of `call` (see [`rows_read`]).
pub async fn rows_read_by_ten<F, Fut>(store: &PgEventStore, mut call: F) -> i64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let before = rows_read(store, "events").await;
    for _ in 0..10 {
        call().await;
    }
    rows_read(store, "events").await - before
}

/// A store of one connection holding a log of 2,000 events, analyzed: the rows a call reads
/// are then its own.
pub async fn store_with_a_long_log(prefix: &str) -> PgEventStore {
    let store = one_connection_store(prefix).await;
    write_long_log(&store, prefix).await;
    store
}

/// A migrated store in a fresh schema whose pool has one connection: the statistics flushed by
/// [`rows_read`] are then its calls' own.
pub async fn one_connection_store(prefix: &str) -> PgEventStore {
    let mut config = PgConfig::new(schema_name(prefix));
    config.max_connections = 1;
    store_with(config).await
}

/// Appends 2,000 events in 20 transactions of 100 to `store`, then analyzes its log.
pub async fn write_long_log(store: &PgEventStore, prefix: &str) {
    for i in 0..20 {
        let events = (0..100)
            .map(|k| es_core::testing::sample_event("Written", i * 100 + k))
            .collect();
        es_core::EventStore::append(
            store,
            &es_core::StreamId::new(format!("{prefix}-{i}")).unwrap(),
            es_core::ExpectedVersion::NoStream,
            events,
        )
        .await
        .unwrap();
    }
    sqlx::query("ANALYZE events")
        .execute(store.pool())
        .await
        .unwrap();
}
