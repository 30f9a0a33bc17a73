//! The Redis snapshot store: never backwards under races, exact round trips, damage.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use es_core::{Error, Snapshot, SnapshotStore, StreamId};
use es_redis::RedisSnapshotStore;

fn snapshot(stream: &StreamId, version: u64) -> Snapshot {
    Snapshot {
        stream_id: stream.clone(),
        version,
        schema_version: 3,
        payload: Bytes::from(format!(r#"{{"v":{version}}}"#)),
        taken_at: Utc::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_saves_never_move_a_snapshot_backwards() {
    let store = Arc::new(RedisSnapshotStore::new(common::shared_redis().await));
    let stream = StreamId::for_aggregate("order", "race").unwrap();

    let reader = {
        let (store, stream) = (store.clone(), stream.clone());
        tokio::spawn(async move {
            let mut seen = 0;
            for _ in 0..200 {
                if let Some(loaded) = store.load(&stream).await.unwrap() {
                    assert!(
                        loaded.version >= seen,
                        "went from {seen} back to {}",
                        loaded.version
                    );
                    assert_eq!(
                        loaded.payload,
                        Bytes::from(format!(r#"{{"v":{}}}"#, loaded.version))
                    );
                    seen = loaded.version;
                }
            }
        })
    };
    // Versions 1..=64 saved by concurrent tasks, highest first for half of them, so older
    // snapshots really do arrive after newer ones.
    let writers: Vec<_> = (1..=64u64)
        .map(|i| if i % 2 == 0 { 66 - i } else { i })
        .map(|version| {
            let (store, stream) = (store.clone(), stream.clone());
            tokio::spawn(async move { store.save(snapshot(&stream, version)).await })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap().unwrap();
    }
    reader.await.unwrap();
    let last = store.load(&stream).await.unwrap().unwrap();
    assert_eq!(last.version, 64);
    assert_eq!(last.payload, Bytes::from_static(br#"{"v":64}"#));
}

#[tokio::test]
async fn a_snapshot_round_trips_exactly() {
    let store = RedisSnapshotStore::new(common::shared_redis().await);
    let stream = StreamId::new("odd stream id: {tag} ünïcode").unwrap();
    let saved = Snapshot {
        stream_id: stream.clone(),
        version: u64::MAX - 1,
        schema_version: u32::MAX,
        payload: Bytes::from((0..=255u8).collect::<Vec<_>>()),
        taken_at: Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap(),
    };
    store.save(saved.clone()).await.unwrap();
    assert_eq!(store.load(&stream).await.unwrap(), Some(saved.clone()));

    // Above 2^53 a float comparison could not tell these apart; the store must.
    store.save(snapshot(&stream, u64::MAX - 2)).await.unwrap();
    assert_eq!(
        store.load(&stream).await.unwrap().unwrap().version,
        u64::MAX - 1
    );
    store.save(snapshot(&stream, u64::MAX)).await.unwrap();
    assert_eq!(
        store.load(&stream).await.unwrap().unwrap().version,
        u64::MAX
    );
    // A shorter decimal is a smaller number, though `"9" > "10"` as text.
    let other = StreamId::new("order-digits").unwrap();
    store.save(snapshot(&other, 10)).await.unwrap();
    store.save(snapshot(&other, 9)).await.unwrap();
    assert_eq!(store.load(&other).await.unwrap().unwrap().version, 10);
}

#[tokio::test]
async fn a_snapshot_store_with_a_ttl_lets_snapshots_expire() {
    let store =
        RedisSnapshotStore::new(common::shared_redis().await).with_ttl(Duration::from_millis(150));
    let stream = StreamId::new("order-ttl").unwrap();
    store.save(snapshot(&stream, 1)).await.unwrap();
    assert!(store.load(&stream).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.load(&stream).await.unwrap(), None);

    let forever = RedisSnapshotStore::new(store.connection().clone());
    forever.save(snapshot(&stream, 2)).await.unwrap();
    let raw = redis::Client::open(common::redis_url()).unwrap();
    let mut raw = raw.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(forever.redis_key(&stream))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(ttl, -1, "without a TTL a snapshot stays");
}

#[tokio::test]
async fn a_damaged_snapshot_is_a_serialization_error_not_a_panic() {
    let store = RedisSnapshotStore::new(common::shared_redis().await);
    let raw = redis::Client::open(common::redis_url()).unwrap();
    let mut raw = raw.get_multiplexed_async_connection().await.unwrap();
    let damaged = [
        (
            "order-1",
            vec![
                ("version", "ten"),
                ("schema_version", "1"),
                ("payload", "{}"),
                ("taken_at", "2024-01-01T00:00:00Z"),
            ],
        ),
        (
            "order-2",
            vec![
                ("version", "10"),
                ("schema_version", "-1"),
                ("payload", "{}"),
                ("taken_at", "2024-01-01T00:00:00Z"),
            ],
        ),
        (
            "order-3",
            vec![
                ("version", "10"),
                ("schema_version", "1"),
                ("payload", "{}"),
                ("taken_at", "yesterday"),
            ],
        ),
        ("order-4", vec![("version", "10")]),
    ];
    for (stream, fields) in damaged {
        let stream = StreamId::new(stream).unwrap();
        let _: () = redis::cmd("HSET")
            .arg(store.redis_key(&stream))
            .arg(fields)
            .query_async(&mut raw)
            .await
            .unwrap();
        let error = store.load(&stream).await.unwrap_err();
        assert!(
            matches!(error, Error::Serialization { .. }),
            "{stream}: {error:?}"
        );
    }

    let wrong_type = StreamId::new("order-5").unwrap();
    let _: () = redis::cmd("SET")
        .arg(store.redis_key(&wrong_type))
        .arg("a string, not a hash")
        .query_async(&mut raw)
        .await
        .unwrap();
    let error = store.load(&wrong_type).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::Backend {
                backend: "redis",
                ..
            }
        ),
        "a key of another type is refused, not retried: {error:?}"
    );
}
