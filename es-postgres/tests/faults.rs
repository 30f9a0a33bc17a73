//! Connection loss during a live subscription: the subscription resumes and misses nothing.
//!
//! One test kills its own connections from the server side; the other runs a private
//! PostgreSQL on a free port and stops and restarts it. The shared server is never restarted.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use es_core::testing::sample_event;
use es_core::{BoxError, RecordedEvent};
use es_core::{
    Error, EventStore, EventSubscription, ExpectedVersion, Position, StreamFilter, StreamId,
};
use es_postgres::{PgConfig, PgEventStore, PgProjection, PgProjectionRunner};
use futures_util::StreamExt;
use sqlx::PgConnection;
use uuid::Uuid;

/// Reads `count` events from `subscription`, checking order and uniqueness; returns their ids
/// and how many read errors the subscription reported on the way.
async fn collect(
    subscription: &mut EventSubscription,
    count: usize,
    last: &mut Position,
    seen: &mut HashSet<Uuid>,
) -> usize {
    let mut errors = 0;
    let mut got = 0;
    while got < count {
        match tokio::time::timeout(Duration::from_secs(60), subscription.next())
            .await
            .expect("the subscription delivers within a minute")
            .expect("a subscription does not end")
        {
            Ok(event) => {
                assert!(
                    event.position > *last,
                    "in order: {} after {last}",
                    event.position
                );
                *last = event.position;
                assert!(
                    seen.insert(event.event_id),
                    "{} delivered twice",
                    event.event_id
                );
                got += 1;
            }
            Err(error) => {
                assert!(
                    matches!(
                        error,
                        Error::Unavailable {
                            backend: "postgres",
                            ..
                        }
                    ),
                    "a lost connection reads as unavailable, got {error:?}"
                );
                errors += 1;
            }
        }
    }
    errors
}

async fn append_until_ok(store: &PgEventStore, stream: &StreamId, n: u64) -> Uuid {
    let event = sample_event("Survived", n);
    let id = event.event_id;
    let mut attempts = 0;
    loop {
        match store
            .append(stream, ExpectedVersion::Any, vec![event.clone()])
            .await
        {
            Ok(_) => return id,
            // The answer was lost but the event may be stored: the same event id tells.
            Err(Error::InvalidInput(message)) if message.contains("already stored") => return id,
            Err(error) if error.is_transient() && attempts < 100 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("append failed for good: {error:?}"),
        }
    }
}

/// Counts events and logs their ids: a lost or doubled effect shows.
struct Counter;

#[async_trait::async_trait]
impl PgProjection for Counter {
    fn name(&self) -> &str {
        "counter"
    }

