//! Measures the cost of this crate's layer over the raw redis crate, in one run:
//! sequential SET/GET and 64 tasks sharing the connection, raw `ConnectionManager` beside
//! `RedisCache`, plus idempotency claims.
//!
//! ```text
//! cargo run -p es-redis --release --example redis_throughput   # REDIS_URL to point elsewhere
//! ```

use std::time::{Duration, Instant};

use bytes::Bytes;
use es_core::{Cache, IdempotencyStore};
use es_redis::{RedisCache, RedisConfig, RedisConnection, RedisIdempotencyStore};
use redis::aio::ConnectionManager;

const SEQUENTIAL_OPS: u64 = 20_000;
const TASKS: u64 = 64;
const OPS_PER_TASK: u64 = 2_000;

fn rate(ops: u64, took: Duration) -> f64 {
    ops as f64 / took.as_secs_f64()
}

async fn raw_sequential(connection: &mut ConnectionManager, prefix: &str) -> Duration {
    let started = Instant::now();
    for n in 0..SEQUENTIAL_OPS / 2 {
        let key = format!("{prefix}raw:{n}");
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(&b"value"[..])
            .query_async(connection)
            .await
            .expect("SET");
        let _: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(connection)
            .await
            .expect("GET");
    }
    started.elapsed()
}

async fn cache_sequential(cache: &RedisCache) -> Duration {
    let started = Instant::now();
    for n in 0..SEQUENTIAL_OPS / 2 {
        let key = format!("seq:{n}");
        cache
            .set(&key, Bytes::from_static(b"value"), None)
            .await
            .expect("set");
        cache.get(&key).await.expect("get");
    }
    started.elapsed()
}

async fn raw_shared(connection: &ConnectionManager, prefix: &str) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let mut connection = connection.clone();
            let key = format!("{prefix}raw-shared:{task}");
            tokio::spawn(async move {
                for _ in 0..OPS_PER_TASK {
                    let _: () = redis::cmd("SET")
                        .arg(&key)
                        .arg(&b"value"[..])
                        .query_async(&mut connection)
                        .await
                        .expect("SET");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    started.elapsed()
}

async fn cache_shared(cache: &RedisCache) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let cache = cache.clone();
            let key = format!("shared:{task}");
            tokio::spawn(async move {
                for _ in 0..OPS_PER_TASK {
                    cache
                        .set(&key, Bytes::from_static(b"value"), None)
                        .await
                        .expect("set");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    started.elapsed()
}

async fn claims_shared(store: &RedisIdempotencyStore) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0..OPS_PER_TASK {
                    store
                        .claim(&format!("{task}:{n}"), "fp", Duration::from_secs(60))
                        .await
                        .expect("claim");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| es_redis::DEFAULT_URL.to_owned());
    let prefix = format!("bench:{}:", std::process::id());
    let config = RedisConfig::new(&url).with_key_prefix(&prefix);
    let redis = RedisConnection::connect(config)
        .await
        .expect("a Redis at REDIS_URL");
    let cache = RedisCache::new(redis.clone());
    let claims = RedisIdempotencyStore::new(redis);
    let mut raw = ConnectionManager::new(redis::Client::open(url.as_str()).expect("url"))
        .await
        .expect("raw connection");

    // Warm up both connections and the script cache.
    raw_sequential(&mut raw, &prefix).await;
    cache_sequential(&cache).await;

    println!(
        "{:<34} {:>12} {:>12} {:>7}",
        "scenario", "raw ops/s", "es-redis", "ratio"
    );
    for run in 1..=3 {
        let raw_seq = rate(SEQUENTIAL_OPS, raw_sequential(&mut raw, &prefix).await);
        let cache_seq = rate(SEQUENTIAL_OPS, cache_sequential(&cache).await);
        println!(
            "{:<34} {raw_seq:>12.0} {cache_seq:>12.0} {:>7.2}",
            format!("sequential SET/GET (run {run})"),
            cache_seq / raw_seq
        );
        let raw_par = rate(TASKS * OPS_PER_TASK, raw_shared(&raw, &prefix).await);
        let cache_par = rate(TASKS * OPS_PER_TASK, cache_shared(&cache).await);
        println!(
            "{:<34} {raw_par:>12.0} {cache_par:>12.0} {:>7.2}",
            format!("{TASKS} tasks, one connection (run {run})"),
            cache_par / raw_par
        );
    }
    let claim_rate = rate(TASKS * OPS_PER_TASK, claims_shared(&claims).await);
    println!(
        "{:<34} {:>12} {claim_rate:>12.0}",
        "idempotency claims, 64 tasks", "-"
    );

    // Leave nothing behind on a shared server (SCAN, not KEYS: others are using it).
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = match redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut raw)
            .await
        {
            Ok(page) => page,
            Err(_) => break,
        };
        if !keys.is_empty() {
            let _: Result<u64, _> = redis::cmd("UNLINK").arg(&keys).query_async(&mut raw).await;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}
