//! Writers racing on one stream: the database enforces the expected version.

mod common;

use std::sync::Arc;

use es_core::testing::sample_event;
use es_core::{Error, EventStore, ExpectedVersion, StreamId};
use es_postgres::PgConfig;
use tokio::sync::Barrier;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_racing_writers_get_one_winner_per_version_and_typed_conflicts() {
    let mut config = PgConfig::new(common::schema_name("race"));
    config.max_connections = 32;
    let store = common::store_with(config).await;
    let stream = StreamId::new("account-race").unwrap();
    const WRITERS: u64 = 32;
    const ROUNDS: u64 = 10;

    for round in 0..ROUNDS {
        // Every writer expects the version the stream has at the start of the round.
        let barrier = Arc::new(Barrier::new(WRITERS as usize));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let (store, stream, barrier) = (store.clone(), stream.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store
                        .append(
                            &stream,
                            ExpectedVersion::Exact(round),
                            vec![sample_event("Raced", round * 100 + writer)],
                        )
                        .await
                })
            })
            .collect();
        let mut winners = 0;
        for task in tasks {
            match task.await.expect("writer task") {
                Ok(result) => {
                    winners += 1;
                    assert_eq!(result.next_expected_version, round + 1);
                }
                Err(Error::Conflict {
                    stream: conflicted,
                    expected,
                    actual,
                }) => {
                    assert_eq!(conflicted, stream);
                    assert_eq!(expected, ExpectedVersion::Exact(round));
                    assert_eq!(
                        actual,
                        Some(round + 1),
                        "a loser learns the version the winner made"
                    );
                }
                Err(other) => panic!("a losing writer must get a typed conflict, got {other:?}"),
            }
        }
        assert_eq!(
            winners, 1,
            "round {round}: exactly one of {WRITERS} writers wins"
        );
    }

    let events = store.read_stream(&stream, 1, 1000).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        (1..=ROUNDS).collect::<Vec<_>>(),
        "one event per version, no gap, no double"
    );
    assert_eq!(store.stream_version(&stream).await.unwrap(), Some(ROUNDS));
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_with_retries_all_land_in_one_gapless_stream() {
    let mut config = PgConfig::new(common::schema_name("retry"));
    config.max_connections = 32;
    let store = common::store_with(config).await;
    let stream = StreamId::new("account-retry").unwrap();
    const WRITERS: u64 = 32;
    const EACH: u64 = 5;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (store, stream) = (store.clone(), stream.clone());
            tokio::spawn(async move {
                let mut conflicts = 0u64;
                for i in 0..EACH {
                    loop {
                        let version = store.stream_version(&stream).await.unwrap().unwrap_or(0);
                        match store
                            .append(
                                &stream,
                                ExpectedVersion::Exact(version),
                                vec![sample_event("Raced", writer * 1000 + i)],
                            )
                            .await
                        {
                            Ok(_) => break,
                            Err(e) if e.is_conflict() => conflicts += 1,
                            Err(e) => panic!("unexpected error {e:?}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.unwrap();
    }
    let events = store.read_stream_to_end(&stream, 1).await.unwrap();
    assert_eq!(events.len() as u64, WRITERS * EACH);
    assert!(events
        .iter()
        .enumerate()
        .all(|(i, e)| e.stream_version == i as u64 + 1));
    assert!(conflicts > 0, "the writers did race");
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn units_touching_the_same_streams_in_opposite_orders_do_not_deadlock() {
    let store = common::store("order").await;
    let (a, b) = (
        StreamId::new("pair-a").unwrap(),
        StreamId::new("pair-b").unwrap(),
    );
    store
        .append_many(vec![
            es_core::StreamAppend::new(a.clone(), ExpectedVersion::Any, vec![sample_event("A", 0)]),
            es_core::StreamAppend::new(b.clone(), ExpectedVersion::Any, vec![sample_event("B", 0)]),
        ])
        .await
        .unwrap();
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let (store, a, b) = (store.clone(), a.clone(), b.clone());
            tokio::spawn(async move {
                for i in 0..20 {
                    let (first, second) = if t % 2 == 0 { (&a, &b) } else { (&b, &a) };
                    store
                        .append_many(vec![
                            es_core::StreamAppend::new(
                                first.clone(),
                                ExpectedVersion::Any,
                                vec![sample_event("X", t * 100 + i)],
                            ),
                            es_core::StreamAppend::new(
                                second.clone(),
                                ExpectedVersion::Any,
                                vec![sample_event("Y", t * 100 + i)],
                            ),
                        ])
                        .await
                        .expect("no deadlock, no conflict for `Any`");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(store.stream_version(&a).await.unwrap(), Some(161));
    assert_eq!(store.stream_version(&b).await.unwrap(), Some(161));
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_units_of_work_on_a_small_pool_get_typed_conflicts_not_timeouts() {
    let mut config = PgConfig::new(common::schema_name("uowrace"));
    // Fewer connections than writers: a loser must not need a second connection while it
    // holds its transaction's.
    config.max_connections = 4;
    config.acquire_timeout = std::time::Duration::from_secs(3);
    let store = common::store_with(config).await;
    let stream = StreamId::new("consumer-race").unwrap();
    for round in 0..5u64 {
        let barrier = Arc::new(Barrier::new(16));
        let tasks: Vec<_> = (0..16u64)
            .map(|writer| {
                let (store, stream, barrier) = (store.clone(), stream.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let unit = es_core::UnitOfWork::new()
                        .append(es_core::StreamAppend::new(
                            stream,
                            ExpectedVersion::Exact(round),
                            vec![sample_event("Handled", round * 100 + writer)],
                        ))
                        .handled(es_core::InboxEntry::new("racer", uuid::Uuid::new_v4()));
                    store.commit(unit).await
                })
            })
            .collect();
        let mut winners = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => winners += 1,
                Err(Error::Conflict { actual, .. }) => assert_eq!(actual, Some(round + 1)),
                Err(other) => panic!("a loser gets a typed conflict, got {other:?}"),
            }
        }
        assert_eq!(winners, 1, "round {round}");
    }
    common::drop_schema(&store).await;
}
