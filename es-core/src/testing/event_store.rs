use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::{sample_event, unique_category};
use crate::error::Error;
use crate::store::{
    CommitOutcome, EventStore, InboxEntry, ReplayedEvent, StreamAppend, UnitOfWork,
};
use crate::stream::ExpectedVersion;
use crate::stream::{Position, StreamFilter, StreamId};

/// Checks every guarantee of [`EventStore`] against `store`.
///
/// The store must be empty of the categories this suite makes up (it makes up fresh ones).
/// Checkpoints written through a [`UnitOfWork`] are checked only for not failing; the
/// [`checkpoint_store_conformance`](super::checkpoint_store_conformance) suite reads them.
pub async fn event_store_conformance(store: Arc<dyn EventStore>) {
    appends_and_reads_a_stream(&*store).await;
    replays_several_streams_in_one_call(&*store).await;
    expected_versions_are_enforced(&*store).await;
    a_conflict_writes_nothing(&*store).await;
    empty_appends_only_check_the_expectation(&*store).await;
    multi_stream_appends_are_atomic(&*store).await;
    a_multi_stream_conflict_names_its_stream(store.clone()).await;
    a_stream_twice_in_one_unit_is_refused(&*store).await;
    duplicate_event_ids_are_refused(&*store).await;
    inbox_entries_commit_with_the_events(&*store).await;
    a_batch_commits_its_inbox_entries_all_or_none(&*store).await;
    a_message_on_one_stream_commits_all_or_none(&*store).await;
    a_message_handled_twice_at_once_commits_once(store.clone()).await;
    reads_all_in_order_by_category(&*store).await;
    racing_writers_get_one_winner_per_version(store.clone()).await;
    subscription_catches_up_then_follows_live(store.clone()).await;
}

fn stream(category: &str, id: &str) -> StreamId {
    StreamId::for_aggregate(category, id).expect("valid stream id")
}

async fn appends_and_reads_a_stream(store: &dyn EventStore) {
    let s = stream(&unique_category("es"), "1");
    assert_eq!(
        store.stream_version(&s).await.unwrap(),
        None,
        "a new stream has no version"
    );
    assert!(
        store.read_stream(&s, 1, 10).await.unwrap().is_empty(),
        "an unknown stream reads empty"
    );

    let events: Vec<_> = (1..=5).map(|n| sample_event("Happened", n)).collect();
    let result = store
        .append(&s, ExpectedVersion::NoStream, events.clone())
        .await
        .expect("the first append to a new stream succeeds");
    assert_eq!(result.next_expected_version, 5);
    assert_eq!(result.positions.len(), 5);
    assert!(
        result.positions.windows(2).all(|w| w[0] < w[1]),
        "positions increase within an append"
    );

    let read = store.read_stream(&s, 1, 100).await.unwrap();
    assert_eq!(read.len(), 5);
    for (i, (recorded, written)) in read.iter().zip(&events).enumerate() {
        assert_eq!(
            recorded.stream_version,
            i as u64 + 1,
            "versions count from 1"
        );
        assert_eq!(recorded.event_id, written.event_id);
        assert_eq!(recorded.stream_id, s);
        assert_eq!(recorded.event_type, written.event_type);
        assert_eq!(recorded.schema_version, written.schema_version);
        assert_eq!(
            recorded.payload, written.payload,
            "payload bytes come back untouched"
        );
        assert_eq!(
            recorded.metadata, written.metadata,
            "metadata comes back whole"
        );
        assert_eq!(recorded.position, result.positions[i]);
    }
    assert_eq!(store.stream_version(&s).await.unwrap(), Some(5));

    let tail = store.read_stream(&s, 3, 2).await.unwrap();
    assert_eq!(
        tail.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        vec![3, 4],
        "read_stream starts at from_version and honours the limit"
    );
    assert!(store.read_stream(&s, 6, 10).await.unwrap().is_empty());
    let all = store.read_stream_to_end(&s, 2).await.unwrap();
    assert_eq!(all.len(), 4);

    // A replay reads the same events, with only what folding needs.
    let replayed = store.replay_stream(&s, 2, 3).await.unwrap();
    let expected: Vec<ReplayedEvent> = read[1..4]
        .iter()
        .cloned()
        .map(ReplayedEvent::from)
        .collect();
    assert_eq!(
        replayed, expected,
        "replay_stream starts at from_version, honours the limit and agrees with read_stream"
    );
    assert!(store.replay_stream(&s, 6, 10).await.unwrap().is_empty());
    assert!(
        store
            .replay_stream(&stream(&unique_category("es"), "none"), 1, 10)
            .await
            .unwrap()
            .is_empty(),
        "an unknown stream replays empty"
    );
    assert!(
        store.head().await.unwrap() >= result.positions[4],
        "head is at or past the newest event"
    );
}