    async fn apply(&self, conn: &mut PgConnection, event: &RecordedEvent) -> Result<(), BoxError> {
        sqlx::query("UPDATE counted SET n = n + 1")
            .execute(&mut *conn)
            .await?;
        sqlx::query("INSERT INTO counted_ids VALUES ($1)")
            .bind(event.event_id)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

/// The pool hands out a connection used a moment ago without a check, but checks one that sat
/// idle past `check_idle_after`: a connection the server closed while it was idle is replaced,
/// and the call on it succeeds.
#[tokio::test]
async fn a_connection_closed_while_idle_is_replaced_before_it_is_handed_out() {
    let app = format!("es-idle-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let mut config = PgConfig::new(common::schema_name("idle"));
    config.application_name = app.clone();
    config.max_connections = 1;
    config.check_idle_after = Duration::from_millis(100);
    let store = common::store_with(config).await;
    let killer = common::store("idle_killer").await;
    let stream = StreamId::new("idle-1").unwrap();
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![sample_event("Written", 1)],
        )
        .await
        .expect("append");
    let pid_before: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap();

    assert_eq!(common::terminate_connections(&killer, &app).await, 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        store
            .stream_version(&stream)
            .await
            .expect("a call after the connection was closed"),
        Some(1)
    );
    let pid_after: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_ne!(pid_before, pid_after, "the closed connection was replaced");
    store.close().await;
    killer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_survives_its_connections_being_terminated() {
    let schema = common::schema_name("kill");
    let app = format!("es-kill-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let mut config = PgConfig::new(schema.clone());
    config.application_name = app.clone();
    config.poll_interval = Duration::from_millis(200);
    let reader = common::store_with(config).await;
    // The writer and the killer use another application name, so they survive the kills.
    let writer = common::store_with(PgConfig::new(schema)).await;
    let stream = StreamId::new("kill-1").unwrap();
    sqlx::raw_sql(
        "CREATE TABLE counted (n bigint NOT NULL); INSERT INTO counted VALUES (0); \
         CREATE TABLE counted_ids (event_id uuid NOT NULL);",
    )
    .execute(writer.pool())
    .await
    .unwrap();
    let stop = std::sync::Arc::new(tokio::sync::Notify::new());
    let projection = {
        let runner = PgProjectionRunner::new(reader.clone()).with_batch_size(7);
        let stop = stop.clone();
        tokio::spawn(async move {
            runner
                .run(std::sync::Arc::new(Counter), async move {
                    stop.notified().await
                })
                .await
        })
    };

    let mut subscription = reader.subscribe(StreamFilter::All, Position::START);
    let (mut last, mut seen, mut written) = (Position::START, HashSet::new(), HashSet::new());
    for round in 0..3u64 {
        for i in 0..20 {
            written.insert(append_until_ok(&writer, &stream, round * 100 + i).await);
        }
        collect(&mut subscription, 20, &mut last, &mut seen).await;
        let killed = common::terminate_connections(&writer, &app).await;
        assert!(
            killed >= 1,
            "round {round}: the reader's connections were found and killed"
        );
    }
    for i in 0..20 {
        written.insert(append_until_ok(&writer, &stream, 900 + i).await);
    }
    collect(&mut subscription, 20, &mut last, &mut seen).await;
    assert_eq!(seen, written, "every event delivered once, none lost");
    let extra = tokio::time::timeout(Duration::from_millis(500), subscription.next()).await;
    assert!(extra.is_err(), "nothing more: {extra:?}");

    let counted = || async {
        sqlx::query_as::<_, (i64, i64, i64)>(
            "SELECT (SELECT n FROM counted), (SELECT count(*) FROM counted_ids), \
             (SELECT count(DISTINCT event_id) FROM counted_ids)",
        )
        .fetch_one(writer.pool())
        .await
        .unwrap()
    };
    let total = written.len() as i64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while counted().await.0 < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the projection catches up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.notify_one();
    projection.await.unwrap();
    assert_eq!(
        counted().await,
        (total, total, total),
        "each event counted exactly once"
    );
    drop(subscription);
    reader.close().await;
    common::drop_schema(&writer).await;
}

/// A PostgreSQL server of this test's own, in a temporary directory, on a free port.
struct PrivateServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl PrivateServer {
    fn bin_dir() -> PathBuf {
        if let Ok(dir) = std::env::var("PG_BIN") {
            return PathBuf::from(dir);
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|dirs| dirs.flatten().map(|d| d.path().join("bin")).collect())
            .unwrap_or_default();
        found.sort();
        found.pop().filter(|bin| bin.join("initdb").exists()).unwrap_or_else(|| {
            panic!("no initdb found under /usr/lib/postgresql/*/bin; set PG_BIN to the server's bin folder")
        })
    }

    fn is_root() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    }

    /// Runs a server binary, as the `postgres` OS user when we are root (initdb refuses root).
    fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let mut command = if Self::is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let output = command
            .args(args)
            .output()
            .expect("run a PostgreSQL server binary");
        assert!(
            output.status.success(),
            "{} {args:?} failed: {}{}",
            program.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn init() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("es-pg-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        if Self::is_root() {
            let status = Command::new("chown")
                .arg("postgres")
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown the server directory to postgres");
        }
        let server = PrivateServer {
            bin: Self::bin_dir(),
            dir,
            port,
        };
        let data = server.data();
        server.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        server
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        // Best effort: the server may already be down.
        let _ = Command::new(if Self::is_root() { "runuser" } else { "true" })
            .args(if Self::is_root() {
                vec!["-u".to_owned(), "postgres".to_owned(), "--".to_owned()]
            } else {
                vec![]
            })
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_resumes_after_its_server_restarts_and_calls_fail_typed_meanwhile() {
    let server = PrivateServer::init();
    server.start();
    let mut config = PgConfig::new("restart");
    config.acquire_timeout = Duration::from_secs(1);
    config.poll_interval = Duration::from_millis(200);
    let store = common::store_at(&server.url(), config).await;
    let stream = StreamId::new("restart-1").unwrap();

    let mut subscription = store.subscribe(StreamFilter::All, Position::START);
    let (mut last, mut seen, mut written) = (Position::START, HashSet::new(), HashSet::new());
    for i in 0..30 {
        written.insert(append_until_ok(&store, &stream, i).await);
    }
    collect(&mut subscription, 30, &mut last, &mut seen).await;

    server.stop();
    let down = store
        .append(&stream, ExpectedVersion::Any, vec![sample_event("Lost", 0)])
        .await
        .expect_err("no server, no append");
    assert!(
        matches!(
            down,
            Error::Unavailable {
                backend: "postgres",
                ..
            }
        ),
        "a stopped server is unavailable, got {down:?}"
    );
    let down = store
        .read_all(&StreamFilter::All, Position::START, 10)
        .await
        .unwrap_err();
    assert!(matches!(down, Error::Unavailable { .. }), "got {down:?}");

    server.start();
    for i in 30..60 {
        written.insert(append_until_ok(&store, &stream, i).await);
    }
    collect(&mut subscription, 30, &mut last, &mut seen).await;
    assert_eq!(
        seen, written,
        "every event delivered once across the restart"
    );
    let extra = tokio::time::timeout(Duration::from_millis(500), subscription.next()).await;
    assert!(extra.is_err(), "nothing more: {extra:?}");
    drop(subscription);
    store.close().await;
    drop(server);
}
