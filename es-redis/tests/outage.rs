//! A private Redis that goes away mid-test and comes back: calls fail fast while it is down,
//! with a typed error and no panic, and work again once it is back.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{PrivateRedis, TempDir};
use es_core::{Cache, CacheExt, Claim, Error, IdempotencyStore, SnapshotStore, StreamId};
use es_redis::{
    RedisCache, RedisConfig, RedisConnection, RedisIdempotencyStore, RedisSnapshotStore,
};

/// Fails the test unless `call` returns `Unavailable` from redis within `limit`; returns how
/// long it took.
async fn fails_fast<T: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    call: impl Future<Output = es_core::Result<T>>,
) -> Duration {
    let started = Instant::now();
    let result = call.await;
    let took = started.elapsed();
    match result {
        Err(Error::Unavailable {
            backend: "redis", ..
        }) => {}
        other => panic!("{what} with Redis down gave {other:?}"),
    }
    assert!(took < limit, "{what} with Redis down took {took:?}");
    took
}

/// Retries `ping` until it succeeds, failing the test after `limit`.
async fn until_back(redis: &RedisConnection, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        match redis.ping().await {
            Ok(()) => return started.elapsed(),
            Err(error) => {
                assert!(
                    started.elapsed() < limit,
                    "Redis was back but calls still failed after {limit:?}: {error}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_fast_while_redis_is_down_and_work_again_after() {
    let dir = TempDir::new("outage");
    let mut server = PrivateRedis::start(&dir, &[]);
    let config = RedisConfig::new(server.url()).with_key_prefix(common::unique_prefix());
    let redis = RedisConnection::connect(config)
        .await
        .expect("private redis");
    let cache = RedisCache::new(redis.clone());
    let idempotency = RedisIdempotencyStore::new(redis.clone());
    let snapshots = RedisSnapshotStore::new(redis.clone());
    let stream = StreamId::new("order-1").unwrap();
    let ttl = Duration::from_secs(60);

    cache
        .set("k", Bytes::from_static(b"v"), None)
        .await
        .unwrap();
    let token = match idempotency.claim("i", "fp", ttl).await.unwrap() {
        Claim::Acquired(token) => token,
        other => panic!("a fresh key: {other:?}"),
    };

    server.shutdown();

    // The timeout is 1 s; a dead server should cost far less, and never more.
    let limit = Duration::from_millis(1500);
    let mut slowest = Duration::ZERO;
    for round in 0..3 {
        for took in [
            fails_fast("cache get", limit, cache.get("k")).await,
            fails_fast("cache set", limit, cache.set("k", Bytes::new(), None)).await,
            fails_fast("claim", limit, idempotency.claim("i", "fp", ttl)).await,
            fails_fast(
                "complete",
                limit,
                idempotency.complete("i", &token, Bytes::new(), ttl),
            )
            .await,
            fails_fast("snapshot load", limit, snapshots.load(&stream)).await,
            fails_fast("ping", limit, redis.ping()).await,
        ] {
            slowest = slowest.max(took);
        }
        let loaded: Option<u32> = cache
            .get_or_load("model", None, || async { Ok::<_, Error>(Some((round, 1))) })
            .await
            .expect("cache-aside answers from the loader while Redis is down");
        assert_eq!(loaded, Some(round));
    }
    eprintln!("slowest call while Redis was down: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(500),
        "a refused connection fails at once instead of waiting out the 1 s timeout \
         (slowest call {slowest:?})"
    );

    server.restart();
    let back = until_back(&redis, Duration::from_secs(5)).await;
    eprintln!("calls worked again {back:?} after Redis was back");

    // The server restarted empty (no persistence): everything starts afresh.
    assert_eq!(cache.get("k").await.unwrap(), None);
    cache
        .set("k", Bytes::from_static(b"again"), None)
        .await
        .unwrap();
    assert_eq!(
        cache.get("k").await.unwrap(),
        Some(Bytes::from_static(b"again"))
    );
    assert!(matches!(
        idempotency.claim("i", "fp", ttl).await.unwrap(),
        Claim::Acquired(_)
    ));
    snapshots
        .save(es_core::Snapshot {
            stream_id: stream.clone(),
            version: 3,
            schema_version: 1,
            payload: Bytes::from_static(b"{}"),
            taken_at: chrono::Utc::now(),
        })
        .await
        .expect("scripts are loaded again into the restarted server");
    assert_eq!(snapshots.load(&stream).await.unwrap().unwrap().version, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_redis_costs_the_timeout_not_a_hang() {
    let dir = TempDir::new("stuck");
    let server = PrivateRedis::start(&dir, &["--enable-debug-command", "local"]);
    let timeout = Duration::from_millis(300);
    let config = RedisConfig::new(server.url())
        .with_key_prefix(common::unique_prefix())
        .with_timeout(timeout);
    let cache = RedisCache::new(RedisConnection::connect(config).await.unwrap());
    cache
        .set("k", Bytes::from_static(b"v"), None)
        .await
        .unwrap();

    // A server busy for two seconds answers nobody meanwhile: a stand-in for a stuck node.
    let busy = {
        let port = server.port;
        std::thread::spawn(move || {
            std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "debug", "sleep", "2"])
                .output()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let took = fails_fast(
        "get from a stuck redis",
        timeout + Duration::from_millis(500),
        cache.get("k"),
    )
    .await;
    assert!(
        took >= timeout,
        "it waited the whole timeout ({took:?}), not less"
    );
    let _ = busy.join();
    let mut answered = None;
    for _ in 0..50 {
        if let Ok(value) = cache.get("k").await {
            answered = Some(value);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        answered,
        Some(Some(Bytes::from_static(b"v"))),
        "answers once unstuck"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_connection_made_while_redis_is_down_works_once_it_is_up() {
    let dir = TempDir::new("lazy");
    let mut server = PrivateRedis::not_started(&dir, &[]);
    let config = RedisConfig::new(server.url()).with_key_prefix(common::unique_prefix());
    let error = RedisConnection::connect(config.clone()).await.unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");

    let redis = RedisConnection::lazy(config).expect("a valid configuration");
    let cache = RedisCache::new(redis.clone());
    fails_fast(
        "get before Redis started",
        Duration::from_millis(1500),
        cache.get("k"),
    )
    .await;

    server.restart();
    until_back(&redis, Duration::from_secs(5)).await;
    cache
        .set("k", Bytes::from_static(b"v"), None)
        .await
        .unwrap();
    assert_eq!(
        cache.get("k").await.unwrap(),
        Some(Bytes::from_static(b"v"))
    );
}
