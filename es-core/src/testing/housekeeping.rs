use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use uuid::Uuid;

use super::unique_category;
use crate::event::Metadata;
use crate::housekeeping::Housekeeping;
use crate::saga::{DeadlineRecord, SagaChange, SagaStore};
use crate::store::Inbox;

fn change(saga: &str, instance: &str, event: Uuid, completed: bool) -> SagaChange {
    SagaChange {
        saga: saga.to_owned(),
        instance: instance.to_owned(),
        expected_version: 0,
        state: Bytes::from_static(b"{}"),
        completed,
        schedule: Vec::new(),
        cancel: Vec::new(),
        handled_event: Some(event),
        fired_deadline: None,
    }
}

/// Checks [`Housekeeping`] on a store that is also the [`Inbox`] and [`SagaStore`] it prunes:
/// entries older than the retention go, newer ones stay, an unfinished saga instance stays
/// however old, and a retention past what the clock reaches removes nothing.
///
/// It lets entries age for about 1.5 s, against a retention of 1 s. Other entries in the store
/// are pruned too (pruning is global): run it on a store no other running test relies on.
pub async fn housekeeping_conformance<S>(store: Arc<S>)
where
    S: Housekeeping + Inbox + SagaStore + 'static,
{
    let consumer = unique_category("hk");
    let saga = unique_category("hksaga");
    let (old_message, new_message) = (Uuid::new_v4(), Uuid::new_v4());
    let (old_event, open_event, new_event) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());

    assert!(store.record(&consumer, old_message).await.unwrap());
    let mut done = change(&saga, "done", old_event, true);
    done.schedule.push(DeadlineRecord::new(
        saga.as_str(),
        "done",
        "reminder",
        Utc::now() + chrono::Duration::days(365),
        Bytes::from_static(b"{}"),
        Metadata::default(),
    ));
    store.save(done).await.unwrap();
    store
        .save(change(&saga, "open", open_event, false))
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(store.record(&consumer, new_message).await.unwrap());
    store
        .save(change(&saga, "done-new", new_event, true))
        .await
        .unwrap();

    let report = store.prune(Duration::from_secs(1)).await.unwrap();
    assert!(
        report.inbox >= 1 && report.saga_inbox >= 2 && report.saga_states >= 1,
        "{report:?}"
    );
    assert!(
        !store.contains(&consumer, old_message).await.unwrap(),
        "an inbox entry older than the retention goes"
    );
    assert!(
        store.contains(&consumer, new_message).await.unwrap(),
        "a newer inbox entry stays"
    );
    assert!(!store.has_handled(&saga, old_event).await.unwrap());
    assert!(!store.has_handled(&saga, open_event).await.unwrap());
    assert!(
        store.has_handled(&saga, new_event).await.unwrap(),
        "a newer saga inbox entry stays"
    );
    assert_eq!(
        store.load(&saga, "done").await.unwrap(),
        None,
        "a finished instance older than the retention goes"
    );
    assert!(
        store.deadlines_of(&saga, "done").await.unwrap().is_empty(),
        "with the deadlines it still had"
    );
    assert!(
        store.load(&saga, "open").await.unwrap().is_some(),
        "an unfinished instance stays, however old"
    );
    assert!(
        store.load(&saga, "done-new").await.unwrap().is_some(),
        "a newer finished instance stays"
    );

    let report = store.prune(Duration::MAX).await.unwrap();
    assert_eq!(
        (report.inbox, report.saga_inbox, report.saga_states),
        (0, 0, 0),
        "nothing is older than forever"
    );
    assert!(store.contains(&consumer, new_message).await.unwrap());
}
