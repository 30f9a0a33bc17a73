//! Redis Cluster: a three-node cluster this test starts itself, through the config switch.
#![cfg(feature = "cluster")]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{PrivateRedis, TempDir};
use es_core::testing::{
    cache_conformance, idempotency_conformance, lease_conformance, snapshot_store_conformance,
};
use es_core::{Cache, Claim, IdempotencyStore, SnapshotStore, StreamId};
use es_redis::{
    RedisCache, RedisConfig, RedisConnection, RedisIdempotencyStore, RedisLeaseStore,
    RedisSnapshotStore,
};

/// Three masters, no replicas, every slot assigned; killed when dropped.
struct Cluster {
    nodes: Vec<PrivateRedis>,
    _dir: TempDir,
}

impl Cluster {
    fn start() -> Self {
        let dir = TempDir::new("cluster");
        let nodes: Vec<PrivateRedis> = (0..3)
            .map(|n| {
                let config_file = format!("nodes-{n}.conf");
                PrivateRedis::start(
                    &dir,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &config_file,
                    ],
                )
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            while !node.cli(&["cluster", "info"]).contains("cluster_state:ok") {
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not settle within 20 s"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Cluster { nodes, _dir: dir }
    }

    fn config(&self) -> RedisConfig {
        RedisConfig::cluster(self.nodes.iter().map(PrivateRedis::url))
            .with_key_prefix(common::unique_prefix())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_store_works_on_a_redis_cluster() {
    let cluster = Cluster::start();
    let redis = RedisConnection::connect(cluster.config())
        .await
        .expect("connect to the cluster");
    assert!(redis.is_cluster());

    cache_conformance(Arc::new(RedisCache::new(redis.clone()))).await;
    idempotency_conformance(Arc::new(RedisIdempotencyStore::new(redis.clone()))).await;
    snapshot_store_conformance(Arc::new(RedisSnapshotStore::new(redis.clone()))).await;
    lease_conformance(Arc::new(RedisLeaseStore::new(redis.clone()))).await;

    // Many keys spread over all three masters: the slots really are shared out.
    let cache = RedisCache::new(redis.clone());
    let snapshots = RedisSnapshotStore::new(redis.clone());
    let claims = RedisIdempotencyStore::new(redis.clone());
    for n in 0..60 {
        cache
            .set(&format!("spread-{n}"), Bytes::from_static(b"x"), None)
            .await
            .unwrap();
        let stream = StreamId::new(format!("order-{n}")).unwrap();
        snapshots
            .save(es_core::Snapshot {
                stream_id: stream.clone(),
                version: n,
                schema_version: 1,
                payload: Bytes::from_static(b"{}"),
                taken_at: chrono::Utc::now(),
            })
            .await
            .unwrap();
        assert_eq!(snapshots.load(&stream).await.unwrap().unwrap().version, n);
        assert!(matches!(
            claims
                .claim(&format!("claim-{n}"), "fp", Duration::from_secs(60))
                .await
                .unwrap(),
            Claim::Acquired(_)
        ));
    }
    for node in &cluster.nodes {
        let keys: u64 = node.cli(&["dbsize"]).parse().expect("DBSIZE");
        assert!(keys > 0, "node {} holds none of the keys", node.port);
    }

    // Invalidation across slots (and so across nodes), and within one hash tag.
    let removed = cache
        .invalidate((0..60).map(|n| format!("spread-{n}")))
        .await
        .unwrap();
    assert_eq!(removed, 60);
    for key in ["order:{7}:total", "order:{7}:lines"] {
        cache
            .set(key, Bytes::from_static(b"x"), None)
            .await
            .unwrap();
    }
    assert_eq!(
        cache
            .invalidate(["order:{7}:total", "order:{7}:lines"])
            .await
            .unwrap(),
        2
    );
    assert_eq!(cache.get("order:{7}:total").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_cluster_node_costs_a_bounded_wait_and_its_keys_work_again_when_it_is_back() {
    let mut cluster = Cluster::start();
    let config = cluster.config().with_timeout(Duration::from_secs(1));
    let redis = RedisConnection::connect(config).await.unwrap();
    let cache = RedisCache::new(redis.clone());

    // Find a key that node 0 owns and one that another node owns.
    let mut on_victim = None;
    let mut elsewhere = None;
    for n in 0..100 {
        let key = format!("key-{n}");
        cache
            .set(&key, Bytes::from_static(b"v"), None)
            .await
            .unwrap();
        let owned = cluster.nodes[0].cli(&["exists", &cache.redis_key(&key)]) == "1";
        match (owned, &on_victim, &elsewhere) {
            (true, None, _) => on_victim = Some(key),
            (false, _, None) => elsewhere = Some(key),
            _ => {}
        }
    }
    let (on_victim, elsewhere) = (on_victim.unwrap(), elsewhere.unwrap());

    cluster.nodes[0].shutdown();
    let started = Instant::now();
    let error = cache.get(&on_victim).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            error,
            es_core::Error::Unavailable {
                backend: "redis",
                ..
            }
        ),
        "a key on the dead node gave {error:?}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "a key on the dead node took {took:?}"
    );
    eprintln!("a key on the dead node failed after {took:?}");
    // Keys on live nodes are not the test's promise (the cluster may be refreshing its
    // topology), but they must not panic or hang past the timeout either.
    let started = Instant::now();
    let _ = cache.get(&elsewhere).await;
    assert!(started.elapsed() < Duration::from_millis(1500));

    cluster.nodes[0].restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match cache
            .set(&on_victim, Bytes::from_static(b"again"), None)
            .await
        {
            Ok(()) => break,
            Err(error) => {
                assert!(
                    Instant::now() < deadline,
                    "still failing 20 s after the node is back: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(
        cache.get(&on_victim).await.unwrap(),
        Some(Bytes::from_static(b"again"))
    );
    assert_eq!(
        cache.get(&elsewhere).await.unwrap(),
        Some(Bytes::from_static(b"v"))
    );
}