async fn replays_several_streams_in_one_call(store: &dyn EventStore) {
    let category = unique_category("many");
    let (a, b, c, none) = (
        stream(&category, "a"),
        stream(&category, "b"),
        stream(&category, "c"),
        stream(&category, "none"),
    );
    for (s, n) in [(&a, 5u64), (&b, 3), (&c, 1)] {
        let events = (1..=n).map(|i| sample_event("Happened", i)).collect();
        store
            .append(s, ExpectedVersion::NoStream, events)
            .await
            .unwrap();
    }
    // Streams out of order, one asked twice from different versions, one unknown, one read
    // past its end, and a limit that cuts the longest.
    let requests = vec![
        (b.clone(), 2),
        (a.clone(), 1),
        (none.clone(), 1),
        (c.clone(), 2),
        (a.clone(), 4),
    ];
    let answers = store.replay_streams(&requests, 3).await.unwrap();
    let mut expected = Vec::new();
    for (s, from) in &requests {
        expected.push(store.replay_stream(s, *from, 3).await.unwrap());
    }
    assert_eq!(
        answers, expected,
        "replay_streams answers each request as replay_stream would, in request order"
    );
    let versions: Vec<Vec<u64>> = answers
        .iter()
        .map(|page| page.iter().map(|e| e.stream_version).collect())
        .collect();
    assert_eq!(
        versions,
        vec![vec![2, 3], vec![1, 2, 3], vec![], vec![], vec![4, 5]],
        "each stream from its own version, at most `limit` events each"
    );
    assert!(
        store.replay_streams(&[], 10).await.unwrap().is_empty(),
        "no requests, no answers"
    );
}

