//! The services' housekeeping timer on real backends: with a short `--housekeeping-interval`
//! and retention, old inbox rows are pruned again and again while the services run.

mod common;

use std::time::Duration;

use common::{connect, eventually, isolated, patient, SchemaGuard};
use order_processing_example::{run_services, ServiceKind};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_prune_old_inbox_rows_every_housekeeping_interval() {
    let mut settings = isolated(patient());
    settings.retention = Duration::from_secs(1);
    settings.housekeeping_interval = Duration::from_millis(200);
    settings.notification_port = 0;
    let _schema = SchemaGuard(settings.database_schema.clone());
    let backends = connect(&settings).await;
    let pool = sqlx::PgPool::connect(&common::database_url())
        .await
        .expect("connect");
    let schema = settings.database_schema.clone();
    let insert = |age: &'static str| {
        let (pool, schema) = (pool.clone(), schema.clone());
        async move {
            let id: uuid::Uuid = sqlx::query_scalar(&format!(
                "INSERT INTO \"{schema}\".inbox (consumer, event_id, handled_at) \
                 VALUES ('housekeeping-test', gen_random_uuid(), now() - interval '{age}') \
                 RETURNING event_id"
            ))
            .fetch_one(&pool)
            .await
            .expect("insert an inbox row");
            id
        }
    };
    let present = |id: uuid::Uuid| {
        let (pool, schema) = (pool.clone(), schema.clone());
        async move {
            sqlx::query_scalar::<_, bool>(&format!(
                "SELECT EXISTS (SELECT 1 FROM \"{schema}\".inbox WHERE event_id = $1)"
            ))
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("query the inbox")
        }
    };

    let first = insert("8 days").await;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (settings, wait) = (settings.clone(), shutdown.clone().cancelled_owned());
        async move { run_services(&[ServiceKind::Notification], &backends, &settings, wait).await }
    });
    eventually("the prune at start", || async {
        (!present(first).await).then_some(())
    })
    .await;
    // Handled now, so no prune before this one could take it: only a later prune, a second
    // second on, does.
    let later = insert("0 seconds").await;
    let kept = insert("-1 hour").await;
    eventually("a prune after the interval", || async {
        (!present(later).await).then_some(())
    })
    .await;
    assert!(present(kept).await, "a row inside the retention stays");

    shutdown.cancel();
    running.await.expect("join").expect("the services ran");
    pool.close().await;
}
