use std::sync::Arc;

use bytes::Bytes;
use chrono::{Duration as ChronoDuration, Utc};
use uuid::Uuid;

use super::unique_category;
use crate::event::{Metadata, RecordedEvent};
use crate::relay::{ParkedEvent, ParkedEventStore};
use crate::saga::{DeadlineRecord, SagaChange, SagaSaved, SagaStore};
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::store::{CheckpointStore, Inbox};
use crate::stream::{Position, StreamId};

/// Checks [`SnapshotStore`]: save, load, newest wins, delete.
pub async fn snapshot_store_conformance(store: Arc<dyn SnapshotStore>) {
    let s = StreamId::for_aggregate(&unique_category("snap"), "1").unwrap();
    assert_eq!(store.load(&s).await.unwrap(), None, "no snapshot at first");
    let snap = |version: u64, body: &'static str| Snapshot {
        stream_id: s.clone(),
        version,
        schema_version: 2,
        payload: Bytes::from_static(body.as_bytes()),
        taken_at: Utc::now(),
    };
    store.save(snap(10, r#"{"v":10}"#)).await.unwrap();
    let loaded = store.load(&s).await.unwrap().expect("saved snapshot loads");
    assert_eq!((loaded.version, loaded.schema_version), (10, 2));
    assert_eq!(loaded.payload, Bytes::from_static(br#"{"v":10}"#));

    store.save(snap(20, r#"{"v":20}"#)).await.unwrap();
    assert_eq!(
        store.load(&s).await.unwrap().unwrap().version,
        20,
        "a newer snapshot replaces the old"
    );
    store.save(snap(15, r#"{"v":15}"#)).await.unwrap();
    assert_eq!(
        store.load(&s).await.unwrap().unwrap().version,
        20,
        "an older snapshot never moves it back"
    );

    let other = StreamId::for_aggregate(&unique_category("snap"), "2").unwrap();
    assert_eq!(
        store.load(&other).await.unwrap(),
        None,
        "snapshots are per stream"
    );
    store.delete(&s).await.unwrap();
    assert_eq!(store.load(&s).await.unwrap(), None, "delete removes it");
    store.delete(&s).await.expect("deleting nothing is fine");
}

/// Checks [`CheckpointStore`]: none at first, save, overwrite, names are independent.
pub async fn checkpoint_store_conformance(store: Arc<dyn CheckpointStore>) {
    let name = unique_category("cp");
    assert_eq!(store.load(&name).await.unwrap(), None);
    store.save(&name, Position::new(3, 7)).await.unwrap();
    assert_eq!(store.load(&name).await.unwrap(), Some(Position::new(3, 7)));
    store.save(&name, Position::new(9, 12)).await.unwrap();
    assert_eq!(store.load(&name).await.unwrap(), Some(Position::new(9, 12)));
    assert_eq!(
        store.load(&format!("{name}x")).await.unwrap(),
        None,
        "names are independent"
    );
}

/// Checks [`ParkedEventStore`]: nothing at first; listed in log order whatever the order of
/// parking, up to the limit; parking an event again replaces its error without a second entry;
/// relays are independent.
pub async fn parked_event_store_conformance(store: Arc<dyn ParkedEventStore>) {
    let relay = unique_category("relay");
    let category = unique_category("parked");
    let event = |n: u64| RecordedEvent {
        event_id: Uuid::new_v4(),
        stream_id: StreamId::for_aggregate(&category, &n.to_string()).unwrap(),
        stream_version: n,
        position: Position::new(n, n),
        recorded_at: Utc::now(),
        event_type: "Poisoned".to_owned(),
        schema_version: 1,
        payload: Bytes::from_static(b"not json"),
        metadata: Metadata::default(),
    };
    assert!(store.parked(&relay, 10).await.unwrap().is_empty());
    let (late, early) = (event(9), event(4));
    store
        .park(ParkedEvent::new(&relay, &late, "cannot encode"))
        .await
        .unwrap();
    store
        .park(ParkedEvent::new(&relay, &early, "name too long"))
        .await
        .unwrap();
    let parked = store.parked(&relay, 10).await.unwrap();
    assert_eq!(
        parked.iter().map(|p| p.event_id).collect::<Vec<_>>(),
        [early.event_id, late.event_id],
        "listed in log order"
    );
    let first = &parked[0];
    assert_eq!(
        (first.relay.as_str(), &first.stream_id, first.stream_version),
        (relay.as_str(), &early.stream_id, 4)
    );
    assert_eq!(
        (
            first.event_type.as_str(),
            first.position,
            first.error.as_str()
        ),
        ("Poisoned", Position::new(4, 4), "name too long")
    );
    assert!((Utc::now() - first.parked_at).num_seconds().abs() < 60);
    assert_eq!(store.parked(&relay, 1).await.unwrap().len(), 1, "limit");

    store
        .park(ParkedEvent::new(&relay, &late, "still cannot encode"))
        .await
        .unwrap();
    let parked = store.parked(&relay, 10).await.unwrap();
    assert_eq!(parked.len(), 2, "parking again keeps one entry per event");
    assert_eq!(parked[1].error, "still cannot encode");
    assert!(
        store
            .parked(&format!("{relay}x"), 10)
            .await
            .unwrap()
            .is_empty(),
        "relays are independent"
    );
}

/// Checks [`Inbox`]: record once per consumer and event id.
pub async fn inbox_conformance(inbox: Arc<dyn Inbox>) {
    let consumer = unique_category("inbox");
    let event = Uuid::new_v4();
    assert!(!inbox.contains(&consumer, event).await.unwrap());
    assert!(
        inbox.record(&consumer, event).await.unwrap(),
        "the first record is new"
    );
    assert!(
        !inbox.record(&consumer, event).await.unwrap(),
        "the second record is not"
    );
    assert!(inbox.contains(&consumer, event).await.unwrap());
    assert!(
        !inbox
            .contains(&format!("{consumer}x"), event)
            .await
            .unwrap(),
        "consumers are independent"
    );
    assert!(!inbox.contains(&consumer, Uuid::new_v4()).await.unwrap());

    // 16 racing records of one entry: exactly one is new.
    let event = Uuid::new_v4();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (inbox, consumer) = (inbox.clone(), consumer.clone());
            tokio::spawn(async move { inbox.record(&consumer, event).await.unwrap() })
        })
        .collect();
    let mut new = 0;
    for task in tasks {
        new += usize::from(task.await.unwrap());
    }
    assert_eq!(new, 1, "exactly one racing record is new");
}

fn deadline(saga: &str, instance: &str, key: &str, in_secs: i64) -> DeadlineRecord {
    DeadlineRecord::new(
        saga,
        instance,
        key,
        Utc::now() + ChronoDuration::seconds(in_secs),
        Bytes::from_static(br#"{"kind":"timeout"}"#),
        Metadata::new_correlation(),
    )
}

fn change(saga: &str, instance: &str, expected_version: u64, state: &'static str) -> SagaChange {
    SagaChange {
        saga: saga.to_owned(),
        instance: instance.to_owned(),
        expected_version,
        state: Bytes::from_static(state.as_bytes()),
        completed: false,
        schedule: Vec::new(),
        cancel: Vec::new(),
        handled_event: None,
        fired_deadline: None,
    }
}

/// Checks [`SagaStore`]: versioned state, the saga's inbox, deadlines that fire once, parked
/// deadlines, and a due query that one saga's backlog cannot starve another's through.
pub async fn saga_store_conformance(store: Arc<dyn SagaStore>) {
    saga_state_and_deadlines(store.clone()).await;
    deadlines_park_and_stay_per_saga(store.clone()).await;
    batches_load_check_and_save_together(store).await;
}

/// What a batched saga runner uses: several instances loaded at once, which events were
/// handled, and several changes saved all or none.
async fn batches_load_check_and_save_together(store: Arc<dyn SagaStore>) {
    let saga = unique_category("sagabatch");
    let (e1, e2, e3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut one = change(&saga, "one", 0, r#"{"n":1}"#);
    one.handled_event = Some(e1);
    let mut two = change(&saga, "two", 0, r#"{"n":2}"#);
    two.handled_event = Some(e2);
    two.schedule.push(deadline(&saga, "two", "timeout", 3600));
    assert_eq!(
        store.save_many(vec![one, two]).await.unwrap(),
        SagaSaved::Saved
    );
    let instances = [
        "one".to_owned(),
        "none".to_owned(),
        "two".to_owned(),
        "one".to_owned(),
    ];
    let states = store.load_many(&saga, &instances).await.unwrap();
    let versions: Vec<Option<u64>> = states
        .iter()
        .map(|s| s.as_ref().map(|s| s.version))
        .collect();
    assert_eq!(
        versions,
        [Some(1), None, Some(1), Some(1)],
        "one answer per instance asked, in order"
    );
    assert_eq!(
        states[2].as_ref().unwrap().data,
        Bytes::from_static(br#"{"n":2}"#)
    );
    assert_eq!(store.deadlines_of(&saga, "two").await.unwrap().len(), 1);
    let mut handled = store.handled_among(&saga, &[e1, e2, e3]).await.unwrap();
    handled.sort();
    let mut expected = vec![e1, e2];
    expected.sort();
    assert_eq!(handled, expected);

    // A stale version in one change saves none of them.
    let mut fresh = change(&saga, "three", 0, r#"{"n":3}"#);
    fresh.handled_event = Some(e3);
    let stale = change(&saga, "one", 0, r#"{"n":9}"#);
    let err = store
        .save_many(vec![fresh.clone(), stale])
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "a stale change conflicts, got {err:?}");
    assert_eq!(
        store.load(&saga, "three").await.unwrap(),
        None,
        "all or none"
    );
    assert!(!store.has_handled(&saga, e3).await.unwrap());

    // A handled event in one change saves none of them either.
    let mut again = change(&saga, "one", 1, r#"{"n":10}"#);
    again.handled_event = Some(e1);
    assert_eq!(
        store.save_many(vec![fresh.clone(), again]).await.unwrap(),
        SagaSaved::AlreadyHandled
    );
    assert_eq!(
        store.load(&saga, "three").await.unwrap(),
        None,
        "all or none"
    );
    assert_eq!(
        store.save_many(vec![fresh]).await.unwrap(),
        SagaSaved::Saved
    );
}

async fn saga_state_and_deadlines(store: Arc<dyn SagaStore>) {
    let saga = unique_category("saga");
    let i1 = "instance-1";
    assert_eq!(store.load(&saga, i1).await.unwrap(), None);

    let event = Uuid::new_v4();
    let mut first = change(&saga, i1, 0, r#"{"step":1}"#);
    first.handled_event = Some(event);
    first.schedule.push(deadline(&saga, i1, "timeout", 3600));
    assert_eq!(store.save(first.clone()).await.unwrap(), SagaSaved::Saved);
    let state = store
        .load(&saga, i1)
        .await
        .unwrap()
        .expect("saved state loads");
    assert_eq!((state.version, state.completed), (1, false));
    assert_eq!(state.data, Bytes::from_static(br#"{"step":1}"#));
    assert!(store.has_handled(&saga, event).await.unwrap());

    // The same event again is a no-op, even with a stale version.
    assert_eq!(store.save(first).await.unwrap(), SagaSaved::AlreadyHandled);
    assert_eq!(store.load(&saga, i1).await.unwrap().unwrap().version, 1);

    // A stale version is a conflict.
    let err = store
        .save(change(&saga, i1, 0, r#"{"step":9}"#))
        .await
        .unwrap_err();
    assert!(
        err.is_conflict(),
        "a stale saga version conflicts, got {err:?}"
    );

    // Scheduling the same key replaces the deadline; other keys stay.
    let mut second = change(&saga, i1, 1, r#"{"step":2}"#);
    second.schedule.push(deadline(&saga, i1, "timeout", -1));
    second.schedule.push(deadline(&saga, i1, "reminder", 7200));
    store.save(second).await.unwrap();
    let pending = store.deadlines_of(&saga, i1).await.unwrap();
    assert_eq!(
        pending.len(),
        2,
        "a key is replaced, not doubled: {pending:?}"
    );

    let due = store.due_deadlines(&saga, Utc::now(), 1000).await.unwrap();
    assert_eq!(due.len(), 1, "only the past deadline is due");
    assert_eq!((due[0].attempts, due[0].retry_at), (0, None));
    assert_eq!(due[0].key, "timeout");
    assert_eq!(due[0].payload, Bytes::from_static(br#"{"kind":"timeout"}"#));

    // Firing it removes it, atomically with the state; a second firing is a no-op.
    let mut fired = change(&saga, i1, 2, r#"{"step":3}"#);
    fired.fired_deadline = Some(due[0].id);
    assert_eq!(store.save(fired.clone()).await.unwrap(), SagaSaved::Saved);
    fired.expected_version = 3;
    assert_eq!(
        store.save(fired).await.unwrap(),
        SagaSaved::AlreadyHandled,
        "a deadline fires once"
    );
    assert!(store
        .due_deadlines(&saga, Utc::now(), 1000)
        .await
        .unwrap()
        .is_empty());

    // Cancel and complete.
    let mut done = change(&saga, i1, 3, r#"{"step":4}"#);
    done.cancel.push("reminder".into());
    done.completed = true;
    store.save(done).await.unwrap();
    assert!(
        store.deadlines_of(&saga, i1).await.unwrap().is_empty(),
        "cancel removes the deadline"
    );
    let state = store.load(&saga, i1).await.unwrap().unwrap();
    assert!(state.completed && state.version == 4);

    // Instances are independent.
    assert_eq!(store.load(&saga, "instance-2").await.unwrap(), None);
}

/// The deadline side of [`SagaStore`] under faults and load: a failing deadline is parked
/// (counted, kept with its error, left out until its next attempt) and the due query is per saga,
/// so one saga's backlog never hides another's deadlines.
async fn deadlines_park_and_stay_per_saga(store: Arc<dyn SagaStore>) {
    let (busy, quiet) = (unique_category("busy"), unique_category("quiet"));
    let now = Utc::now();

    // 150 due deadlines of one saga, due before the other saga's single one.
    let mut backlog = change(&busy, "i", 0, "{}");
    for n in 0..150 {
        backlog
            .schedule
            .push(deadline(&busy, "i", &format!("k{n}"), -120));
    }
    store.save(backlog).await.unwrap();
    let mut lone = change(&quiet, "i", 0, "{}");
    lone.schedule.push(deadline(&quiet, "i", "timeout", -60));
    store.save(lone).await.unwrap();

    let due = store.due_deadlines(&quiet, now, 100).await.unwrap();
    assert_eq!(
        due.len(),
        1,
        "another saga's backlog hides nothing: {due:?}"
    );
    assert_eq!(
        (due[0].saga.as_str(), due[0].key.as_str()),
        (quiet.as_str(), "timeout")
    );
    let busy_due = store.due_deadlines(&busy, now, 100).await.unwrap();
    assert_eq!(busy_due.len(), 100, "the limit holds");
    assert!(busy_due.iter().all(|d| d.saga == busy));
    assert!(
        busy_due
            .windows(2)
            .all(|w| (w[0].due_at, w[0].id) <= (w[1].due_at, w[1].id)),
        "oldest first"
    );

    // Parking: counted, kept with its error, left out until its next attempt.
    let failing = due[0].clone();
    assert!(store.parked_deadlines(&quiet, 10).await.unwrap().is_empty());
    let retry_at = now + ChronoDuration::seconds(30);
    store
        .defer_deadline(failing.id, retry_at, "order service said no")
        .await
        .unwrap();
    assert!(
        store
            .due_deadlines(&quiet, now, 100)
            .await
            .unwrap()
            .is_empty(),
        "a parked deadline waits for its next attempt"
    );
    let parked = store.parked_deadlines(&quiet, 10).await.unwrap();
    assert_eq!(parked.len(), 1, "a parked deadline is kept and visible");
    assert_eq!(parked[0].id, failing.id);
    assert_eq!(parked[0].attempts, 1);
    assert_eq!(
        parked[0].last_error.as_deref(),
        Some("order service said no")
    );
    let stored_retry = parked[0]
        .retry_at
        .expect("a parked deadline has its next attempt");
    assert!(
        (stored_retry - retry_at).num_milliseconds().abs() <= 1,
        "{stored_retry} vs {retry_at}"
    );
    assert_eq!(
        parked[0].payload, failing.payload,
        "the deadline itself is unchanged"
    );
    let again = store
        .due_deadlines(&quiet, retry_at + ChronoDuration::seconds(1), 100)
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "due again once its next attempt comes");
    assert_eq!(again[0].attempts, 1);

    store
        .defer_deadline(
            failing.id,
            retry_at + ChronoDuration::seconds(60),
            "still no",
        )
        .await
        .unwrap();
    let parked = store.parked_deadlines(&quiet, 10).await.unwrap();
    assert_eq!(parked[0].attempts, 2, "every failure counts");
    assert_eq!(parked[0].last_error.as_deref(), Some("still no"));

    // Deferring a deadline that is gone is no error and brings nothing back.
    store
        .defer_deadline(Uuid::now_v7(), retry_at, "gone")
        .await
        .expect("deferring a missing deadline is fine");

    // A parked deadline still fires once, and then it is no longer listed.
    let mut fired = change(&quiet, "i", 1, "{}");
    fired.fired_deadline = Some(failing.id);
    assert_eq!(store.save(fired).await.unwrap(), SagaSaved::Saved);
    assert!(store.parked_deadlines(&quiet, 10).await.unwrap().is_empty());

    // The far future and the far past are stored, not refused.
    let mut extremes = change(&quiet, "far", 0, "{}");
    let mut far = deadline(&quiet, "far", "never", 0);
    far.due_at = chrono::DateTime::<Utc>::MAX_UTC;
    extremes.schedule.push(far);
    store.save(extremes).await.unwrap();
    let pending = store.deadlines_of(&quiet, "far").await.unwrap();
    assert_eq!(pending.len(), 1);
    assert!(store
        .due_deadlines(&quiet, now, 100)
        .await
        .unwrap()
        .is_empty());
}
