//! Saga batches on a real server: two batches that share instances, handed over in opposite
//! orders, must not deadlock (PostgreSQL would break the deadlock only after
//! `deadlock_timeout`, holding both batches' rows meanwhile).

mod common;

use bytes::Bytes;
use es_core::saga::{SagaChange, SagaStore};

fn change(instance: &str, version: u64) -> SagaChange {
    SagaChange {
        saga: "batched".into(),
        instance: instance.into(),
        expected_version: version,
        state: Bytes::from_static(b"{}"),
        completed: false,
        schedule: Vec::new(),
        cancel: Vec::new(),
        handled_event: Some(uuid::Uuid::new_v4()),
        fired_deadline: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_sharing_instances_in_opposite_orders_never_deadlock() {
    let store = common::store("sagabatch").await;
    let instances: Vec<String> = (0..20).map(|n| format!("i{n:02}")).collect();
    let first: Vec<SagaChange> = instances.iter().map(|i| change(i, 0)).collect();
    store.save_many(first).await.unwrap();
    for round in 0..5u64 {
        // Both decided on the same versions: one wins, the other meets a conflict.
        let forward: Vec<SagaChange> = instances.iter().map(|i| change(i, round + 1)).collect();
        let backward: Vec<SagaChange> = instances
            .iter()
            .rev()
            .map(|i| change(i, round + 1))
            .collect();
        let (a, b) = (store.clone(), store.clone());
        let (one, two) = tokio::join!(
            tokio::spawn(async move { a.save_many(forward).await }),
            tokio::spawn(async move { b.save_many(backward).await })
        );
        let outcomes = [one.unwrap(), two.unwrap()];
        for outcome in &outcomes {
            if let Err(error) = outcome {
                // PostgreSQL breaks a deadlock by failing one side with 40P01, a transient
                // error: the kind of the error is the proof, no clock needed.
                assert!(
                    error.is_conflict(),
                    "a version conflict, not a deadlock: {error}"
                );
            }
        }
        assert_eq!(
            outcomes.iter().filter(|o| o.is_ok()).count(),
            1,
            "exactly one of two batches on the same versions is saved"
        );
    }
    common::drop_schema(&store).await;
}

/// A batch looks up its few instances and events, not every row of the saga: all instances of
/// a saga share its name, so a lookup by the key's first column alone reads them all, and with
/// statistics from when the tables were small every batch got slower as the saga's tables grew.
#[tokio::test]
async fn a_batch_reads_its_own_rows_not_the_whole_saga() {
    let mut config = es_postgres::PgConfig::new(common::schema_name("saga_batch_probe"));
    // One connection, so the statistics flushed below are the batch queries' own.
    config.max_connections = 1;
    config.min_connections = 0;
    let store = common::store_with(config).await;
    // Statistics taken while the tables were empty, as after a vacuum at start with autovacuum
    // off or behind: the plan must not depend on them being fresh.
    sqlx::query("ANALYZE saga_states, saga_inbox")
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO saga_states (saga, instance, data, version, completed) \
         SELECT 'batched', 'i' || n, '\\x7b7d', 1, false FROM generate_series(1, 3000) AS n",
    )
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO saga_inbox (saga, event_id) \
         SELECT 'batched', gen_random_uuid() FROM generate_series(1, 3000)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let handled: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT event_id FROM saga_inbox ORDER BY event_id LIMIT 2")
            .fetch_all(store.pool())
            .await
            .unwrap();

    let asked = vec!["i7".to_owned(), "missing".to_owned(), "i2999".to_owned()];
    let before = common::rows_read(&store, "saga_states").await;
    let states = store.load_many("batched", &asked).await.unwrap();
    let read = common::rows_read(&store, "saga_states").await - before;
    assert_eq!(
        states.iter().map(Option::is_some).collect::<Vec<_>>(),
        [true, false, true],
        "each instance answered in the order asked"
    );
    assert!(
        read < 20,
        "loading 3 instances read {read} saga_states rows"
    );

    let ids = vec![handled[0], uuid::Uuid::new_v4(), handled[1]];
    let before = common::rows_read(&store, "saga_inbox").await;
    let mut found = store.handled_among("batched", &ids).await.unwrap();
    let read = common::rows_read(&store, "saga_inbox").await - before;
    found.sort();
    assert_eq!(found, handled, "exactly the handled ids");
    assert!(read < 20, "checking 3 events read {read} saga_inbox rows");
    common::drop_schema(&store).await;
}
