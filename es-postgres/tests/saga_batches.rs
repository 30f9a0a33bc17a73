//! Saga batches on a real server: two batches that share instances, handed over in opposite
//! orders, must not deadlock (PostgreSQL would break the deadlock only after
//! `deadlock_timeout`, holding both batches' rows meanwhile).

mod common;

use std::time::Duration;

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
        let started = std::time::Instant::now();
        let (one, two) = tokio::join!(
            tokio::spawn(async move { a.save_many(forward).await }),
            tokio::spawn(async move { b.save_many(backward).await })
        );
        let outcomes = [one.unwrap(), two.unwrap()];
        for outcome in &outcomes {
            if let Err(error) = outcome {
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
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "no wait for the deadlock detector: {:?}",
            started.elapsed()
        );
    }
    common::drop_schema(&store).await;
}
