//! The Redis cache: key prefix, TTLs as Redis expiries, invalidation, falling through.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use es_core::{Cache, CacheExt, Error};
use es_redis::{RedisCache, RedisConfig, RedisConnection};

/// The remaining time to live of a raw Redis key, in milliseconds (-1: none, -2: no key).
async fn pttl(redis: &str, key: &str) -> i64 {
    let client = redis::Client::open(redis).expect("redis url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut connection)
        .await
        .expect("PTTL")
}

#[tokio::test]
async fn entries_live_under_the_key_prefix_with_their_ttl_as_a_redis_expiry() {
    let cache = RedisCache::new(common::shared_redis().await);
    let prefix = cache.connection().config().key_prefix.clone();
    assert_eq!(cache.redis_key("order:7"), format!("{prefix}cache:order:7"));

    cache
        .set(
            "order:7",
            Bytes::from_static(b"seven"),
            Some(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let ttl = pttl(&common::redis_url(), &cache.redis_key("order:7")).await;
    assert!((1..=10_000).contains(&ttl), "PTTL {ttl} is the 10 s TTL");

    cache
        .set("forever", Bytes::from_static(b"x"), None)
        .await
        .unwrap();
    assert_eq!(
        pttl(&common::redis_url(), &cache.redis_key("forever")).await,
        -1
    );
    cache
        .set(
            "forever",
            Bytes::from_static(b"y"),
            Some(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert!(pttl(&common::redis_url(), &cache.redis_key("forever")).await > 0);

    let neighbour = RedisCache::new(common::shared_redis().await);
    assert_eq!(
        neighbour.get("order:7").await.unwrap(),
        None,
        "another key prefix sees none of these entries"
    );
}

#[tokio::test]
async fn an_entry_is_gone_once_its_ttl_passes() {
    let cache = RedisCache::new(common::shared_redis().await);
    cache
        .set(
            "brief",
            Bytes::from_static(b"b"),
            Some(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    assert_eq!(
        cache.get("brief").await.unwrap(),
        Some(Bytes::from_static(b"b"))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cache.get("brief").await.unwrap(), None);
}

#[tokio::test]
async fn a_zero_ttl_removes_the_entry_and_a_sub_millisecond_one_still_stores_it() {
    let cache = RedisCache::new(common::shared_redis().await);
    cache
        .set("k", Bytes::from_static(b"v"), None)
        .await
        .unwrap();
    cache
        .set("k", Bytes::from_static(b"w"), Some(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(cache.get("k").await.unwrap(), None);

    cache
        .set(
            "tiny",
            Bytes::from_static(b"t"),
            Some(Duration::from_micros(10)),
        )
        .await
        .expect("a TTL under a millisecond is rounded up, not refused");
    cache
        .set("huge", Bytes::from_static(b"h"), Some(Duration::MAX))
        .await
        .expect("an enormous TTL is capped, not refused");
    assert_eq!(
        cache.get("huge").await.unwrap(),
        Some(Bytes::from_static(b"h"))
    );
}

#[tokio::test]
async fn binary_and_empty_values_round_trip() {
    let cache = RedisCache::new(common::shared_redis().await);
    let binary = Bytes::from((0..=255u8).collect::<Vec<_>>());
    cache.set("bin", binary.clone(), None).await.unwrap();
    assert_eq!(cache.get("bin").await.unwrap(), Some(binary));
    cache.set("empty", Bytes::new(), None).await.unwrap();
    assert_eq!(cache.get("empty").await.unwrap(), Some(Bytes::new()));
}

#[tokio::test]
async fn invalidate_removes_every_given_key_and_counts_those_present() {
    let cache = RedisCache::new(common::shared_redis().await);
    for key in ["order:{42}:total", "order:{42}:lines", "order:{43}:total"] {
        cache.set_json(key, &key, None).await.unwrap();
    }
    let removed = cache
        .invalidate([
            "order:{42}:total",
            "order:{42}:lines",
            "order:{42}:never-cached",
        ])
        .await
        .unwrap();
    assert_eq!(removed, 2);
    assert_eq!(cache.get("order:{42}:total").await.unwrap(), None);
    assert_eq!(cache.get("order:{42}:lines").await.unwrap(), None);
    assert!(
        cache.get("order:{43}:total").await.unwrap().is_some(),
        "keys not named stay"
    );
    assert_eq!(cache.invalidate(Vec::<String>::new()).await.unwrap(), 0);
}

#[tokio::test]
async fn an_undecodable_entry_reads_as_a_miss_and_is_reloaded() {
    let cache = RedisCache::new(common::shared_redis().await);
    cache
        .set("model", Bytes::from_static(b"not json"), None)
        .await
        .unwrap();
    let loaded: Option<u32> = cache
        .get_or_load("model", None, || async { Ok::<_, Error>(Some((5, 1))) })
        .await
        .unwrap();
    assert_eq!(loaded, Some(5));
    assert_eq!(cache.get_json::<u32>("model").await.unwrap(), Some(5));
}

#[tokio::test]
async fn an_entry_without_a_version_header_reads_as_a_miss_and_is_replaced() {
    let cache = RedisCache::new(common::shared_redis().await);
    let raw = redis::Client::open(common::redis_url()).unwrap();
    let mut raw = raw.get_multiplexed_async_connection().await.unwrap();
    // What an earlier version of this crate stored: the bare value.
    redis::cmd("SET")
        .arg(cache.redis_key("legacy"))
        .arg("7")
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    assert_eq!(cache.get("legacy").await.unwrap(), None);
    let loaded: Option<u32> = cache
        .get_or_load("legacy", None, || async { Ok::<_, Error>(Some((8, 3))) })
        .await
        .unwrap();
    assert_eq!(loaded, Some(8));
    assert_eq!(cache.get_json::<u32>("legacy").await.unwrap(), Some(8));
}

#[tokio::test]
async fn a_stale_load_by_one_instance_cannot_hide_a_write_marked_by_another() {
    // Two service instances, two connections, one cache.
    let prefix = common::unique_prefix();
    let connect = || async {
        RedisCache::new(
            RedisConnection::connect(
                RedisConfig::new(common::redis_url()).with_key_prefix(prefix.clone()),
            )
            .await
            .unwrap(),
        )
    };
    let (reader, writer) = (connect().await, connect().await);
    let ttl = Some(Duration::from_secs(60));
    for round in 0..20u64 {
        let key = format!("order:{round}");
        let stale: Option<u64> = reader
            .get_or_load(&key, ttl, || async {
                // The reader loaded version 1; the writer commits 2 before it stores.
                writer.mark_changed(&key, 2, ttl).await.unwrap();
                Ok::<_, Error>(Some((1, 1)))
            })
            .await
            .unwrap();
        assert_eq!(stale, Some(1));
        let next: Option<u64> = reader
            .get_or_load(&key, ttl, || async { Ok::<_, Error>(Some((2, 2))) })
            .await
            .unwrap();
        assert_eq!(
            next,
            Some(2),
            "round {round}: read-your-writes after the mark"
        );
    }
}

#[tokio::test]
async fn with_redis_down_reads_fall_through_to_the_loader_fast() {
    // Nothing listens on this port: a Redis that is down.
    let config = RedisConfig::new(format!("redis://127.0.0.1:{}", common::free_port()))
        .with_key_prefix(common::unique_prefix())
        .with_timeout(Duration::from_millis(500));
    let cache = RedisCache::new(RedisConnection::lazy(config).unwrap());

    let started = Instant::now();
    let error = cache.get("anything").await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::Unavailable {
                backend: "redis",
                ..
            }
        ),
        "got {error:?}"
    );
    let mut loads = 0;
    let loaded: Option<String> = cache
        .get_or_load("anything", Some(Duration::from_secs(60)), || {
            loads += 1;
            async { Ok::<_, Error>(Some(("from the store".to_owned(), 1))) }
        })
        .await
        .expect("the loader answers when the cache cannot");
    assert_eq!((loaded.as_deref(), loads), (Some("from the store"), 1));
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "a dead cache cost {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_bad_configuration_is_a_typed_error() {
    for config in [
        RedisConfig::new("not a url"),
        RedisConfig::new(""),
        RedisConfig::new("redis://127.0.0.1:1,redis://127.0.0.1:2"),
        RedisConfig::default().with_timeout(Duration::ZERO),
    ] {
        let error = RedisConnection::lazy(config.clone()).unwrap_err();
        assert!(
            matches!(error, Error::InvalidInput(_)),
            "{config:?} gave {error:?}"
        );
    }
    #[cfg(not(feature = "cluster"))]
    assert!(matches!(
        RedisConnection::lazy(RedisConfig::cluster(["redis://127.0.0.1:7000"])),
        Err(Error::InvalidInput(_))
    ));
}