async fn expected_versions_are_enforced(store: &dyn EventStore) {
    let s = stream(&unique_category("ev"), "1");
    let err = store
        .append(
            &s,
            ExpectedVersion::StreamExists,
            vec![sample_event("A", 1)],
        )
        .await
        .expect_err("StreamExists on a missing stream conflicts");
    assert!(
        matches!(err, Error::Conflict { actual: None, .. }),
        "got {err:?}"
    );
    let err = store
        .append(&s, ExpectedVersion::Exact(1), vec![sample_event("A", 1)])
        .await
        .expect_err("Exact(1) on a missing stream conflicts");
    assert!(err.is_conflict());

    store
        .append(&s, ExpectedVersion::Exact(0), vec![sample_event("A", 1)])
        .await
        .expect("Exact(0) on a missing stream is NoStream");
    let err = store
        .append(&s, ExpectedVersion::NoStream, vec![sample_event("A", 2)])
        .await
        .expect_err("NoStream on an existing stream conflicts");
    match &err {
        Error::Conflict {
            stream,
            expected,
            actual,
        } => {
            assert_eq!(stream, &s);
            assert_eq!(*expected, ExpectedVersion::NoStream);
            assert_eq!(*actual, Some(1), "the conflict reports the actual version");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let err = store
        .append(&s, ExpectedVersion::Exact(5), vec![sample_event("A", 2)])
        .await
        .expect_err("a wrong exact version conflicts");
    assert!(
        matches!(
            err,
            Error::Conflict {
                actual: Some(1),
                ..
            }
        ),
        "got {err:?}"
    );
    store
        .append(&s, ExpectedVersion::Exact(1), vec![sample_event("A", 2)])
        .await
        .expect("the right exact version appends");
    store
        .append(
            &s,
            ExpectedVersion::StreamExists,
            vec![sample_event("A", 3)],
        )
        .await
        .expect("StreamExists on an existing stream appends");
    let r = store
        .append(&s, ExpectedVersion::Any, vec![sample_event("A", 4)])
        .await
        .expect("Any appends");
    assert_eq!(r.next_expected_version, 4);
}

async fn a_conflict_writes_nothing(store: &dyn EventStore) {
    let s = stream(&unique_category("cw"), "1");
    store
        .append(&s, ExpectedVersion::NoStream, vec![sample_event("A", 1)])
        .await
        .unwrap();
    let _ = store
        .append(
            &s,
            ExpectedVersion::Exact(0),
            vec![sample_event("A", 2), sample_event("A", 3)],
        )
        .await
        .expect_err("conflict");
    assert_eq!(
        store.read_stream(&s, 1, 10).await.unwrap().len(),
        1,
        "a conflicting append writes nothing"
    );
}

async fn empty_appends_only_check_the_expectation(store: &dyn EventStore) {
    let s = stream(&unique_category("em"), "1");
    let r = store
        .append(&s, ExpectedVersion::NoStream, vec![])
        .await
        .unwrap();
    assert_eq!(r.next_expected_version, 0);
    assert!(r.positions.is_empty());
    assert_eq!(
        store.stream_version(&s).await.unwrap(),
        None,
        "an empty append creates no stream"
    );
    store
        .append(&s, ExpectedVersion::Any, vec![sample_event("A", 1)])
        .await
        .unwrap();
    assert!(store
        .append(&s, ExpectedVersion::Exact(0), vec![])
        .await
        .unwrap_err()
        .is_conflict());
}

async fn multi_stream_appends_are_atomic(store: &dyn EventStore) {
    let category = unique_category("ms");
    let (a, b) = (stream(&category, "a"), stream(&category, "b"));
    store
        .append(&b, ExpectedVersion::NoStream, vec![sample_event("B", 1)])
        .await
        .unwrap();

    let err = store
        .append_many(vec![
            StreamAppend::new(
                a.clone(),
                ExpectedVersion::NoStream,
                vec![sample_event("A", 1)],
            ),
            StreamAppend::new(
                b.clone(),
                ExpectedVersion::NoStream,
                vec![sample_event("B", 2)],
            ),
        ])
        .await
        .expect_err("one failed expectation fails the whole append");
    assert_eq!(
        conflict_of(&err),
        Some((b.clone(), Some(1))),
        "the conflict names the stream that exists: {err:?}"
    );
    assert_eq!(
        store.stream_version(&a).await.unwrap(),
        None,
        "nothing was written to the other stream"
    );
    assert_eq!(store.stream_version(&b).await.unwrap(), Some(1));

    let results = store
        .append_many(vec![
            StreamAppend::new(
                a.clone(),
                ExpectedVersion::NoStream,
                vec![sample_event("A", 1)],
            ),
            StreamAppend::new(
                b.clone(),
                ExpectedVersion::Exact(1),
                vec![sample_event("B", 2), sample_event("B", 3)],
            ),
        ])
        .await
        .expect("every expectation holds");
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].next_expected_version, 1);
    assert_eq!(results[1].next_expected_version, 3);
    assert!(
        results[0].positions[0] < results[1].positions[0],
        "positions follow the order of the appends"
    );
}

/// The stream of `error`, when it is a conflict, with the version it found.
fn conflict_of(error: &Error) -> Option<(StreamId, Option<u64>)> {
    match error {
        Error::Conflict { stream, actual, .. } => Some((stream.clone(), *actual)),
        _ => None,
    }
}

