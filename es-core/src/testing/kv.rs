use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::unique_category;
use crate::cache::{Cache, CacheExt};
use crate::idempotency::{Claim, ClaimGuard, ClaimToken, IdempotencyStore, Ownership};

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
            async { Ok::<_, std::convert::Infallible>(Some((7, 1))) }
        })
        .await
        .unwrap();
    assert_eq!((loaded, loads), (Some(7), 1));
    let again: Option<u32> = cache
        .get_or_load(&format!("{key}-aside"), None, || async {
            Ok::<_, std::convert::Infallible>(Some((8, 2)))
        })
        .await
        .unwrap();
    assert_eq!(again, Some(7), "a hit does not load");

    versioned_cache_conformance(cache.as_ref(), &key).await;
}

/// Versioned writes: `set_if_newer` keeps the newest value, `mark_changed` refuses older
/// loads, and the cache-aside race (a load of v1 stored after a write of v2) leaves no stale
/// value behind.
async fn versioned_cache_conformance(cache: &dyn Cache, key: &str) {
    let ttl = Some(Duration::from_secs(60));
    let one = || Bytes::from_static(b"v1");
    let two = || Bytes::from_static(b"v2");
    let three = || Bytes::from_static(b"v3");

    let k = format!("{key}-versioned");
    assert!(
        cache.set_if_newer(&k, 2, two(), ttl).await.unwrap(),
        "a miss stores"
    );
    assert_eq!(cache.get(&k).await.unwrap(), Some(two()));
    assert!(
        !cache.set_if_newer(&k, 1, one(), ttl).await.unwrap(),
        "older is refused"
    );
    assert!(
        !cache.set_if_newer(&k, 2, one(), ttl).await.unwrap(),
        "the same version is kept"
    );
    assert_eq!(cache.get(&k).await.unwrap(), Some(two()));
    assert!(
        cache.set_if_newer(&k, 3, three(), ttl).await.unwrap(),
        "newer replaces"
    );
    assert_eq!(cache.get(&k).await.unwrap(), Some(three()));

    cache.mark_changed(&k, 3, ttl).await.unwrap();
    assert_eq!(
        cache.get(&k).await.unwrap(),
        Some(three()),
        "a mark of the cached version keeps the value"
    );
    cache.mark_changed(&k, 2, ttl).await.unwrap();
    assert_eq!(
        cache.get(&k).await.unwrap(),
        Some(three()),
        "an older mark changes nothing"
    );
    cache.mark_changed(&k, 4, ttl).await.unwrap();
    assert_eq!(
        cache.get(&k).await.unwrap(),
        None,
        "a newer change drops the value"
    );
    assert!(
        !cache.set_if_newer(&k, 3, three(), ttl).await.unwrap(),
        "a load older than the change is refused"
    );
    assert_eq!(cache.get(&k).await.unwrap(), None);
    cache.mark_changed(&k, 3, ttl).await.unwrap();
    assert!(
        !cache.set_if_newer(&k, 3, three(), ttl).await.unwrap(),
        "an older mark does not lower the newer one"
    );
    assert!(
        cache
            .set_if_newer(&k, 4, Bytes::from_static(b"v4"), ttl)
            .await
            .unwrap(),
        "a load of the marked version is cached"
    );
    assert_eq!(
        cache.get(&k).await.unwrap(),
        Some(Bytes::from_static(b"v4"))
    );
    cache.set(&k, one(), ttl).await.unwrap();
    assert_eq!(
        cache.get(&k).await.unwrap(),
        Some(one()),
        "set is unconditional"
    );
    cache.delete(&k).await.unwrap();
    assert!(
        cache.set_if_newer(&k, 1, one(), ttl).await.unwrap(),
        "delete forgets the version"
    );

    let marked = format!("{key}-mark-ttl");
    cache
        .mark_changed(&marked, 5, Some(Duration::from_millis(150)))
        .await
        .unwrap();
    assert!(!cache.set_if_newer(&marked, 4, one(), ttl).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        cache.set_if_newer(&marked, 4, one(), ttl).await.unwrap(),
        "a mark expires after its TTL"
    );

    // The race, provoked: a reader misses and loads version 1; while it loads, a writer
    // commits version 2 and marks the key; then the reader stores what it loaded.
    let raced = format!("{key}-race");
    let stale: Option<String> = cache
        .get_or_load(&raced, ttl, || async {
            cache.mark_changed(&raced, 2, ttl).await.unwrap();
            Ok::<_, std::convert::Infallible>(Some(("version 1".to_owned(), 1)))
        })
        .await
        .unwrap();
    assert_eq!(
        stale.as_deref(),
        Some("version 1"),
        "the reader answers what it loaded"
    );
    assert_eq!(
        cache.get(&raced).await.unwrap(),
        None,
        "but the older load was not cached over the newer write"
    );
    let fresh: Option<String> = cache
        .get_or_load(&raced, ttl, || async {
            Ok::<_, std::convert::Infallible>(Some(("version 2".to_owned(), 2)))
        })
        .await
        .unwrap();
    assert_eq!(fresh.as_deref(), Some("version 2"));
    let cached: Option<String> = cache
        .get_or_load(&raced, ttl, || async {
            Ok::<_, std::convert::Infallible>(Some(("loaded again".to_owned(), 2)))
        })
        .await
        .unwrap();
    assert_eq!(
        cached.as_deref(),
        Some("version 2"),
        "the next reader hits version 2"
    );

    // The other order: the stale value lands first, the writer's mark then drops it.
    let late = format!("{key}-late-mark");
    assert!(cache.set_if_newer(&late, 1, one(), ttl).await.unwrap());
    cache.mark_changed(&late, 2, ttl).await.unwrap();
    assert_eq!(cache.get(&late).await.unwrap(), None);

    // Many readers of old versions racing one writer: the newest value always wins.
    let burst = format!("{key}-burst");
    let stores: Vec<_> = (1..=32u64)
        .map(|version| cache.set_if_newer(&burst, version, Bytes::from(version.to_string()), ttl))
        .collect();
    let (_, marked) = tokio::join!(
        futures_util::future::join_all(stores),
        cache.mark_changed(&burst, 20, ttl)
    );
    marked.unwrap();
    assert_eq!(
        cache.get(&burst).await.unwrap(),
        Some(Bytes::from_static(b"32")),
        "whatever the interleaving, the newest version stays"
    );
}

