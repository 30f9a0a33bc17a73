use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::unique_category;
use crate::cache::{Cache, CacheExt};
use crate::idempotency::{Claim, IdempotencyStore};

/// Checks [`Cache`]: get, set, overwrite, delete, TTL, and the typed helpers.
pub async fn cache_conformance(cache: Arc<dyn Cache>) {
    let key = unique_category("cache");
    assert_eq!(cache.get(&key).await.unwrap(), None);
    cache
        .set(&key, Bytes::from_static(b"one"), None)
        .await
        .unwrap();
    assert_eq!(
        cache.get(&key).await.unwrap(),
        Some(Bytes::from_static(b"one"))
    );
    cache
        .set(&key, Bytes::from_static(b"two"), None)
        .await
        .unwrap();
    assert_eq!(
        cache.get(&key).await.unwrap(),
        Some(Bytes::from_static(b"two")),
        "set overwrites"
    );
    cache.delete(&key).await.unwrap();
    assert_eq!(cache.get(&key).await.unwrap(), None, "delete removes");
    cache.delete(&key).await.expect("deleting nothing is fine");

    let short = format!("{key}-ttl");
    cache
        .set(
            &short,
            Bytes::from_static(b"x"),
            Some(Duration::from_millis(150)),
        )
        .await
        .unwrap();
    assert!(cache.get(&short).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        cache.get(&short).await.unwrap(),
        None,
        "entries expire after their TTL"
    );

    let typed = format!("{key}-json");
    cache
        .set_json(&typed, &vec![1u32, 2, 3], None)
        .await
        .unwrap();
    assert_eq!(
        cache.get_json::<Vec<u32>>(&typed).await.unwrap(),
        Some(vec![1, 2, 3])
    );
    let mut loads = 0;
    let loaded: Option<u32> = cache
        .get_or_load(&format!("{key}-aside"), None, || {
            loads += 1;
            async { Ok::<_, std::convert::Infallible>(Some(7)) }
        })
        .await
        .unwrap();
    assert_eq!((loaded, loads), (Some(7), 1));
    let again: Option<u32> = cache
        .get_or_load(&format!("{key}-aside"), None, || async {
            Ok::<_, std::convert::Infallible>(Some(8))
        })
        .await
        .unwrap();
    assert_eq!(again, Some(7), "a hit does not load");
}

/// Checks [`IdempotencyStore`]: claim, in progress, mismatch, complete and replay, release,
/// expiry, and 32 racing claims with exactly one winner.
pub async fn idempotency_conformance(store: Arc<dyn IdempotencyStore>) {
    let ttl = Duration::from_secs(60);
    let key = unique_category("idem");
    assert_eq!(
        store.claim(&key, "fp1", ttl).await.unwrap(),
        Claim::Acquired
    );
    assert_eq!(
        store.claim(&key, "fp1", ttl).await.unwrap(),
        Claim::InProgress
    );
    assert_eq!(
        store.claim(&key, "fp2", ttl).await.unwrap(),
        Claim::Mismatch
    );
    store
        .complete(&key, "fp1", Bytes::from_static(b"response"), ttl)
        .await
        .unwrap();
    assert_eq!(
        store.claim(&key, "fp1", ttl).await.unwrap(),
        Claim::Completed(Bytes::from_static(b"response")),
        "a completed key replays its response"
    );
    assert_eq!(
        store.claim(&key, "fp2", ttl).await.unwrap(),
        Claim::Mismatch
    );
    store.release(&key).await.unwrap();
    assert!(
        matches!(
            store.claim(&key, "fp1", ttl).await.unwrap(),
            Claim::Completed(_)
        ),
        "release does not forget a completed response"
    );

    let failed = format!("{key}-failed");
    assert_eq!(
        store.claim(&failed, "fp", ttl).await.unwrap(),
        Claim::Acquired
    );
    store.release(&failed).await.unwrap();
    assert_eq!(
        store.claim(&failed, "fp", ttl).await.unwrap(),
        Claim::Acquired,
        "a released key can be claimed again"
    );

    let short = format!("{key}-ttl");
    assert_eq!(
        store
            .claim(&short, "fp", Duration::from_millis(150))
            .await
            .unwrap(),
        Claim::Acquired
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        store.claim(&short, "fp2", ttl).await.unwrap(),
        Claim::Acquired,
        "claims expire after their TTL"
    );

    let raced = format!("{key}-race");
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (store, raced) = (store.clone(), raced.clone());
            tokio::spawn(async move { store.claim(&raced, "fp", ttl).await.unwrap() })
        })
        .collect();
    let mut acquired = 0;
    for task in tasks {
        match task.await.unwrap() {
            Claim::Acquired => acquired += 1,
            Claim::InProgress => {}
            other => panic!("a racing claim of a fresh key got {other:?}"),
        }
    }
    assert_eq!(acquired, 1, "exactly one of 32 racing claims wins");
}
