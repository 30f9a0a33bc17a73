//! The due-deadline query on a real server reads the due deadlines, not the parked ones before
//! them: a parked deadline keeps its old `due_at`, and one that keeps failing is never dropped.

mod common;

use bytes::Bytes;
use chrono::{Duration as ChronoDuration, Utc};
use es_core::saga::{DeadlineRecord, SagaChange, SagaStore};
use es_core::Metadata;
use es_postgres::PgConfig;
use uuid::Uuid;

#[tokio::test]
async fn the_due_query_does_not_step_over_parked_deadlines() {
    let mut config = PgConfig::new(common::schema_name("parked_scan"));
    // One connection, so the statistics flushed below are the due query's own.
    config.max_connections = 1;
    config.min_connections = 0;
    let store = common::store_with(config).await;
    let now = Utc::now();

    let live = DeadlineRecord {
        id: Uuid::new_v4(),
        saga: "checkout".into(),
        instance: "live".into(),
        key: "timeout".into(),
        due_at: now - ChronoDuration::seconds(1),
        payload: Bytes::from_static(b"{}"),
        metadata: Metadata::default(),
        attempts: 0,
        retry_at: None,
        last_error: None,
    };
    store
        .save(SagaChange {
            saga: "checkout".into(),
            instance: "live".into(),
            expected_version: 0,
            state: Bytes::from_static(b"{}"),
            completed: false,
            schedule: vec![live.clone()],
            cancel: Vec::new(),
            handled_event: None,
            fired_deadline: None,
        })
        .await
        .unwrap();
    // 2,000 parked deadlines, due an hour before the live one and retried an hour from now.
    sqlx::query(
        "INSERT INTO saga_deadlines \
           (id, saga, instance, key, due_at, payload, metadata, attempts, retry_at, last_error) \
         SELECT gen_random_uuid(), saga, 'parked-' || n, key, due_at - interval '1 hour', \
                payload, metadata, 3, now() + interval '1 hour', 'still failing' \
         FROM saga_deadlines, generate_series(1, 2000) AS n WHERE id = $1",
    )
    .bind(live.id)
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query("ANALYZE saga_deadlines")
        .execute(store.pool())
        .await
        .unwrap();

    let before = common::rows_read(&store, "saga_deadlines").await;
    let due = store.due_deadlines("checkout", now, 100).await.unwrap();
    let read = common::rows_read(&store, "saga_deadlines").await - before;
    assert_eq!(due.len(), 1, "only the live deadline is due: {due:?}");
    assert_eq!(due[0].id, live.id);
    assert!(
        read < 10,
        "the due query read {read} rows to find one due deadline"
    );
    common::drop_schema(&store).await;
}
