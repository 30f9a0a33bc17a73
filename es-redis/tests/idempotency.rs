//! The Redis idempotency store: atomic claims, replay, fingerprints, expiry.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use es_core::{Claim, IdempotencyStore};
use es_redis::RedisIdempotencyStore;
use tokio::sync::Barrier;

const TTL: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_thirty_two_concurrent_claims_of_one_key_exactly_one_wins() {
    let store = Arc::new(RedisIdempotencyStore::new(common::shared_redis().await));
    // Repeat on fresh keys: one lucky interleaving must not make the test pass.
    for round in 0..5 {
        let key = format!("race-{round}");
        let start = Arc::new(Barrier::new(32));
        let claims: Vec<_> = (0..32)
            .map(|_| {
                let (store, key, start) = (store.clone(), key.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    store.claim(&key, "fp", TTL).await
                })
            })
            .collect();
        let (mut acquired, mut in_progress) = (0, 0);
        for claim in claims {
            match claim.await.expect("task").expect("claim") {
                Claim::Acquired => acquired += 1,
                Claim::InProgress => in_progress += 1,
                other => panic!("a racing claim of a fresh key got {other:?}"),
            }
        }
        assert_eq!((acquired, in_progress), (1, 31), "round {round}");
    }
}

#[tokio::test]
async fn a_finished_response_is_replayed_byte_for_byte() {
    let store = RedisIdempotencyStore::new(common::shared_redis().await);
    let binary = Bytes::from((0..=255u8).rev().collect::<Vec<_>>());
    assert_eq!(
        store.claim("pay", "fp", TTL).await.unwrap(),
        Claim::Acquired
    );
    store
        .complete("pay", "fp", binary.clone(), TTL)
        .await
        .unwrap();
    assert_eq!(
        store.claim("pay", "fp", TTL).await.unwrap(),
        Claim::Completed(binary)
    );

    assert_eq!(
        store.claim("empty", "fp", TTL).await.unwrap(),
        Claim::Acquired
    );
    store
        .complete("empty", "fp", Bytes::new(), TTL)
        .await
        .unwrap();
    assert_eq!(
        store.claim("empty", "fp", TTL).await.unwrap(),
        Claim::Completed(Bytes::new()),
        "an empty response is a response, not an unfinished claim"
    );
}

#[tokio::test]
async fn a_different_fingerprint_is_a_mismatch_whether_running_or_finished() {
    let store = RedisIdempotencyStore::new(common::shared_redis().await);
    assert_eq!(store.claim("k", "a", TTL).await.unwrap(), Claim::Acquired);
    assert_eq!(store.claim("k", "b", TTL).await.unwrap(), Claim::Mismatch);
    store
        .complete("k", "a", Bytes::from_static(b"ok"), TTL)
        .await
        .unwrap();
    assert_eq!(store.claim("k", "b", TTL).await.unwrap(), Claim::Mismatch);
    store.release("k").await.unwrap();
    assert_eq!(
        store.claim("k", "a", TTL).await.unwrap(),
        Claim::Completed(Bytes::from_static(b"ok"))
    );
}

#[tokio::test]
async fn claims_and_responses_expire_after_their_ttl() {
    let store = RedisIdempotencyStore::new(common::shared_redis().await);
    let raw = redis::Client::open(common::redis_url()).unwrap();
    let mut raw = raw.get_multiplexed_async_connection().await.unwrap();

    store
        .claim("t", "fp", Duration::from_secs(30))
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(store.redis_key("t"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        (1..=30_000).contains(&ttl),
        "a claim expires with its TTL, PTTL {ttl}"
    );

    store
        .complete(
            "t",
            "fp",
            Bytes::from_static(b"r"),
            Duration::from_millis(150),
        )
        .await
        .unwrap();
    assert!(matches!(
        store.claim("t", "fp", TTL).await.unwrap(),
        Claim::Completed(_)
    ));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        store.claim("t", "other", TTL).await.unwrap(),
        Claim::Acquired,
        "after the TTL the key is free for any request"
    );
}

#[tokio::test]
async fn release_frees_a_running_claim_only() {
    let store = RedisIdempotencyStore::new(common::shared_redis().await);
    store
        .release("never-claimed")
        .await
        .expect("releasing nothing is fine");
    assert_eq!(store.claim("r", "fp", TTL).await.unwrap(), Claim::Acquired);
    store.release("r").await.unwrap();
    assert_eq!(
        store.claim("r", "other", TTL).await.unwrap(),
        Claim::Acquired
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waiting_on_a_running_request_gets_its_response() {
    let store = Arc::new(RedisIdempotencyStore::new(common::shared_redis().await));
    assert_eq!(
        store.claim("slow", "fp", TTL).await.unwrap(),
        Claim::Acquired
    );
    let holder = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            store
                .complete("slow", "fp", Bytes::from_static(b"done"), TTL)
                .await
        })
    };
    let waited = es_core::idempotency::claim_or_wait(
        store.as_ref(),
        "slow",
        "fp",
        TTL,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    holder.await.unwrap().unwrap();
    assert_eq!(waited, Claim::Completed(Bytes::from_static(b"done")));
}