async fn a_multi_stream_conflict_names_its_stream(store: Arc<dyn EventStore>) {
    let category = unique_category("msc");
    let (a, b, c) = (
        stream(&category, "a"),
        stream(&category, "b"),
        stream(&category, "c"),
    );
    for s in [&b, &c] {
        store
            .append(s, ExpectedVersion::NoStream, vec![sample_event("X", 1)])
            .await
            .unwrap();
    }
    // The last of three streams expects a version it is not at.
    let err = store
        .append_many(vec![
            StreamAppend::new(
                a.clone(),
                ExpectedVersion::NoStream,
                vec![sample_event("A", 1)],
            ),
            StreamAppend::new(
                b.clone(),
                ExpectedVersion::Exact(1),
                vec![sample_event("B", 2)],
            ),
            StreamAppend::new(
                c.clone(),
                ExpectedVersion::Exact(3),
                vec![sample_event("C", 2)],
            ),
        ])
        .await
        .expect_err("a stream behind its expectation fails the unit");
    assert_eq!(conflict_of(&err), Some((c.clone(), Some(1))), "got {err:?}");
    assert_eq!(
        store.stream_version(&a).await.unwrap(),
        None,
        "nothing written"
    );
    assert_eq!(store.stream_version(&b).await.unwrap(), Some(1));

    // Units racing for the same version of `b`, each with a stream of its own: one wins, and
    // each other one fails with a conflict on `b`, having written nothing.
    let racers: Vec<_> = (0..6)
        .map(|i| {
            let (store, own, b) = (
                store.clone(),
                stream(&category, &format!("own{i}")),
                b.clone(),
            );
            tokio::spawn(async move {
                let result = store
                    .append_many(vec![
                        StreamAppend::new(
                            own.clone(),
                            ExpectedVersion::NoStream,
                            vec![sample_event("Own", i)],
                        ),
                        StreamAppend::new(
                            b.clone(),
                            ExpectedVersion::Exact(1),
                            vec![sample_event("B", 10 + i)],
                        ),
                    ])
                    .await;
                (own, result)
            })
        })
        .collect();
    let mut winners = 0;
    for racer in racers {
        let (own, result) = racer.await.unwrap();
        match result {
            Ok(results) => {
                winners += 1;
                assert_eq!(results[0].stream_id, own);
                assert_eq!(results[1].next_expected_version, 2);
            }
            Err(err) => {
                assert_eq!(conflict_of(&err), Some((b.clone(), Some(2))), "got {err:?}");
                assert_eq!(store.stream_version(&own).await.unwrap(), None);
            }
        }
    }
    assert_eq!(
        winners, 1,
        "one unit takes version 2 of the contended stream"
    );
}

async fn a_stream_twice_in_one_unit_is_refused(store: &dyn EventStore) {
    let s = stream(&unique_category("tw"), "1");
    let err = store
        .append_many(vec![
            StreamAppend::new(s.clone(), ExpectedVersion::Any, vec![sample_event("A", 1)]),
            StreamAppend::new(s.clone(), ExpectedVersion::Any, vec![sample_event("A", 2)]),
        ])
        .await
        .expect_err("a stream twice in one unit is refused");
    assert!(matches!(err, Error::InvalidInput(_)), "got {err:?}");
    assert_eq!(store.stream_version(&s).await.unwrap(), None);
}

async fn duplicate_event_ids_are_refused(store: &dyn EventStore) {
    let category = unique_category("dup");
    let event = sample_event("A", 1);
    store
        .append(
            &stream(&category, "1"),
            ExpectedVersion::Any,
            vec![event.clone()],
        )
        .await
        .unwrap();
    let err = store
        .append(&stream(&category, "2"), ExpectedVersion::Any, vec![event])
        .await
        .expect_err("an event id is stored once");
    assert!(matches!(err, Error::InvalidInput(_)), "got {err:?}");
    assert_eq!(
        store.stream_version(&stream(&category, "2")).await.unwrap(),
        None
    );
}

async fn inbox_entries_commit_with_the_events(store: &dyn EventStore) {
    let category = unique_category("ib");
    let s = stream(&category, "1");
    let cause = uuid::Uuid::new_v4();
    let consumer = format!("consumer-{category}");
    let unit = || {
        UnitOfWork::new()
            .append(StreamAppend::new(
                s.clone(),
                ExpectedVersion::Any,
                vec![sample_event("A", 1)],
            ))
            .handled(InboxEntry::new(consumer.clone(), cause))
            .checkpoint(format!("cp-{category}"), Position::new(1, 1))
    };
    let first = store.commit(unit()).await.expect("first handling commits");
    assert!(matches!(first, CommitOutcome::Committed(ref r) if r.len() == 1));
    let second = store
        .commit(unit())
        .await
        .expect("a redelivery is not an error");
    assert_eq!(
        second,
        CommitOutcome::AlreadyHandled,
        "the inbox entry makes the second commit a no-op"
    );
    assert_eq!(
        store.stream_version(&s).await.unwrap(),
        Some(1),
        "the redelivery wrote nothing"
    );

    // Another consumer handling the same event is independent.
    let other = UnitOfWork::new()
        .append(StreamAppend::new(
            s.clone(),
            ExpectedVersion::Any,
            vec![sample_event("A", 2)],
        ))
        .handled(InboxEntry::new(format!("other-{category}"), cause));
    assert!(matches!(
        store.commit(other).await.unwrap(),
        CommitOutcome::Committed(_)
    ));

    // A conflict leaves no inbox entry behind: the retry can still commit.
    let fresh = uuid::Uuid::new_v4();
    let conflicting = UnitOfWork::new()
        .append(StreamAppend::new(
            s.clone(),
            ExpectedVersion::Exact(0),
            vec![sample_event("A", 3)],
        ))
        .handled(InboxEntry::new(consumer.clone(), fresh));
    assert!(store.commit(conflicting).await.unwrap_err().is_conflict());
    let retry = UnitOfWork::new()
        .append(StreamAppend::new(
            s.clone(),
            ExpectedVersion::Exact(2),
            vec![sample_event("A", 3)],
        ))
        .handled(InboxEntry::new(consumer, fresh));
    assert!(
        matches!(
            store.commit(retry).await.unwrap(),
            CommitOutcome::Committed(_)
        ),
        "a failed commit records no inbox entry"
    );
}