/// The token of an acquired claim; panics with what was found otherwise.
fn acquired(claim: Claim, what: &str) -> ClaimToken {
    match claim {
        Claim::Acquired(token) => token,
        other => panic!("{what}: expected Acquired, got {other:?}"),
    }
}

/// Checks [`IdempotencyStore`]: claim, in progress, mismatch, complete and replay, release,
/// leases (expiry lets a new claim in, renewal keeps it, a stale holder can neither complete
/// nor release after a takeover), [`ClaimGuard`] (renews while held, releases when dropped),
/// and 32 racing claims (of a fresh key and of an expired one) with exactly one winner.
pub async fn idempotency_conformance(store: Arc<dyn IdempotencyStore>) {
    let ttl = Duration::from_secs(60);
    let lease = Duration::from_secs(30);
    let key = unique_category("idem");
    let token = acquired(
        store.claim(&key, "fp1", lease).await.unwrap(),
        "a fresh key",
    );
    assert_eq!(
        store.claim(&key, "fp1", lease).await.unwrap(),
        Claim::InProgress
    );
    assert_eq!(
        store.claim(&key, "fp2", lease).await.unwrap(),
        Claim::Mismatch
    );
    assert_eq!(
        store.renew(&key, &token, lease).await.unwrap(),
        Ownership::Held
    );
    assert_eq!(
        store
            .complete(&key, &ClaimToken::new(), Bytes::from_static(b"forged"), ttl)
            .await
            .unwrap(),
        Ownership::Lost,
        "only the holder's token completes"
    );
    assert_eq!(
        store
            .complete(&key, &token, Bytes::from_static(b"response"), ttl)
            .await
            .unwrap(),
        Ownership::Held
    );
    assert_eq!(
        store.claim(&key, "fp1", lease).await.unwrap(),
        Claim::Completed(Bytes::from_static(b"response")),
        "a completed key replays its response"
    );
    assert_eq!(
        store
            .complete(&key, &token, Bytes::from_static(b"again"), ttl)
            .await
            .unwrap(),
        Ownership::Held,
        "completing twice is fine"
    );
    assert_eq!(
        store.claim(&key, "fp1", lease).await.unwrap(),
        Claim::Completed(Bytes::from_static(b"response")),
        "the first response stays"
    );
    assert_eq!(
        store.claim(&key, "fp2", lease).await.unwrap(),
        Claim::Mismatch
    );
    assert_eq!(store.release(&key, &token).await.unwrap(), Ownership::Held);
    assert!(
        matches!(
            store.claim(&key, "fp1", lease).await.unwrap(),
            Claim::Completed(_)
        ),
        "release does not forget a completed response"
    );

    let failed = format!("{key}-failed");
    let token = acquired(store.claim(&failed, "fp", lease).await.unwrap(), "failed");
    assert_eq!(
        store.release(&failed, &ClaimToken::new()).await.unwrap(),
        Ownership::Lost,
        "only the holder's token releases"
    );
    assert_eq!(
        store.claim(&failed, "fp", lease).await.unwrap(),
        Claim::InProgress
    );
    assert_eq!(
        store.release(&failed, &token).await.unwrap(),
        Ownership::Held
    );
    acquired(
        store.claim(&failed, "fp", lease).await.unwrap(),
        "a released key can be claimed again",
    );

    // Leases: short on purpose, so that the test waits them out.
    let short = Duration::from_millis(150);
    let outlive = Duration::from_millis(400);

    let expired = format!("{key}-lease");
    let stale = acquired(store.claim(&expired, "fp", short).await.unwrap(), "lease");
    tokio::time::sleep(outlive).await;
    assert_eq!(
        store.renew(&expired, &stale, lease).await.unwrap(),
        Ownership::Lost,
        "a lease that ran out cannot be renewed"
    );
    assert_eq!(
        store
            .complete(&expired, &stale, Bytes::from_static(b"late"), ttl)
            .await
            .unwrap(),
        Ownership::Lost,
        "a lease that ran out cannot be completed"
    );
    let current = acquired(
        store.claim(&expired, "fp2", lease).await.unwrap(),
        "a claim whose lease ran out is taken over, whatever its fingerprint",
    );
    assert_ne!(current, stale);
    assert_eq!(
        store
            .complete(&expired, &stale, Bytes::from_static(b"stale"), ttl)
            .await
            .unwrap(),
        Ownership::Lost,
        "the stale holder cannot complete after a takeover"
    );
    assert_eq!(
        store.release(&expired, &stale).await.unwrap(),
        Ownership::Lost,
        "the stale holder cannot release after a takeover"
    );
    assert_eq!(
        store.renew(&expired, &stale, lease).await.unwrap(),
        Ownership::Lost,
        "the stale holder cannot renew after a takeover"
    );
    assert_eq!(
        store.claim(&expired, "fp2", lease).await.unwrap(),
        Claim::InProgress,
        "the new holder still holds it"
    );
    assert_eq!(
        store
            .complete(&expired, &current, Bytes::from_static(b"new"), ttl)
            .await
            .unwrap(),
        Ownership::Held
    );
    assert_eq!(
        store.claim(&expired, "fp2", lease).await.unwrap(),
        Claim::Completed(Bytes::from_static(b"new"))
    );

    // What must stay held gets a lease with room to spare: on a loaded machine one step can
    // stall for a few hundred milliseconds, and a lease lost there would say nothing about the
    // store. Five renewals 300 ms apart still outlive the first one-second lease.
    let roomy = Duration::from_secs(1);
    let renewed = format!("{key}-renew");
    let token = acquired(store.claim(&renewed, "fp", roomy).await.unwrap(), "renew");
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            store.renew(&renewed, &token, roomy).await.unwrap(),
            Ownership::Held
        );
    }
    assert_eq!(
        store.claim(&renewed, "fp", roomy).await.unwrap(),
        Claim::InProgress,
        "a renewed claim outlives its first lease"
    );
    assert_eq!(
        store
            .complete(&renewed, &token, Bytes::from_static(b"kept"), ttl)
            .await
            .unwrap(),
        Ownership::Held
    );
    assert_eq!(
        store.renew(&renewed, &token, short).await.unwrap(),
        Ownership::Lost,
        "a completed key is not in progress"
    );
    tokio::time::sleep(outlive).await;
    assert_eq!(
        store.claim(&renewed, "fp", short).await.unwrap(),
        Claim::Completed(Bytes::from_static(b"kept")),
        "a renewal after completion does not shorten the response's TTL"
    );

    let completed = format!("{key}-ttl");
    let token = acquired(store.claim(&completed, "fp", lease).await.unwrap(), "ttl");
    assert_eq!(
        store
            .complete(&completed, &token, Bytes::from_static(b"x"), short)
            .await
            .unwrap(),
        Ownership::Held
    );
    tokio::time::sleep(outlive).await;
    acquired(
        store.claim(&completed, "fp2", lease).await.unwrap(),
        "a response expires after its TTL",
    );

    // The guard renews in the background and releases when dropped.
    let guarded = format!("{key}-guard");
    let token = acquired(store.claim(&guarded, "fp", roomy).await.unwrap(), "guard");
    let guard = ClaimGuard::hold(store.clone(), guarded.clone(), token, roomy);
    tokio::time::sleep(roomy + outlive).await;
    assert_eq!(
        store.claim(&guarded, "fp", short).await.unwrap(),
        Claim::InProgress,
        "a held guard keeps renewing its claim"
    );
    assert!(!guard.is_lost());
    assert_eq!(guard.release().await.unwrap(), Ownership::Held);
    let token = acquired(
        store.claim(&guarded, "fp", lease).await.unwrap(),
        "a released guard frees its claim",
    );
    // Held for a long lease: only the release on drop can free it within the test.
    let guard = ClaimGuard::hold(store.clone(), guarded.clone(), token, lease);
    drop(guard); // the request is cut off
    let mut freed = None;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if let Claim::Acquired(token) = store.claim(&guarded, "fp", lease).await.unwrap() {
            freed = Some(token);
            break;
        }
    }
    let token = freed.expect("a dropped guard frees its claim well before a long lease");
    let guard = ClaimGuard::hold(store.clone(), guarded.clone(), token, lease);
    assert_eq!(
        guard
            .complete(Bytes::from_static(b"done"), ttl)
            .await
            .unwrap(),
        Ownership::Held
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        store.claim(&guarded, "fp", lease).await.unwrap(),
        Claim::Completed(Bytes::from_static(b"done")),
        "a completed guard releases nothing when dropped"
    );

    for (name, expire_first) in [("race", false), ("race-expired", true)] {
        let raced = format!("{key}-{name}");
        if expire_first {
            acquired(store.claim(&raced, "old", short).await.unwrap(), name);
            tokio::time::sleep(outlive).await;
        }
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (store, raced) = (store.clone(), raced.clone());
                tokio::spawn(async move { store.claim(&raced, "fp", lease).await.unwrap() })
            })
            .collect();
        let mut winners = 0;
        for task in tasks {
            match task.await.unwrap() {
                Claim::Acquired(_) => winners += 1,
                Claim::InProgress => {}
                other => panic!("a racing claim ({name}) got {other:?}"),
            }
        }
        assert_eq!(winners, 1, "exactly one of 32 racing claims ({name}) wins");
    }
}
