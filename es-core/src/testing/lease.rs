use std::sync::Arc;
use std::time::Duration;

use super::unique_category;
use crate::lease::LeaseStore;

/// Checks [`LeaseStore`]: one holder at a time, renewal by the holder, expiry lets another in,
/// release lets another in at once, release by a non-holder does nothing, names are
/// independent, and of 16 racing holders of a free lease exactly one wins.
///
/// Expiry is checked with real sleeps of about two seconds in all (tokio's clock, so a
/// backend that follows it may run under paused time).
pub async fn lease_conformance(store: Arc<dyn LeaseStore>) {
    let long = Duration::from_secs(60);
    let name = unique_category("lease");

    // One holder at a time; the holder renews.
    assert!(
        store.try_acquire(&name, "a", long).await.unwrap(),
        "a free lease is taken"
    );
    assert!(
        !store.try_acquire(&name, "b", long).await.unwrap(),
        "a held lease is not taken by another holder"
    );
    assert!(
        store.try_acquire(&name, "a", long).await.unwrap(),
        "the holder renews its lease"
    );
    assert!(
        !store.try_acquire(&name, "b", long).await.unwrap(),
        "a renewed lease is still not another's"
    );

    // Names are independent.
    let other = format!("{name}-other");
    assert!(
        store.try_acquire(&other, "b", long).await.unwrap(),
        "a lease under another name is free"
    );

    // Release by a non-holder does nothing; release by the holder frees it at once.
    store.release(&name, "b").await.unwrap();
    assert!(
        !store.try_acquire(&name, "b", long).await.unwrap(),
        "a release by a non-holder does nothing"
    );
    store.release(&name, "a").await.unwrap();
    assert!(
        store.try_acquire(&name, "b", long).await.unwrap(),
        "a released lease is free at once"
    );
    assert!(
        !store.try_acquire(&name, "a", long).await.unwrap(),
        "the former holder lost it"
    );
    store
        .release(&format!("{name}-never"), "a")
        .await
        .expect("releasing a lease nobody holds is fine");

    // Renewal moves the expiry; expiry lets another in.
    let short = format!("{name}-ttl");
    let ttl = Duration::from_millis(1000);
    assert!(store.try_acquire(&short, "a", ttl).await.unwrap());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        store.try_acquire(&short, "a", ttl).await.unwrap(),
        "the holder renews before expiry"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !store.try_acquire(&short, "b", ttl).await.unwrap(),
        "a renewal runs for a full TTL from the renewal, not from the first acquisition"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        store.try_acquire(&short, "b", long).await.unwrap(),
        "an expired lease is free for another holder"
    );
    assert!(
        !store.try_acquire(&short, "a", long).await.unwrap(),
        "the holder whose lease expired lost it"
    );

    // Exactly one of racing holders of a free lease wins.
    let raced = format!("{name}-race");
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (store, raced) = (store.clone(), raced.clone());
            tokio::spawn(async move {
                store
                    .try_acquire(&raced, &format!("holder-{i}"), long)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        if task.await.unwrap() {
            won += 1;
        }
    }
    assert_eq!(
        won, 1,
        "exactly one of 16 racing holders takes a free lease"
    );
}
