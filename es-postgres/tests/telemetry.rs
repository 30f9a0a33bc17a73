//! What the PostgreSQL store records through the `metrics` facade, read back from a Prometheus
//! recorder installed for this test binary before any store is built.
#![cfg(feature = "metrics")]

mod common;

use std::sync::OnceLock;

use es_core::telemetry;
use es_core::testing::sample_event;
use es_core::{EventStore, ExpectedVersion, InboxEntry, StreamAppend, StreamId, UnitOfWork};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("the only recorder of this binary")
    })
}

/// The value of the sample `name` whose labels hold each of `labels`, 0 when there is none.
fn value(name: &str, labels: &[&str]) -> f64 {
    recorder()
        .render()
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_commits_and_the_pool_are_recorded() {
    recorder();
    let store = common::store("telemetry").await;
    let postgres = "backend=\"postgres\"";
    let append_count = format!("{}_count", telemetry::STORE_APPEND_SECONDS);
    let commit_count = format!("{}_count", telemetry::STORE_COMMIT_SECONDS);
    let appends_before = value(&append_count, &[postgres]);
    let commits_before = value(&commit_count, &[postgres]);

    // One stream, no inbox: the append without a transaction.
    let stream = StreamId::for_aggregate("order", "1").unwrap();
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![sample_event("Placed", 1)],
        )
        .await
        .unwrap();
    // With an inbox entry: a unit of work in a transaction.
    let unit = UnitOfWork::new()
        .append(StreamAppend::new(
            stream.clone(),
            ExpectedVersion::Exact(1),
            vec![sample_event("Paid", 2)],
        ))
        .handled(InboxEntry::new("telemetry", uuid::Uuid::new_v4()));
    store.commit(unit).await.unwrap();

    assert_eq!(value(&append_count, &[postgres]), appends_before + 1.0);
    assert_eq!(value(&commit_count, &[postgres]), commits_before + 1.0);

    store.record_pool_metrics();
    let idle = value(telemetry::POOL_CONNECTIONS, &[postgres, "state=\"idle\""]);
    assert!(
        idle >= 1.0,
        "the connections used above went back idle: {idle}"
    );
    assert!(recorder()
        .render()
        .contains("es_pool_connections{backend=\"postgres\",state=\"in_use\"}"));
    common::drop_schema(&store).await;
}
