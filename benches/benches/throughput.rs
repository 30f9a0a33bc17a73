//! Append and replay throughput of es-core's stores, beside the raw drivers in the same run.
//!
//! ```sh
//! cargo bench -p es-benches --bench throughput                  # print the table
//! BENCH_WRITE_DOCS=1 cargo bench -p es-benches --bench throughput --bench bus  # and rewrite docs/benchmarks.md
//! ```
//!
//! `BENCH_SECONDS` (default 3) and `BENCH_RUNS` (default 3; the median is kept) set the length
//! of each measurement. PostgreSQL comes from `DATABASE_URL` or the standard local port; each
//! run works in schemas of its own and drops them at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use es_benches::{
    order_placed, selected, table, throughput, throughput_pair, timed, timed_pair, BenchEvent,
    OrderBook, OrderPlacedData, PlaceOrders, Plan, Row,
};
use es_core::memory::MemoryEventStore;
use es_core::{
    EventStore, ExpectedVersion, Metadata, NewEvent, Position, Repository, StreamFilter, StreamId,
};
use es_postgres::{PgConfig, PgEventStore};
use futures_util::StreamExt;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

const RAW_TABLE: &str = "
    CREATE TABLE raw_events (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        stream_id text NOT NULL,
        category text NOT NULL,
        version bigint NOT NULL,
        event_id uuid NOT NULL UNIQUE,
        event_type text NOT NULL,
        payload jsonb NOT NULL,
        metadata jsonb NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (stream_id, version)
    );
    CREATE INDEX raw_events_category ON raw_events (category, seq)";

const RAW_INSERT: &str = "
    INSERT INTO raw_events (stream_id, category, version, event_id, event_type, payload, metadata)
    SELECT s, split_part(s, '-', 1), v, i, t, p, m
    FROM UNNEST($1::text[], $2::bigint[], $3::uuid[], $4::text[], $5::jsonb[], $6::jsonb[]) AS u(s, v, i, t, p, m)";

fn new_events(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|_| {
            NewEvent::from_domain(&order_placed(), Metadata::new_correlation()).expect("encodes")
        })
        .collect()
}

/// The raw driver: one multi-row INSERT (UNNEST) of `n` events at versions `from..from+n`.
async fn raw_append(pool: &PgPool, stream: &str, from: i64, n: usize) -> Result<(), sqlx::Error> {
    let events = new_events(n);
    let streams = vec![stream.to_owned(); n];
    let versions: Vec<i64> = (0..n as i64).map(|i| from + i).collect();
    let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.event_id).collect();
    let types: Vec<String> = events.iter().map(|e| e.event_type.clone()).collect();
    let payloads: Vec<serde_json::Value> = events
        .iter()
        .map(|e| serde_json::from_slice(&e.payload).expect("json"))
        .collect();
    let metadata: Vec<serde_json::Value> = events
        .iter()
        .map(|e| serde_json::to_value(&e.metadata).expect("json"))
        .collect();
    sqlx::query(RAW_INSERT)
        .bind(streams)
        .bind(versions)
        .bind(ids)
        .bind(types)
        .bind(payloads)
        .bind(metadata)
        .execute(pool)
        .await
        .map(|_| ())
}

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned())
}

struct Pg {
    store: PgEventStore,
    raw: PgPool,
    schemas: Vec<String>,
}

async fn connect() -> Pg {
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let (store_schema, raw_schema) = (format!("bench_es_{suffix}"), format!("bench_raw_{suffix}"));
    let mut config = PgConfig::new(&store_schema);
    config.max_connections = 20;
    let store = PgEventStore::connect(&database_url(), config)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} ({e}); set DATABASE_URL", database_url()));
    store.migrate().await.expect("migrate");
    let admin = PgPool::connect(&database_url()).await.expect("connect");
    sqlx::query(&format!("CREATE SCHEMA {raw_schema}"))
        .execute(&admin)
        .await
        .expect("schema");
    admin.close().await;
    let search_path = raw_schema.clone();
    let raw = PgPoolOptions::new()
        .max_connections(20)
        .after_connect(move |conn, _| {
            let sql = format!("SET search_path TO {search_path}");
            Box::pin(async move {
                sqlx::Executor::execute(conn, sql.as_str())
                    .await
                    .map(|_| ())
            })
        })
        .connect(&database_url())
        .await
        .expect("raw pool");
    sqlx::raw_sql(RAW_TABLE)
        .execute(&raw)
        .await
        .expect("raw table");
    Pg {
        store,
        raw,
        schemas: vec![store_schema, raw_schema],
    }
}

