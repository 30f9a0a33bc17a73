//! Properties that hold for any input, checked with proptest on the in-memory store.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{Account, AccountEvent};
use es_core::memory::MemoryEventStore;
use es_core::{
    Aggregate, EventStore, ExpectedVersion, Metadata, NewEvent, Position, Repository, StreamFilter,
    StreamId,
};
use futures_util::StreamExt;
use proptest::prelude::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

fn account_event() -> impl Strategy<Value = AccountEvent> {
    prop_oneof![
        "[a-z]{1,8}".prop_map(|owner| AccountEvent::Opened { owner }),
        (-1000i64..1000).prop_map(|amount| AccountEvent::Deposited { amount }),
        (-1000i64..1000).prop_map(|amount| AccountEvent::Withdrawn { amount }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Replaying any appended sequence rebuilds the state that folding it directly gives, with
    /// and without snapshots.
    #[test]
    fn replaying_any_sequence_rebuilds_the_same_state(
        events in proptest::collection::vec(account_event(), 0..60),
        every in 1u64..20,
    ) {
        let rt = runtime();
        rt.block_on(async {
            let store = MemoryEventStore::new();
            let stream = Repository::<Account>::stream_id("p").unwrap();
            let mut expected = Account::default();
            for chunk in events.chunks(7) {
                let new = chunk.iter().map(|e| NewEvent::from_domain(e, Metadata::default()).unwrap()).collect();
                store.append(&stream, ExpectedVersion::Any, new).await.unwrap();
            }
            for event in &events {
                expected.apply(event);
            }
            let plain = Repository::<Account>::new(store.clone()).load("p").await.unwrap();
            prop_assert_eq!(&plain.state, &expected);
            prop_assert_eq!(plain.version, events.len() as u64);

            // Snapshot at an arbitrary version, then load through it.
            let with_snapshots = Repository::<Account>::new(store.clone())
                .with_snapshots(store.clone(), every);
            let mut partial = Account::default();
            let cut = (events.len() as u64 / every) * every;
            for event in &events[..cut as usize] {
                partial.apply(event);
            }
            es_core::SnapshotStore::save(&store, es_core::Snapshot {
                stream_id: stream.clone(),
                version: cut,
                schema_version: Account::SNAPSHOT_VERSION,
                payload: serde_json::to_vec(&partial).unwrap().into(),
                taken_at: chrono::Utc::now(),
            }).await.unwrap();
            let loaded = with_snapshots.load("p").await.unwrap();
            prop_assert_eq!(&loaded.state.balance, &expected.balance);
            prop_assert_eq!(&loaded.state.owner, &expected.owner);
            prop_assert_eq!(loaded.version, events.len() as u64);
            Ok(())
        })?;
    }

    /// Racing appends with expected versions never give two events one stream version, and the
    /// versions have no holes.
    #[test]
    fn racing_appends_never_share_a_stream_version(
        writers in 2usize..12,
        attempts in 1usize..6,
        batch in 1usize..4,
    ) {
        let rt = runtime();
        rt.block_on(async {
            let store = Arc::new(MemoryEventStore::new());
            let stream = StreamId::new("race-1").unwrap();
            let mut tasks = Vec::new();
            for _ in 0..writers {
                let (store, stream) = (store.clone(), stream.clone());
                tasks.push(tokio::spawn(async move {
                    let mut won = 0;
                    for _ in 0..attempts {
                        let version = store.stream_version(&stream).await.unwrap().unwrap_or(0);
                        let events = (0..batch).map(|_| NewEvent::raw("E", "{}")).collect();
                        if store.append(&stream, ExpectedVersion::Exact(version), events).await.is_ok() {
                            won += batch;
                        }
                        tokio::task::yield_now().await;
                    }
                    won
                }));
            }
            let mut total = 0;
            for task in tasks {
                total += task.await.unwrap();
            }
            let events = store.read_stream(&stream, 1, usize::MAX).await.unwrap();
            prop_assert_eq!(events.len(), total, "every winning append is stored, nothing else");
            let versions: Vec<u64> = events.iter().map(|e| e.stream_version).collect();
            prop_assert_eq!(versions, (1..=total as u64).collect::<Vec<_>>());
            Ok(())
        })?;
    }

    /// A subscriber sees exactly the appended events, in order, once — whatever the interleaving
    /// of writers and the subscriber's start position.
    #[test]
    fn a_subscriber_sees_exactly_the_appended_events_in_order_once(
        writers in 1usize..6,
        per_writer in 1usize..15,
        start_after in 0usize..10,
    ) {
        let rt = runtime();
        rt.block_on(async {
            let store = Arc::new(MemoryEventStore::new());
            for i in 0..start_after {
                store.append(&StreamId::new(format!("pre-{i}")).unwrap(), ExpectedVersion::Any, vec![NewEvent::raw("E", "{}")]).await.unwrap();
            }
            let from = store.head().await.unwrap();
            let mut subscription = store.subscribe(StreamFilter::All, from);
            let mut tasks = Vec::new();
            for w in 0..writers {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    let mut ids = Vec::new();
                    for _ in 0..per_writer {
                        let event = NewEvent::raw("E", "{}");
                        ids.push(event.event_id);
                        store.append(&StreamId::new(format!("w-{w}")).unwrap(), ExpectedVersion::Any, vec![event]).await.unwrap();
                    }
                    ids
                }));
            }
            let mut written = HashSet::new();
            for task in tasks {
                written.extend(task.await.unwrap());
            }
            let mut last = Position::START;
            let mut seen = HashSet::new();
            while seen.len() < written.len() {
                let event = tokio::time::timeout(std::time::Duration::from_secs(5), subscription.next())
                    .await.expect("events arrive").unwrap().unwrap();
                prop_assert!(event.position > last);
                last = event.position;
                prop_assert!(seen.insert(event.event_id), "delivered twice");
            }
            prop_assert_eq!(&seen, &written);
            Ok(())
        })?;
    }
}
