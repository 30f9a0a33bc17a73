//! [`PgLeaseStore`] passes es-core's lease suite against a real server, and two pools (two
//! processes) on one schema exclude each other.

mod common;

use std::sync::Arc;
use std::time::Duration;

use es_core::testing;
use es_core::LeaseStore;
use es_postgres::PgLeaseStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_lease_store_passes_the_lease_suite() {
    let store = common::store("conf_lease").await;
    testing::lease_conformance(Arc::new(PgLeaseStore::new(&store))).await;
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_on_one_schema_see_the_same_lease() {
    let store = common::store("lease_pools").await;
    let other = common::store_with(store.config().clone()).await;
    let (a, b) = (PgLeaseStore::new(&store), PgLeaseStore::new(&other));
    let ttl = Duration::from_secs(30);
    assert!(a.try_acquire("relay-x", "a", ttl).await.unwrap());
    assert!(
        !b.try_acquire("relay-x", "b", ttl).await.unwrap(),
        "another process sees the holder"
    );
    a.release("relay-x", "a").await.unwrap();
    assert!(
        b.try_acquire("relay-x", "b", ttl).await.unwrap(),
        "and takes over at once after a release"
    );
    other.close().await;
    common::drop_schema(&store).await;
}
