//! Transactional projections and the unit of work with the application's own writes.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use es_core::testing::sample_event;
use es_core::{
    BoxError, CheckpointStore, CommitOutcome, EventStore, ExpectedVersion, InboxEntry,
    RecordedEvent, StreamAppend, StreamId, UnitOfWork,
};
use es_postgres::{PgEventStore, PgProjection, PgProjectionRunner};
use sqlx::PgConnection;
use tokio::sync::mpsc;

/// Sums the `n` of every event into one row and logs each applied event id. Neither write is
/// idempotent on its own, so a doubled or lost effect shows in the totals.
struct Totals {
    /// Fail (return an error) when applying the event with this `n`, once.
    fail_at: Option<u64>,
    failed: AtomicUsize,
    /// Report reaching the event with this `n`, then hang (until the task is aborted).
    hang_at: Option<(u64, mpsc::UnboundedSender<()>)>,
}

impl Totals {
    fn plain() -> Self {
        Totals {
            fail_at: None,
            failed: AtomicUsize::new(0),
            hang_at: None,
        }
    }
}

#[async_trait::async_trait]
impl PgProjection for Totals {
    fn name(&self) -> &str {
        "totals"
    }

    async fn apply(&self, conn: &mut PgConnection, event: &RecordedEvent) -> Result<(), BoxError> {
        let n = event.payload_json()?["n"].as_u64().ok_or("no n")?;
        sqlx::query("UPDATE totals SET events = events + 1, sum = sum + $1 WHERE id = 1")
            .bind(n as i64)
            .execute(&mut *conn)
            .await?;
        sqlx::query("INSERT INTO applied (event_id) VALUES ($1)")
            .bind(event.event_id)
            .execute(&mut *conn)
            .await?;
        if self.fail_at == Some(n) && self.failed.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err("the read model refused this event".into());
        }
        if let Some((at, reached)) = &self.hang_at {
            if *at == n {
                let _ = reached.send(());
                std::future::pending::<()>().await;
            }
        }
        Ok(())
    }
}

async fn read_model(store: &PgEventStore) {
    sqlx::raw_sql(
        "CREATE TABLE totals (id int PRIMARY KEY, events bigint NOT NULL, sum bigint NOT NULL); \
         INSERT INTO totals VALUES (1, 0, 0); \
         CREATE TABLE applied (event_id uuid NOT NULL);",
    )
    .execute(store.pool())
    .await
    .unwrap();
}

async fn totals(store: &PgEventStore) -> (i64, i64, i64, i64) {
    sqlx::query_as(
        "SELECT t.events, t.sum, (SELECT count(*) FROM applied), \
         (SELECT count(DISTINCT event_id) FROM applied) FROM totals t",
    )
    .fetch_one(store.pool())
    .await
    .unwrap()
}

async fn append_numbers(store: &PgEventStore, range: std::ops::RangeInclusive<u64>) {
    for n in range {
        let stream = StreamId::new(format!("num-{}", n % 7)).unwrap();
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![sample_event("Counted", n)],
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_aborted_mid_batch_resumes_with_no_lost_and_no_doubled_effect() {
    let store = common::store("proj").await;
    read_model(&store).await;
    append_numbers(&store, 1..=100).await;
    common::settle(&store).await;
    let runner = PgProjectionRunner::new(store.clone()).with_batch_size(40);

    // A batch whose apply fails part-way rolls back, checkpoint included.
    let failing = Totals {
        fail_at: Some(17),
        ..Totals::plain()
    };
    let error = runner.run_batch(&failing).await.unwrap_err();
    assert!(error.to_string().contains("refused"), "got {error}");
    assert_eq!(
        totals(&store).await,
        (0, 0, 0, 0),
        "nothing of the failed batch stays"
    );
    assert_eq!(CheckpointStore::load(&store, "totals").await.unwrap(), None);

    // One good batch, then a process "killed" in the middle of the second one.
    assert_eq!(runner.run_batch(&Totals::plain()).await.unwrap(), 40);
    assert_eq!(totals(&store).await, (40, 820, 40, 40));
    let (reached, mut reached_rx) = mpsc::unbounded_channel();
    let hanging = Arc::new(Totals {
        hang_at: Some((63, reached)),
        ..Totals::plain()
    });
    let task = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.run_batch(&*hanging).await })
    };
    reached_rx.recv().await.expect("the batch reaches event 63");
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());

    // A fresh runner (the restarted process) takes over from the checkpoint; its first batch
    // waits for the aborted transaction's rollback through the projection's lock.
    let restarted = PgProjectionRunner::new(store.clone()).with_batch_size(40);
    let position = tokio::time::timeout(
        Duration::from_secs(30),
        restarted.catch_up(&Totals::plain()),
    )
    .await
    .expect("catch-up finishes")
    .unwrap();
    assert_eq!(
        totals(&store).await,
        (100, 5050, 100, 100),
        "every event applied exactly once"
    );
    assert_eq!(
        position,
        store.head().await.unwrap(),
        "the checkpoint is at the head"
    );

    // Running live picks up later appends.
    let stop = Arc::new(tokio::sync::Notify::new());
    let live = {
        let (runner, stop) = (restarted.clone(), stop.clone());
        tokio::spawn(async move {
            runner
                .run(
                    Arc::new(Totals::plain()),
                    async move { stop.notified().await },
                )
                .await
        })
    };
    append_numbers(&store, 101..=110).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while totals(&store).await.0 < 110 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the live runner catches up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.notify_one();
    live.await.unwrap();
    assert_eq!(totals(&store).await, (110, 6105, 110, 110));
    common::drop_schema(&store).await;
}