async fn drop_schemas(pg: Pg) {
    pg.store.close().await;
    pg.raw.close().await;
    let admin = PgPool::connect(&database_url()).await.expect("connect");
    for schema in pg.schemas {
        let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&admin)
            .await;
    }
}

fn sid(prefix: &str, n: impl std::fmt::Display) -> StreamId {
    StreamId::new(format!("{prefix}-{n}")).expect("stream id")
}

/// One writer or 16 on distinct streams, one event per append; 100-event batches on fresh
/// streams: the store beside the raw INSERT.
async fn appends(plan: Plan, pg: &Pg, rows: &mut Vec<Row>) {
    for (scenario, writers, batch) in [
        ("append_single", 1usize, 1usize),
        ("append_concurrent (16 writers)", 16, 1),
        ("append_batch_fresh (100 per append)", 1, 100),
    ] {
        let store = pg.store.clone();
        let run = uuid::Uuid::new_v4().simple().to_string();
        let next = Arc::new((0..writers).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
        let contender = move |task: usize| {
            let (store, next, run) = (store.clone(), next.clone(), run.clone());
            async move {
                let n = next[task].fetch_add(1, Ordering::Relaxed);
                let (stream, expected) = if batch > 1 {
                    (
                        sid(&format!("fresh{run}"), format!("{task}x{n}")),
                        ExpectedVersion::NoStream,
                    )
                } else {
                    (sid(&format!("w{run}"), task), ExpectedVersion::Exact(n))
                };
                store
                    .append(&stream, expected, new_events(batch))
                    .await
                    .expect("append");
                batch as u64
            }
        };
        let raw_pool = pg.raw.clone();
        let run = uuid::Uuid::new_v4().simple().to_string();
        let next = Arc::new((0..writers).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
        let raw = move |task: usize| {
            let (pool, next, run) = (raw_pool.clone(), next.clone(), run.clone());
            async move {
                let n = next[task].fetch_add(1, Ordering::Relaxed) as i64;
                if batch > 1 {
                    raw_append(&pool, &format!("fresh{run}-{task}x{n}"), 1, batch)
                        .await
                        .expect("raw");
                } else {
                    raw_append(&pool, &format!("w{run}-{task}"), n + 1, 1)
                        .await
                        .expect("raw");
                }
                batch as u64
            }
        };
        let (rate, raw) = throughput_pair(plan, writers, contender, raw).await;
        rows.push(Row {
            scenario: scenario.into(),
            contender: "es-postgres".into(),
            rate,
            raw: Some(raw),
            target: Some(0.9),
            unit: "events/s",
        });
    }
}

/// 16 writers on one stream with expected versions: successful events/s (and conflicts/s).
async fn contended(plan: Plan, pg: &Pg, rows: &mut Vec<Row>) {
    let stream = sid("contended", uuid::Uuid::new_v4().simple());
    let conflicts = Arc::new(AtomicU64::new(0));
    let (store, c) = (pg.store.clone(), conflicts.clone());
    let contender = move |_| {
        let (store, stream, conflicts) = (store.clone(), stream.clone(), c.clone());
        async move {
            let version = store
                .stream_version(&stream)
                .await
                .expect("version")
                .unwrap_or(0);
            match store
                .append(&stream, ExpectedVersion::Exact(version), new_events(1))
                .await
            {
                Ok(_) => 1,
                Err(e) if e.is_conflict() => {
                    conflicts.fetch_add(1, Ordering::Relaxed);
                    0
                }
                Err(e) => panic!("append: {e}"),
            }
        }
    };
    let raw_stream = format!("contended-{}", uuid::Uuid::new_v4().simple());
    let pool = pg.raw.clone();
    let raw = move |_| {
        let (pool, stream) = (pool.clone(), raw_stream.clone());
        async move {
            let version: Option<i64> =
                sqlx::query_scalar("SELECT max(version) FROM raw_events WHERE stream_id = $1")
                    .bind(&stream)
                    .fetch_one(&pool)
                    .await
                    .expect("max");
            match raw_append(&pool, &stream, version.unwrap_or(0) + 1, 1).await {
                Ok(()) => 1,
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => 0,
                Err(e) => panic!("raw: {e}"),
            }
        }
    };
    let (rate, raw) = throughput_pair(plan, 16, contender, raw).await;
    rows.push(Row {
        scenario: "append_contended (16 writers, 1 stream)".into(),
        contender: "es-postgres".into(),
        rate,
        raw: Some(raw),
        target: Some(0.9),
        unit: "events/s",
    });
    let seconds = plan.seconds * plan.runs as f64;
    println!(
        "append_contended: {:.0} conflicts/s on es-postgres",
        conflicts.load(Ordering::Relaxed) as f64 / seconds
    );
}

/// 100 events per command through the repository onto one growing stream, snapshots on.
async fn repository_batches(plan: Plan, pg: &Pg, rows: &mut Vec<Row>) {
    let store: Arc<dyn EventStore> = Arc::new(pg.store.clone());
    let repo = Repository::<OrderBook>::new(store).with_snapshots(pg.store.clone(), 100);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let contender = move |_| {
        let (repo, id) = (repo.clone(), id.clone());
        async move {
            repo.execute(&id, PlaceOrders(100), Metadata::default())
                .await
                .expect("execute");
            100
        }
    };
    let pool = pg.raw.clone();
    let stream = format!("batch-{}", uuid::Uuid::new_v4().simple());
    let next = Arc::new(AtomicU64::new(0));
    let raw = move |_| {
        let (pool, stream, next) = (pool.clone(), stream.clone(), next.clone());
        async move {
            let n = next.fetch_add(100, Ordering::Relaxed) as i64;
            raw_append(&pool, &stream, n + 1, 100).await.expect("raw");
            100
        }
    };
    let (rate, raw) = throughput_pair(plan, 1, contender, raw).await;
    rows.push(Row {
        scenario: "append_batch (100 per command, repository, snapshots)".into(),
        contender: "es-postgres".into(),
        rate,
        raw: Some(raw),
        target: Some(0.5),
        unit: "events/s",
    });
}

/// Writes `n` events to one stream of the store and of the raw table.
async fn seed_stream(pg: &Pg, stream: &StreamId, n: usize) {
    let mut version = 0;
    while version < n {
        let batch = 1000.min(n - version);
        pg.store
            .append(
                stream,
                ExpectedVersion::Exact(version as u64),
                new_events(batch),
            )
            .await
            .expect("seed");
        raw_append(&pg.raw, stream.as_str(), version as i64 + 1, batch)
            .await
            .expect("seed raw");
        version += batch;
    }
}

/// Both tables as autovacuum would leave them after a load: statistics gathered (so the
/// planner picks the index on both sides) and hint bits set (so neither side pays for that
/// during the measurement).
async fn vacuum(pg: &Pg) {
    for (pool, table) in [(pg.store.pool(), "events"), (&pg.raw, "raw_events")] {
        sqlx::query(&format!("VACUUM ANALYZE {table}"))
            .execute(pool)
            .await
            .expect("vacuum");
    }
}

/// Load a stream into an aggregate (decode and fold every event), beside the raw read of the
/// same rows (jsonb decoded into the same event type and folded).
async fn replays(plan: Plan, pg: &Pg, rows: &mut Vec<Row>) {
    for n in [10_000usize, 100_000] {
        // The repository's stream of aggregate `id` is `book-{id}`.
        let id = format!("{n}x{}", uuid::Uuid::new_v4().simple());
        let stream = Repository::<OrderBook>::stream_id(&id).expect("id");
        seed_stream(pg, &stream, n).await;
        vacuum(pg).await;
        let repo = Repository::<OrderBook>::new(pg.store.clone());
        let contender = || {
            let repo = repo.clone();
            let id = id.clone();
            async move {
                let loaded = repo.load(&id).await.expect("load");
                assert_eq!(loaded.state.orders, n as u64);
                loaded.version
            }
        };
        let pool = pg.raw.clone();
        let raw_stream = stream.to_string();
        let raw = || {
            let (pool, stream) = (pool.clone(), raw_stream.clone());
            async move {
                let mut book = OrderBook::default();
                let mut after = 0i64;
                loop {
                    let page: Vec<(i64, sqlx::types::Json<OrderPlacedData>)> = sqlx::query_as(
                        "SELECT version, payload FROM raw_events WHERE stream_id = $1 AND version > $2 ORDER BY version LIMIT 4096",
                    )
                    .bind(&stream)
                    .bind(after)
                    .fetch_all(&pool)
                    .await
                    .expect("raw read");
                    let Some(last) = page.last() else { break };
                    after = last.0;
                    for (_, sqlx::types::Json(payload)) in page {
                        es_core::Aggregate::apply(&mut book, &BenchEvent::from(payload));
                    }
                }
                book.orders
            }
        };
        let (rate, raw) = timed_pair(plan, &contender, raw).await;
        rows.push(Row {
            scenario: format!("replay_stream ({n} events)"),
            contender: "es-postgres".into(),
            rate,
            raw: Some(raw),
            target: Some(1.0),
            unit: "events/s",
        });
        // The same load beside the leanest raw read of the store's own table: one streaming
        // query of the stream's versions and payloads, each payload decoded and folded.
        let lean = || lean_replay(pg.store.pool().clone(), stream.to_string());
        let (rate, raw) = timed_pair(plan, &contender, lean).await;
        rows.push(Row {
            scenario: format!("replay_stream ({n} events) vs raw on our table"),
            contender: "es-postgres".into(),
            rate,
            raw: Some(raw),
            target: Some(0.9),
            unit: "events/s",
        });

        // The same load through a snapshot at the stream's end minus 100.
        let snapshots =
            Repository::<OrderBook>::new(pg.store.clone()).with_snapshots(pg.store.clone(), 1);
        let state = OrderBook {
            orders: n as u64 - 100,
            total_cents: 0,
        };
        es_core::SnapshotStore::save(
            &pg.store,
            es_core::Snapshot {
                stream_id: stream.clone(),
                version: n as u64 - 100,
                schema_version: 1,
                payload: serde_json::to_vec(&state).expect("json").into(),
                taken_at: chrono::Utc::now(),
            },
        )
        .await
        .expect("snapshot");
        let with_snapshot = timed(plan, || {
            let (repo, id) = (snapshots.clone(), id.clone());
            async move {
                assert_eq!(repo.load(&id).await.expect("load").version, n as u64);
                1
            }
        })
        .await;
        // Loads per second of the whole aggregate, beside the raw driver reading all n events.
        rows.push(Row {
            scenario: format!("load a {n}-event aggregate (snapshot 100 behind)"),
            contender: "es-postgres".into(),
            rate: with_snapshot,
            raw: Some(raw / n as f64),
            target: None,
            unit: "loads/s",
        });
    }
}

/// A row of the raw table as the raw driver reads a whole envelope: ids, stream, version, type,
/// time, the payload decoded straight into the event's fields, the metadata into the
/// framework's own metadata type (so both sides decode the same JSON into the same types).
type RawRow = (
    i64,
    uuid::Uuid,
    String,
    i64,
    String,
    chrono::DateTime<chrono::Utc>,
    sqlx::types::Json<OrderPlacedData>,
    sqlx::types::Json<Metadata>,
);

/// A row of the store's own `events` table as a lean consumer reads it: typed columns, the
/// payload (`bytea`) decoded straight into the event's fields, the metadata kept as the bytes
/// it is stored as (a consumer that needs it decodes it; a scan that does not, does not).
type LeanRow = (
    uuid::Uuid,
    String,
    i64,
    i64,
    i64,
    chrono::DateTime<chrono::Utc>,
    String,
    i32,
    Vec<u8>,
    Vec<u8>,
);

/// "Raw on our table": plain sqlx reading the store's `events` table with one streaming
/// `SELECT … ORDER BY tx_id, seq`, the same columns the store hands out, no horizon and no
/// metadata decoding. What the store's own scans are measured against (the anchors' limit).
async fn lean_scan(pool: PgPool) -> u64 {
    let mut rows = sqlx::query_as::<_, LeanRow>(
        "SELECT event_id, stream_id, stream_version, tx_id, seq, recorded_at, event_type, \
         schema_version, payload, metadata FROM events ORDER BY tx_id, seq",
    )
    .fetch(&pool);
    let mut count = 0u64;
    while let Some(row) = rows.next().await {
        let row = row.expect("raw scan of events");
        let data: OrderPlacedData = serde_json::from_slice(&row.8).expect("payload");
        let _: BenchEvent = data.into();
        count += 1;
    }
    count
}

/// "Raw on our table" for a replay: plain sqlx reading one stream of the store's `events`
/// table with one streaming query, each payload (`bytea`) decoded straight into the event's
/// fields and folded, as the repository folds it.
async fn lean_replay(pool: PgPool, stream: String) -> u64 {
    let mut rows = sqlx::query_as::<_, (i64, Vec<u8>)>(
        "SELECT stream_version, payload FROM events WHERE stream_id = $1 ORDER BY stream_version",
    )
    .bind(&stream)
    .fetch(&pool);
    let mut book = OrderBook::default();
    let mut version = 0;
    while let Some(row) = rows.next().await {
        let (at, payload) = row.expect("raw replay of events");
        let data: OrderPlacedData = serde_json::from_slice(&payload).expect("payload");
        es_core::Aggregate::apply(&mut book, &BenchEvent::from(data));
        version = at;
    }
    assert_eq!(book.orders, version as u64);
    version as u64
}

/// Scan the global log in order, page by page.
async fn read_all(plan: Plan, pg: &Pg, rows: &mut Vec<Row>) {
    // At least the anchors' 100,000 events on both sides (the other scenarios, when they ran
    // first, wrote more).
    const AT_LEAST: usize = 100_000;
    let (stored, raw_stored): (i64, i64) = (
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(pg.store.pool())
            .await
            .expect("count"),
        sqlx::query_scalar("SELECT count(*) FROM raw_events")
            .fetch_one(&pg.raw)
            .await
            .expect("count"),
    );
    let missing = AT_LEAST.saturating_sub(stored.min(raw_stored) as usize);
    if missing > 0 {
        seed_stream(pg, &sid("seed", uuid::Uuid::new_v4().simple()), missing).await;
    }
    vacuum(pg).await;
    let total = pg
        .store
        .read_all(&StreamFilter::All, Position::START, usize::MAX)
        .await
        .expect("count")
        .len();
    let raw_total: i64 = sqlx::query_scalar("SELECT count(*) FROM raw_events")
        .fetch_one(&pg.raw)
        .await
        .expect("count");
    println!("read_all scans {total} events (raw table: {raw_total})");
    let store = pg.store.clone();
    let contender = || {
        let store = store.clone();
        async move {
            let mut after = Position::START;
            let mut count = 0u64;
            loop {
                let page = store
                    .read_all(&StreamFilter::All, after, 1000)
                    .await
                    .expect("read_all");
                let Some(last) = page.last() else { break };
                after = last.position;
                for event in &page {
                    let _: BenchEvent = event.decode().expect("decodes");
                }
                count += page.len() as u64;
            }
            count
        }
    };
    let pool = pg.raw.clone();
    let raw = || {
        let pool = pool.clone();
        async move {
            let mut after = 0i64;
            let mut count = 0u64;
            loop {
                // The whole envelope, as the store reads it: ids, stream, version, type, time,
                // payload and metadata.
                let page: Vec<RawRow> =
                    sqlx::query_as("SELECT seq, event_id, stream_id, version, event_type, recorded_at, payload, metadata FROM raw_events WHERE seq > $1 ORDER BY seq LIMIT 1000")
                        .bind(after)
                        .fetch_all(&pool)
                        .await
                        .expect("raw read_all");
                let Some(last) = page.last() else { break };
                after = last.0;
                count += page.len() as u64;
                for row in page {
                    let _: BenchEvent = row.6 .0.into();
                }
            }
            count
        }
    };
    let (rate, raw) = timed_pair(plan, &contender, raw).await;
    rows.push(Row {
        scenario: format!("read_all ({total} events, pages of 1000)"),
        contender: "es-postgres".into(),
        rate,
        raw: Some(raw),
        target: Some(1.0),
        unit: "events/s",
    });
    let (rate, raw) = timed_pair(plan, &contender, || lean_scan(pg.store.pool().clone())).await;
    rows.push(Row {
        scenario: format!("read_all ({total} events, pages of 1000) vs raw on our table"),
        contender: "es-postgres".into(),
        rate,
        raw: Some(raw),
        target: Some(0.9),
        unit: "events/s",
    });

    // The same scan as a catch-up subscription (what a projection or relay far behind does),
    // beside the raw driver's best: one query streaming every row.
    let store = pg.store.clone();
    let contender = || {
        let store = store.clone();
        async move {
            let mut events = store
                .subscribe(StreamFilter::All, Position::START)
                .take(total);
            let mut count = 0u64;
            while let Some(event) = events.next().await {
                let _: BenchEvent = event.expect("catch-up").decode().expect("decodes");
                count += 1;
            }
            count
        }
    };
    let pool = pg.raw.clone();
    let raw = || {
        let pool = pool.clone();
        async move {
            let mut rows = sqlx::query_as::<_, RawRow>(
                "SELECT seq, event_id, stream_id, version, event_type, recorded_at, payload, metadata FROM raw_events ORDER BY seq",
            )
            .fetch(&pool);
            let mut count = 0u64;
            while let Some(row) = rows.next().await {
                let _: BenchEvent = row.expect("raw scan").6 .0.into();
                count += 1;
            }
            count
        }
    };
    let (rate, raw) = timed_pair(plan, &contender, raw).await;
    rows.push(Row {
        scenario: format!("catch-up subscription ({total} events, streamed)"),
        contender: "es-postgres".into(),
        rate,
        raw: Some(raw),
        target: Some(1.0),
        unit: "events/s",
    });
    let (rate, raw) = timed_pair(plan, &contender, || lean_scan(pg.store.pool().clone())).await;
    rows.push(Row {
        scenario: format!("catch-up subscription ({total} events, streamed) vs raw on our table"),
        contender: "es-postgres".into(),
        rate,
        raw: Some(raw),
        target: Some(0.9),
        unit: "events/s",
    });
}

/// The in-memory store, for scale (no raw baseline: it is the ceiling of the typed layer).
async fn memory(plan: Plan, rows: &mut Vec<Row>) {
    let store = MemoryEventStore::new();
    for (scenario, writers, batch) in [
        ("append_single", 1usize, 1usize),
        ("append_concurrent (16 writers)", 16, 1),
        ("append_batch_fresh (100 per append)", 1, 100),
    ] {
        let (s, run) = (store.clone(), uuid::Uuid::new_v4().simple().to_string());
        let next = Arc::new(AtomicU64::new(0));
        let rate = throughput(plan, writers, move |task| {
            let (store, run, next) = (s.clone(), run.clone(), next.clone());
            async move {
                let n = next.fetch_add(1, Ordering::Relaxed);
                store
                    .append(
                        &sid(&format!("m{run}"), format!("{task}x{n}")),
                        ExpectedVersion::NoStream,
                        new_events(batch),
                    )
                    .await
                    .expect("append");
                batch as u64
            }
        })
        .await;
        rows.push(Row {
            scenario: scenario.into(),
            contender: "MemoryEventStore".into(),
            rate,
            raw: None,
            target: None,
            unit: "events/s",
        });
    }
    let repo = Repository::<OrderBook>::new(store.clone());
    repo.execute("replay", PlaceOrders(10_000), Metadata::default())
        .await
        .expect("seed");
    let rate = timed(plan, || {
        let repo = repo.clone();
        async move { repo.load("replay").await.expect("load").version }
    })
    .await;
    rows.push(Row {
        scenario: "replay_stream (10000 events)".into(),
        contender: "MemoryEventStore".into(),
        rate,
        raw: None,
        target: None,
        unit: "events/s",
    });
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or("unknown".to_owned(), |kb| {
            format!("{:.0} GiB", kb / 1024.0 / 1024.0)
        });
    format!("{cores} cores, {memory} memory")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo test --benches` runs bench targets with `--bench`-less args; skip the heavy work
    // unless asked to measure.
    if !args.iter().any(|a| a == "--bench") {
        println!("throughput: run with `cargo bench -p es-benches --bench throughput`");
        return;
    }
    let plan = Plan::from_env();
    let mut rows = Vec::new();
    if selected("memory") {
        memory(plan, &mut rows).await;
    }
    let pg = connect().await;
    if selected("append") {
        appends(plan, &pg, &mut rows).await;
    }
    if selected("contended") {
        contended(plan, &pg, &mut rows).await;
    }
    if selected("repository") {
        repository_batches(plan, &pg, &mut rows).await;
    }
    if selected("replay") {
        replays(plan, &pg, &mut rows).await;
    }
    if selected("read_all") {
        read_all(plan, &pg, &mut rows).await;
    }
    drop_schemas(pg).await;

    let table = table(&rows);
    println!("\n{table}");
    if std::env::var_os("BENCH_WRITE_DOCS").is_some() {
        es_benches::write_doc_section(
            "throughput",
            "PostgreSQL and in memory",
            &format!(
                "Measured by `BENCH_WRITE_DOCS=1 cargo bench -p es-benches --bench throughput --bench bus` on {}, \
                 PostgreSQL on loopback. Each figure is the median of {} runs of {} s; every PostgreSQL figure is \
                 beside the raw driver (sqlx, one multi-row `INSERT … UNNEST` per append; reads of a jsonb column decoded \
                 into the same event type) measured in the same run, the two sides' runs alternating. Compare ratios, not absolute numbers: those drift \
                 by 20 % between runs on shared machines.\n\n{table}",
                machine(),
                plan.runs,
                plan.seconds
            ),
        );
    }
}
