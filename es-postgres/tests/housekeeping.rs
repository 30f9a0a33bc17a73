//! Housekeeping on a real server: rows older than the retention go, newer ones stay.

mod common;

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use es_core::housekeeping::{Housekeeping, DEFAULT_RETENTION};
use es_core::saga::{DeadlineRecord, SagaChange, SagaStore};
use es_core::{IdempotencyStore, Inbox, Metadata};
use es_postgres::{PgEventStore, PgIdempotencyStore};
use uuid::Uuid;

fn change(instance: &str, event: Uuid, completed: bool) -> SagaChange {
    SagaChange {
        saga: "checkout".into(),
        instance: instance.into(),
        expected_version: 0,
        state: Bytes::from_static(b"{}"),
        completed,
        schedule: Vec::new(),
        cancel: Vec::new(),
        handled_event: Some(event),
        fired_deadline: None,
    }
}

/// Moves a row's timestamp eight days back: older than the default retention of seven.
async fn age(store: &PgEventStore, sql: &str, id: Uuid) {
    let rows = sqlx::query(sql)
        .bind(id)
        .execute(store.pool())
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(rows, 1, "{sql}");
}

async fn count(store: &PgEventStore, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn rows_older_than_the_retention_are_pruned_and_newer_ones_stay() {
    let store = common::store("housekeeping").await;
    let (old_message, new_message) = (Uuid::new_v4(), Uuid::new_v4());
    store.record("payment-service", old_message).await.unwrap();
    store.record("payment-service", new_message).await.unwrap();
    age(
        &store,
        "UPDATE inbox SET handled_at = now() - interval '8 days' WHERE event_id = $1",
        old_message,
    )
    .await;

    let (done_old, open_old, done_new) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut finished = change("done-old", done_old, true);
    finished.schedule.push(DeadlineRecord::new(
        "checkout",
        "done-old",
        "reminder",
        Utc::now() + chrono::Duration::days(30),
        Bytes::from_static(b"{}"),
        Metadata::default(),
    ));
    store.save(finished).await.unwrap();
    store
        .save(change("open-old", open_old, false))
        .await
        .unwrap();
    store
        .save(change("done-new", done_new, true))
        .await
        .unwrap();
    for event in [done_old, open_old] {
        age(
            &store,
            "UPDATE saga_inbox SET handled_at = now() - interval '8 days' WHERE event_id = $1",
            event,
        )
        .await;
    }
    for instance in ["done-old", "open-old"] {
        let rows = sqlx::query(
            "UPDATE saga_states SET updated_at = now() - interval '8 days' WHERE instance = $1",
        )
        .bind(instance)
        .execute(store.pool())
        .await
        .unwrap()
        .rows_affected();
        assert_eq!(rows, 1);
    }

    let keys = PgIdempotencyStore::new(&store);
    keys.claim("expired", "fp", Duration::from_millis(1))
        .await
        .unwrap();
    keys.claim("live", "fp", Duration::from_secs(3600))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let report = store.prune(DEFAULT_RETENTION).await.unwrap();
    assert_eq!(
        (
            report.inbox,
            report.saga_inbox,
            report.saga_states,
            report.idempotency_keys
        ),
        (1, 2, 1, 1),
        "{report:?}"
    );
    assert!(!store
        .contains("payment-service", old_message)
        .await
        .unwrap());
    assert!(store
        .contains("payment-service", new_message)
        .await
        .unwrap());
    assert!(!store.has_handled("checkout", done_old).await.unwrap());
    assert!(store.has_handled("checkout", done_new).await.unwrap());
    assert_eq!(store.load("checkout", "done-old").await.unwrap(), None);
    assert!(
        store
            .deadlines_of("checkout", "done-old")
            .await
            .unwrap()
            .is_empty(),
        "a pruned instance's leftover deadline goes with it"
    );
    assert!(
        store.load("checkout", "open-old").await.unwrap().is_some(),
        "an unfinished instance stays, however old"
    );
    assert!(store.load("checkout", "done-new").await.unwrap().is_some());
    assert_eq!(
        count(&store, "idempotency_keys").await,
        1,
        "the live key stays"
    );

    let again = store.prune(DEFAULT_RETENTION).await.unwrap();
    assert_eq!(again.total(), 0, "pruning twice removes nothing more");
    let forever = store.prune(Duration::MAX).await.unwrap();
    assert_eq!(
        forever.total(),
        0,
        "a retention past the clock's reach is no error"
    );
    common::drop_schema(&store).await;
}

#[tokio::test]
async fn more_old_rows_than_one_chunk_are_all_pruned() {
    let store = common::store("housekeeping_chunks").await;
    // More than two chunks of 5,000, in each table deleted by chunks, and one recent row each.
    for table in [
        "inbox (consumer, event_id, handled_at)",
        "saga_inbox (saga, event_id, handled_at)",
    ] {
        sqlx::query(&format!(
            "INSERT INTO {table} \
             SELECT 'payment-service', gen_random_uuid(), now() - interval '8 days' \
             FROM generate_series(1, 12000)"
        ))
        .execute(store.pool())
        .await
        .unwrap();
    }
    let recent = Uuid::new_v4();
    store.record("payment-service", recent).await.unwrap();

    let report = store.prune(DEFAULT_RETENTION).await.unwrap();
    assert_eq!(
        (report.inbox, report.saga_inbox),
        (12_000, 12_000),
        "{report:?}"
    );
    assert_eq!(count(&store, "inbox").await, 1, "the recent row stays");
    assert!(store.contains("payment-service", recent).await.unwrap());
    assert_eq!(count(&store, "saga_inbox").await, 0);
    common::drop_schema(&store).await;
}