/// A consumer's unit of one message on one stream at a pinned version (which a store may
/// commit without a transaction around it): the inbox entry goes in with the events or not
/// at all, whichever way the append fails.
async fn a_message_on_one_stream_commits_all_or_none(store: &dyn EventStore) {
    let category = unique_category("msg");
    let s = stream(&category, "1");
    let consumer = format!("consumer-{category}");
    let unit = |expected, cause, n| {
        UnitOfWork::new()
            .append(StreamAppend::new(
                s.clone(),
                expected,
                vec![sample_event("A", n)],
            ))
            .handled(InboxEntry::new(consumer.clone(), cause))
    };
    let first = uuid::Uuid::new_v4();
    let committed = store
        .commit(unit(ExpectedVersion::NoStream, first, 1))
        .await
        .expect("a new stream with its message commits");
    assert!(
        matches!(committed, CommitOutcome::Committed(ref r) if r[0].next_expected_version == 1)
    );
    assert_eq!(
        store
            .commit(unit(ExpectedVersion::Exact(1), first, 2))
            .await
            .expect("a redelivery is not an error"),
        CommitOutcome::AlreadyHandled,
        "a handled message writes nothing, though its append alone would commit"
    );
    assert_eq!(store.stream_version(&s).await.unwrap(), Some(1));

    // Each way the append can fail leaves no inbox entry: the retry commits.
    let second = uuid::Uuid::new_v4();
    for (expected, why) in [
        (ExpectedVersion::NoStream, "the stream exists"),
        (
            ExpectedVersion::Exact(3),
            "no event of that version is stored",
        ),
        (ExpectedVersion::Exact(0), "version 1 is taken"),
    ] {
        let error = store
            .commit(unit(expected, second, 2))
            .await
            .expect_err(why);
        assert_eq!(
            conflict_of(&error),
            Some((s.clone(), Some(1))),
            "{why}: a conflict at the stream's version, got {error:?}"
        );
    }
    assert!(
        matches!(
            store
                .commit(unit(ExpectedVersion::Exact(1), second, 2))
                .await
                .unwrap(),
            CommitOutcome::Committed(ref r) if r[0].next_expected_version == 2
        ),
        "a failed commit records no inbox entry"
    );
    // Exact(1) once more, now that version 2 is stored: the version is taken.
    let third = uuid::Uuid::new_v4();
    let error = store
        .commit(unit(ExpectedVersion::Exact(1), third, 3))
        .await
        .expect_err("version 2 is taken");
    assert_eq!(conflict_of(&error), Some((s.clone(), Some(2))));
    assert!(matches!(
        store
            .commit(unit(ExpectedVersion::Exact(2), third, 3))
            .await
            .unwrap(),
        CommitOutcome::Committed(_)
    ));
    assert_eq!(store.stream_version(&s).await.unwrap(), Some(3));
}

