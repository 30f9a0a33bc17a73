//! The Redis idempotency store: atomic claims, replay, fingerprints, leases and expiry.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use es_core::{Claim, ClaimToken, IdempotencyStore, Ownership};
use es_redis::RedisIdempotencyStore;
use tokio::sync::Barrier;

const TTL: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(30);

fn acquired(claim: Claim) -> ClaimToken {
    match claim {
        Claim::Acquired(token) => token,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

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
                    store.claim(&key, "fp", LEASE).await
                })
            })
            .collect();
        let (mut acquired, mut in_progress) = (0, 0);
        for claim in claims {
            match claim.await.expect("task").expect("claim") {
                Claim::Acquired(_) => acquired += 1,
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
    let token = acquired(store.claim("pay", "fp", LEASE).await.unwrap());
    assert!(store
        .complete("pay", &token, binary.clone(), TTL)
        .await
        .unwrap()
        .is_held());
    assert_eq!(
        store.claim("pay", "fp", LEASE).await.unwrap(),
        Claim::Completed(binary)
    );

    let token = acquired(store.claim("empty", "fp", LEASE).await.unwrap());
    assert!(store
        .complete("empty", &token, Bytes::new(), TTL)
        .await
        .unwrap()
        .is_held());
    assert_eq!(
        store.claim("empty", "fp", LEASE).await.unwrap(),
        Claim::Completed(Bytes::new()),
        "an empty response is a response, not an unfinished claim"
    );
}

#[tokio::test]
async fn a_different_fingerprint_is_a_mismatch_whether_running_or_finished() {
    let store = RedisIdempotencyStore::new(common::shared_redis().await);
    let token = acquired(store.claim("k", "a", LEASE).await.unwrap());
    assert_eq!(store.claim("k", "b", LEASE).await.unwrap(), Claim::Mismatch);
    assert!(store
        .complete("k", &token, Bytes::from_static(b"ok"), TTL)
        .await
        .unwrap()
        .is_held());
    assert_eq!(store.claim("k", "b", LEASE).await.unwrap(), Claim::Mismatch);
    assert!(store.release("k", &token).await.unwrap().is_held());
    assert_eq!(
        store.claim("k", "a", LEASE).await.unwrap(),
        Claim::Completed(Bytes::from_static(b"ok"))
    );
}

#[tokio::test]
async fn a_claim_lives_for_its_lease_and_a_response_for_its_ttl() {
    let store = RedisIdempotencyStore::new(common::shared_redis().await);
    let raw = redis::Client::open(common::redis_url()).unwrap();
    let raw = raw.get_multiplexed_async_connection().await.unwrap();
    let pttl = |key: String| {
        let mut raw = raw.clone();
        async move {
            redis::cmd("PTTL")
                .arg(key)
                .query_async::<i64>(&mut raw)
                .await
                .unwrap()
        }
    };

    let token = acquired(
        store
            .claim("t", "fp", Duration::from_secs(10))
            .await
            .unwrap(),
    );
    let ttl = pttl(store.redis_key("t")).await;
    assert!(
        (1..=10_000).contains(&ttl),
        "an in-progress claim expires with its lease, not the response's TTL: PTTL {ttl}"
    );
    assert!(store
        .renew("t", &token, Duration::from_secs(20))
        .await
        .unwrap()
        .is_held());
    let ttl = pttl(store.redis_key("t")).await;
    assert!((10_001..=20_000).contains(&ttl), "renewed: PTTL {ttl}");

    assert!(store
        .complete(
            "t",
            &token,
            Bytes::from_static(b"r"),
            Duration::from_millis(150),
        )
        .await
        .unwrap()
        .is_held());
    assert!(matches!(
        store.claim("t", "fp", LEASE).await.unwrap(),
        Claim::Completed(_)
    ));
    tokio::time::sleep(Duration::from_millis(400)).await;
    acquired(store.claim("t", "other", LEASE).await.unwrap());
}

#[tokio::test]
async fn release_frees_a_running_claim_of_its_holder_only() {
    let store = RedisIdempotencyStore::new(common::shared_redis().await);
    assert_eq!(
        store
            .release("never-claimed", &ClaimToken::new())
            .await
            .expect("releasing nothing is no error"),
        Ownership::Lost
    );
    let token = acquired(store.claim("r", "fp", LEASE).await.unwrap());
    assert!(store.release("r", &token).await.unwrap().is_held());
    acquired(store.claim("r", "other", LEASE).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waiting_on_a_running_request_gets_its_response() {
    let store = Arc::new(RedisIdempotencyStore::new(common::shared_redis().await));
    let token = acquired(store.claim("slow", "fp", LEASE).await.unwrap());
    let holder = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            store
                .complete("slow", &token, Bytes::from_static(b"done"), TTL)
                .await
        })
    };
    let waited = es_core::idempotency::claim_or_wait(
        store.as_ref(),
        "slow",
        "fp",
        LEASE,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(holder.await.unwrap().unwrap().is_held());
    assert_eq!(waited, Claim::Completed(Bytes::from_static(b"done")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waiting_on_a_holder_that_died_takes_over_when_its_lease_runs_out() {
    let store = Arc::new(RedisIdempotencyStore::new(common::shared_redis().await));
    // The holder claims and is never heard of again (a crash: no renewal, no release).
    let dead = acquired(
        store
            .claim("crashed", "fp", Duration::from_millis(300))
            .await
            .unwrap(),
    );
    let waited = es_core::idempotency::claim_or_wait(
        store.as_ref(),
        "crashed",
        "fp",
        LEASE,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let token = acquired(waited);
    assert_ne!(token, dead);
}