type BoxFuture<'c, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'c>>;

fn write_summary<'c>(
    conn: &'c mut PgConnection,
    results: &'c [es_core::AppendResult],
) -> BoxFuture<'c, Result<i64, BoxError>> {
    let version = results[0].next_expected_version as i64;
    let stream = results[0].stream_id.to_string();
    Box::pin(async move {
        sqlx::query("INSERT INTO order_summary VALUES ($1, $2)")
            .bind(stream)
            .bind(version)
            .execute(&mut *conn)
            .await?;
        Ok(version)
    })
}

#[tokio::test]
async fn the_applications_own_writes_commit_with_the_events_or_not_at_all() {
    let store = common::store("uow").await;
    sqlx::query("CREATE TABLE order_summary (stream_id text PRIMARY KEY, version bigint NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    let stream = StreamId::new("order-1").unwrap();
    let cause = uuid::Uuid::new_v4();
    let unit = || {
        UnitOfWork::new()
            .append(StreamAppend::new(
                stream.clone(),
                ExpectedVersion::Any,
                vec![sample_event("Placed", 1)],
            ))
            .handled(InboxEntry::new("summary", cause))
            .checkpoint("summary", es_core::Position::new(1, 1))
    };

    // A failure in the application's part rolls back the events and the inbox entry too.
    let failed = store
        .commit_with(unit(), |conn, _results| {
            Box::pin(async move {
                sqlx::query("INSERT INTO order_summary VALUES ('x', 1)")
                    .execute(&mut *conn)
                    .await?;
                Err::<(), BoxError>("the application changed its mind".into())
            })
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(
        store.stream_version(&stream).await.unwrap(),
        None,
        "no event was kept"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM order_summary")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(rows, 0, "no application row was kept");

    let (results, version) = store
        .commit_with(unit(), write_summary)
        .await
        .unwrap()
        .committed()
        .expect("first handling commits");
    assert_eq!((results[0].next_expected_version, version), (1, 1));
    assert_eq!(
        CheckpointStore::load(&store, "summary").await.unwrap(),
        Some(es_core::Position::new(1, 1))
    );
    // The redelivery is skipped: the closure does not run, nothing is written.
    assert!(store
        .commit_with(unit(), write_summary)
        .await
        .unwrap()
        .is_already_handled());
    assert_eq!(
        store.commit(unit()).await.unwrap(),
        CommitOutcome::AlreadyHandled
    );
    assert_eq!(store.stream_version(&stream).await.unwrap(), Some(1));

    // A conflict inside the transaction is still a typed conflict.
    let conflicting = UnitOfWork::new().append(StreamAppend::new(
        stream.clone(),
        ExpectedVersion::NoStream,
        vec![sample_event("Placed", 2)],
    ));
    let err = store
        .commit_with(conflicting, |_, _| Box::pin(async { Ok(()) }))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            es_core::Error::Conflict {
                actual: Some(1),
                ..
            }
        ),
        "got {err:?}"
    );
    common::drop_schema(&store).await;
}