/// Two deliveries of one message handled at the same moment, each deciding a stream of its
/// own (a handler that names a new stream per attempt): one commits, the other finds the
/// message handled, and its stream is never written.
async fn a_message_handled_twice_at_once_commits_once(store: Arc<dyn EventStore>) {
    let category = unique_category("twice");
    let consumer = format!("consumer-{category}");
    for round in 0..20 {
        let cause = uuid::Uuid::new_v4();
        let streams = [
            stream(&category, &format!("{round}-a")),
            stream(&category, &format!("{round}-b")),
        ];
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let tasks: Vec<_> = streams
            .iter()
            .map(|s| {
                let unit = UnitOfWork::new()
                    .append(StreamAppend::new(
                        s.clone(),
                        ExpectedVersion::NoStream,
                        vec![sample_event("A", round)],
                    ))
                    .handled(InboxEntry::new(consumer.clone(), cause));
                let (store, barrier) = (store.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.commit(unit).await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.expect("commit task").expect("no error"));
        }
        let committed: Vec<usize> = (0..2)
            .filter(|&i| matches!(outcomes[i], CommitOutcome::Committed(_)))
            .collect();
        assert_eq!(
            committed.len(),
            1,
            "round {round}: one commits, got {outcomes:?}"
        );
        let loser = &streams[1 - committed[0]];
        assert_eq!(
            store.stream_version(loser).await.unwrap(),
            None,
            "round {round}: the delivery that found the message handled wrote nothing"
        );
    }
}

/// A batched consumer's unit: several inbox entries with the appends of their messages.
async fn a_batch_commits_its_inbox_entries_all_or_none(store: &dyn EventStore) {
    let category = unique_category("ibatch");
    let (a, b) = (stream(&category, "a"), stream(&category, "b"));
    let consumer = format!("consumer-{category}");
    let causes: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::new_v4()).collect();
    let batch = |causes: &[uuid::Uuid], expected: u64| {
        causes.iter().fold(
            UnitOfWork::new()
                .append(StreamAppend::new(
                    a.clone(),
                    ExpectedVersion::Exact(expected),
                    vec![sample_event("A", 1)],
                ))
                .append(StreamAppend::new(
                    b.clone(),
                    ExpectedVersion::Exact(expected),
                    vec![sample_event("B", 1)],
                )),
            |unit, cause| unit.handled(InboxEntry::new(consumer.clone(), *cause)),
        )
    };
    // Two of the three messages first, in one commit.
    assert!(matches!(
        store.commit(batch(&causes[..2], 0)).await.unwrap(),
        CommitOutcome::Committed(ref r) if r.len() == 2
    ));
    // A batch holding one of them again writes nothing at all, not even the new entry.
    assert_eq!(
        store.commit(batch(&causes[1..], 1)).await.unwrap(),
        CommitOutcome::AlreadyHandled,
        "one handled message makes the whole batch a no-op"
    );
    assert_eq!(store.stream_version(&a).await.unwrap(), Some(1));
    assert_eq!(store.stream_version(&b).await.unwrap(), Some(1));
    // So the third is still free, and the first two are still taken, one by one.
    assert!(matches!(
        store.commit(batch(&causes[2..], 1)).await.unwrap(),
        CommitOutcome::Committed(_)
    ));
    for cause in &causes[..2] {
        let again = UnitOfWork::new().handled(InboxEntry::new(consumer.clone(), *cause));
        assert_eq!(
            store.commit(again).await.unwrap(),
            CommitOutcome::AlreadyHandled
        );
    }
    // One message twice in a batch is a message handled before.
    let twice = batch(&[causes[2], causes[2]], 2);
    let fresh = uuid::Uuid::new_v4();
    let twice = twice
        .handled(InboxEntry::new(consumer.clone(), fresh))
        .handled(InboxEntry::new(consumer.clone(), fresh));
    assert_eq!(
        store.commit(twice).await.unwrap(),
        CommitOutcome::AlreadyHandled
    );
    assert_eq!(store.stream_version(&a).await.unwrap(), Some(2));
}

async fn reads_all_in_order_by_category(store: &dyn EventStore) {
    let category = unique_category("ra");
    let other = unique_category("rb");
    let mut written = Vec::new();
    for i in 0..6u64 {
        let s = stream(&category, &(i % 3).to_string());
        let r = store
            .append(&s, ExpectedVersion::Any, vec![sample_event("A", i)])
            .await
            .unwrap();
        written.push(r.positions[0]);
        store
            .append(
                &stream(&other, "x"),
                ExpectedVersion::Any,
                vec![sample_event("B", i)],
            )
            .await
            .unwrap();
    }
    let filter = StreamFilter::category(&category);
    let read = store.read_all(&filter, Position::START, 100).await.unwrap();
    assert_eq!(read.len(), 6, "a category read sees only its streams");
    assert!(read.iter().all(|e| e.stream_id.category() == category));
    assert_eq!(
        read.iter().map(|e| e.position).collect::<Vec<_>>(),
        written,
        "in commit order"
    );

    let page = store.read_all(&filter, read[1].position, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.position).collect::<Vec<_>>(),
        written[2..4].to_vec(),
        "after is exclusive; limit holds"
    );

    // A subscription's page holds what read_all reads, and says whether it reached the head:
    // not while events follow it, and once it came back short with nothing held back behind
    // it (everything of the category is safe to read now: read_all has just read it all).
    let first = store.read_page(&filter, Position::START, 4).await.unwrap();
    assert_eq!(
        first.events,
        read[..4].to_vec(),
        "a page reads what read_all does"
    );
    assert!(!first.at_head, "events follow the page: not the head");
    let last = store.read_page(&filter, read[3].position, 4).await.unwrap();
    assert_eq!(last.events, read[4..].to_vec());
    assert!(
        last.at_head,
        "a short page with nothing behind it reached the head"
    );

    let all = store
        .read_all(&StreamFilter::All, read[0].position, 1_000_000)
        .await
        .unwrap();
    assert!(
        all.windows(2).all(|w| w[0].position < w[1].position),
        "read_all is in position order"
    );
    let seen: HashSet<_> = all.iter().map(|e| e.event_id).collect();
    assert!(
        read[1..].iter().all(|e| seen.contains(&e.event_id)),
        "read_all of everything includes the category"
    );
}

