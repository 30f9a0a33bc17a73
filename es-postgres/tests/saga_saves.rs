//! A lone saga change is saved in one statement with no transaction around it: all of it or
//! nothing, and a redelivery racing the first delivery is told it was handled, not a conflict.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use es_core::saga::{DeadlineRecord, SagaChange, SagaSaved, SagaStore};
use es_core::{Error, Metadata};
use es_postgres::PgEventStore;
use tokio::sync::Barrier;
use uuid::Uuid;

fn change(saga: &str, instance: &str, version: u64, event: Uuid) -> SagaChange {
    SagaChange {
        saga: saga.into(),
        instance: instance.into(),
        expected_version: version,
        state: Bytes::from(format!("{{\"v\":{}}}", version + 1)),
        completed: false,
        schedule: Vec::new(),
        cancel: Vec::new(),
        handled_event: Some(event),
        fired_deadline: None,
    }
}

fn deadline(saga: &str, instance: &str, key: &str) -> DeadlineRecord {
    DeadlineRecord::new(
        saga,
        instance,
        key,
        Utc::now() + chrono::Duration::seconds(3600),
        Bytes::from_static(b"{}"),
        Metadata::new_correlation(),
    )
}

type Saved = Result<es_core::Result<SagaSaved>, tokio::task::JoinError>;

/// Saves `a` and `b` from two tasks released together, each on a connection already open.
async fn at_once(store: &PgEventStore, a: SagaChange, b: SagaChange) -> (Saved, Saved) {
    common::warm_pool(store, 2).await;
    let start = Arc::new(Barrier::new(2));
    let save = |change: SagaChange| {
        let (store, start) = (store.clone(), start.clone());
        tokio::spawn(async move {
            start.wait().await;
            store.save(change).await
        })
    };
    let (x, y) = (save(a), save(b));
    tokio::join!(x, y)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_racing_the_first_delivery_is_handled_not_a_conflict() {
    let store = common::store("sagarace").await;
    for round in 0..20u64 {
        let event = Uuid::new_v4();
        // Each round moves the instance on by one: the first creates it.
        let delivered = change("raced", "one", round, event);
        let (x, y) = at_once(&store, delivered.clone(), delivered).await;
        let mut outcomes = [x.unwrap().unwrap(), y.unwrap().unwrap()];
        outcomes.sort_by_key(|o| *o == SagaSaved::AlreadyHandled);
        assert_eq!(
            outcomes,
            [SagaSaved::Saved, SagaSaved::AlreadyHandled],
            "round {round}"
        );
        let state = store.load("raced", "one").await.unwrap().unwrap();
        assert_eq!(state.version, round + 1, "saved once in round {round}");
    }
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_recorded_by_two_instances_at_once_is_saved_by_one() {
    let store = common::store("sagatwice").await;
    for round in 0..20 {
        let event = Uuid::new_v4();
        let (left, right) = (format!("left-{round}"), format!("right-{round}"));
        let (x, y) = at_once(
            &store,
            change("shared", &left, 0, event),
            change("shared", &right, 0, event),
        )
        .await;
        let outcomes = [x.unwrap().unwrap(), y.unwrap().unwrap()];
        let saved = outcomes.iter().filter(|o| **o == SagaSaved::Saved).count();
        assert_eq!(saved, 1, "round {round}: {outcomes:?}");
        // The one that lost wrote no state of its own.
        let states = store
            .load_many("shared", &[left, right])
            .await
            .unwrap()
            .iter()
            .filter(|s| s.is_some())
            .count();
        assert_eq!(states, 1, "round {round}");
    }
    common::drop_schema(&store).await;
}

#[tokio::test]
async fn a_change_whose_deadlines_fail_writes_nothing() {
    let store = common::store("sagabad").await;
    let event = Uuid::new_v4();
    let mut bad = change("failing", "one", 0, event);
    bad.schedule = vec![
        deadline("failing", "one", "timeout"),
        deadline("failing", "one", "timeout"),
    ];
    let error = store.save(bad).await.unwrap_err();
    assert!(matches!(error, Error::InvalidInput(_)), "{error:?}");
    assert_eq!(store.load("failing", "one").await.unwrap(), None);
    assert!(!store.has_handled("failing", event).await.unwrap());
    assert!(store
        .deadlines_of("failing", "one")
        .await
        .unwrap()
        .is_empty());

    // Another instance's deadline is refused before anything is written.
    let mut foreign = change("failing", "one", 0, event);
    foreign.schedule = vec![deadline("failing", "two", "timeout")];
    let error = store.save(foreign).await.unwrap_err();
    assert!(matches!(error, Error::InvalidInput(_)), "{error:?}");
    assert_eq!(store.load("failing", "one").await.unwrap(), None);

    // The same change done right goes in whole.
    let mut good = change("failing", "one", 0, event);
    good.schedule = vec![deadline("failing", "one", "timeout")];
    good.cancel = vec!["reminder".into()];
    assert_eq!(store.save(good).await.unwrap(), SagaSaved::Saved);
    assert!(store.has_handled("failing", event).await.unwrap());
    assert_eq!(store.deadlines_of("failing", "one").await.unwrap().len(), 1);
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_firing_while_its_instance_reschedules_it_does_not_deadlock() {
    let store = common::store("sagafire").await;
    let mut first = change("fire", "one", 0, Uuid::new_v4());
    let timeout = deadline("fire", "one", "timeout");
    first.schedule = vec![timeout.clone()];
    assert_eq!(store.save(first).await.unwrap(), SagaSaved::Saved);

    // A change of the instance in the middle of its statement, held there: it has updated the
    // state's row (as `SAVE_NEXT` does first) and is about to replace the deadline.
    let mut held = store.pool().begin().await.unwrap();
    let holder: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *held)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE saga_states SET version = version WHERE saga = 'fire' AND instance = 'one'",
    )
    .execute(&mut *held)
    .await
    .unwrap();

    // Meanwhile the deadline fires.
    let mut fire = change("fire", "one", 1, Uuid::new_v4());
    fire.handled_event = None;
    fire.fired_deadline = Some(timeout.id);
    let firing = tokio::spawn({
        let store = store.clone();
        async move { store.save(fire).await }
    });
    let waiting = async {
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
            )
            .bind(holder)
            .fetch_one(store.pool())
            .await
            .unwrap();
            if waiting > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("the firing waits for the held change");

    // The held change replaces the deadline and commits: the firing must not be holding it.
    sqlx::query(
        "DELETE FROM saga_deadlines WHERE saga = 'fire' AND instance = 'one' AND key = 'timeout'",
    )
    .execute(&mut *held)
    .await
    .expect("the change replaces the deadline (no deadlock)");
    held.commit().await.unwrap();
    assert_eq!(
        firing
            .await
            .unwrap()
            .expect("the firing does not fail (no deadlock)"),
        SagaSaved::AlreadyHandled,
        "a deadline replaced before it fired is not fired"
    );
    let state = store.load("fire", "one").await.unwrap().unwrap();
    assert_eq!(state.version, 1, "the firing wrote nothing");
    common::drop_schema(&store).await;
}