async fn racing_writers_get_one_winner_per_version(store: Arc<dyn EventStore>) {
    let s = stream(&unique_category("race"), "1");
    store
        .append(&s, ExpectedVersion::NoStream, vec![sample_event("A", 0)])
        .await
        .unwrap();
    let writers = 16;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (store, s) = (store.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            store
                .append(
                    &s,
                    ExpectedVersion::Exact(1),
                    vec![sample_event("A", w + 1)],
                )
                .await
        }));
    }
    let mut wins = 0;
    for task in tasks {
        match task.await.expect("writer task") {
            Ok(r) => {
                wins += 1;
                assert_eq!(r.next_expected_version, 2);
            }
            Err(e) => assert!(
                matches!(
                    e,
                    Error::Conflict {
                        actual: Some(2),
                        ..
                    }
                ),
                "losers get a typed conflict, got {e:?}"
            ),
        }
    }
    assert_eq!(wins, 1, "exactly one of {writers} racing writers wins");
    assert_eq!(store.stream_version(&s).await.unwrap(), Some(2));
}

async fn subscription_catches_up_then_follows_live(store: Arc<dyn EventStore>) {
    let category = unique_category("sub");
    let filter = StreamFilter::category(&category);
    // Some history first.
    for i in 0..5u64 {
        store
            .append(
                &stream(&category, "h"),
                ExpectedVersion::Any,
                vec![sample_event("A", i)],
            )
            .await
            .unwrap();
    }
    let mut subscription = store.subscribe(filter.clone(), Position::START);
    // Then concurrent writers while the subscriber reads.
    let writers = 8u64;
    let per_writer = 25u64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let category = category.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let events = vec![sample_event("A", i), sample_event("A", i + 1000)];
                store
                    .append(
                        &stream(&category, &format!("w{w}")),
                        ExpectedVersion::Any,
                        events,
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    let expected = 5 + writers * per_writer * 2;
    let mut seen = HashSet::new();
    let mut last = Position::START;
    let collect = async {
        while (seen.len() as u64) < expected {
            let event = subscription
                .next()
                .await
                .expect("a subscription does not end")
                .expect("reads succeed");
            assert!(
                event.position > last,
                "events arrive in position order: {} after {}",
                event.position,
                last
            );
            last = event.position;
            assert!(
                seen.insert(event.event_id),
                "event {} delivered twice",
                event.event_id
            );
            assert_eq!(event.stream_id.category(), category);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), collect)
        .await
        .expect("the subscriber sees every event within a minute");
    for task in tasks {
        task.await.unwrap();
    }
    // Nothing more arrives: no duplicates after the last event.
    let extra = tokio::time::timeout(Duration::from_millis(300), subscription.next()).await;
    assert!(
        extra.is_err(),
        "no event is delivered twice or invented: {extra:?}"
    );

    // A new subscription after a position resumes exactly there.
    let all = store
        .read_all(&filter, Position::START, 10_000)
        .await
        .unwrap();
    let mid = all[all.len() / 2].position;
    let mut resumed = store.subscribe(filter, mid);
    let first = resumed.next().await.unwrap().unwrap();
    assert_eq!(
        first.position,
        all[all.len() / 2 + 1].position,
        "subscribing after a position starts right after it"
    );
}
