//! Append and read throughput of `PgEventStore` beside raw sqlx doing the same inserts and
//! reads, in the same run. `cargo run -p es-postgres --release --example pg_throughput`
//! (uses `DATABASE_URL`, default the local server; works in a scratch schema it drops;
//! `NOTIFY=0` turns the store's after-commit notification off).

use std::time::{Duration, Instant};

use es_core::{EventStore, ExpectedVersion, Metadata, NewEvent, Position, StreamFilter, StreamId};
use es_postgres::{PgConfig, PgEventStore};
use sqlx::PgPool;
use uuid::Uuid;

const PAYLOAD: &str = r#"{"orderId":"5f0c6a0e-4a5e-4c57-9b0e-0d5e4c1f2a3b","customerId":"c-1029","lines":[{"sku":"SKU-1","qty":2,"price":"19.90"},{"sku":"SKU-2","qty":1,"price":"5.00"}],"total":"44.80"}"#;

/// The columns raw sqlx reads for a replay.
type RawStreamRow = (
    Uuid,
    i64,
    i64,
    chrono::DateTime<chrono::Utc>,
    String,
    Vec<u8>,
    Vec<u8>,
);
/// The columns raw sqlx reads for the global log.
type RawLogRow = (
    i64,
    Uuid,
    String,
    i64,
    chrono::DateTime<chrono::Utc>,
    String,
    Vec<u8>,
    Vec<u8>,
);

fn event() -> NewEvent {
    NewEvent::raw("OrderPlaced", PAYLOAD).with_metadata(Metadata::new_correlation())
}

async fn raw_insert(pool: &PgPool, stream: &str, from_version: i64, events: &[NewEvent]) {
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let payloads: Vec<&[u8]> = events.iter().map(|e| &e.payload[..]).collect();
    let metadata: Vec<Vec<u8>> = events
        .iter()
        .map(|e| e.metadata.to_json().to_vec())
        .collect();
    sqlx::query(
        "INSERT INTO raw_events (stream_id, version, event_id, event_type, payload, metadata) \
         SELECT $1, $2 + e.n, e.id, e.ty, e.p, e.m \
         FROM UNNEST($3::uuid[], $4::text[], $5::bytea[], $6::bytea[]) WITH ORDINALITY AS e(id, ty, p, m, n)",
    )
    .bind(stream)
    .bind(from_version)
    .bind(&ids)
    .bind(&types)
    .bind(&payloads)
    .bind(&metadata)
    .execute(pool)
    .await
    .expect("raw insert");
}

fn rate(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64()
}

fn report(name: &str, store: f64, raw: f64) {
    println!(
        "{name:<22} store {store:>10.0} ev/s   raw sqlx {raw:>10.0} ev/s   ratio {:.2}",
        store / raw
    );
}

async fn appends(
    store: &PgEventStore,
    pool: &PgPool,
    writers: usize,
    per_writer: u64,
    batch: usize,
    fresh: bool,
) -> (f64, f64) {
    let run = Uuid::new_v4().simple().to_string();
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            let run = run.clone();
            tokio::spawn(async move {
                let mut version = 0;
                for i in 0..per_writer {
                    let stream = if fresh {
                        StreamId::new(format!("order-{run}s{w}n{i}")).unwrap()
                    } else {
                        StreamId::new(format!("order-{run}s{w}")).unwrap()
                    };
                    let events = (0..batch).map(|_| event()).collect();
                    let expected = if fresh {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::Exact(version)
                    };
                    version = store
                        .append(&stream, expected, events)
                        .await
                        .unwrap()
                        .next_expected_version;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let total = writers as u64 * per_writer * batch as u64;
    let store_rate = rate(total, start.elapsed());

    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let pool = pool.clone();
            let run = run.clone();
            tokio::spawn(async move {
                let mut version = 0;
                for i in 0..per_writer {
                    let stream = if fresh {
                        format!("raw-{run}s{w}n{i}")
                    } else {
                        format!("raw-{run}s{w}")
                    };
                    let events: Vec<_> = (0..batch).map(|_| event()).collect();
                    raw_insert(&pool, &stream, if fresh { 0 } else { version }, &events).await;
                    version += batch as i64;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (store_rate, rate(total, start.elapsed()))
}

#[tokio::main]
async fn main() {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
    let schema = format!("bench_{}", &Uuid::new_v4().simple().to_string()[..8]);
    let mut config = PgConfig::new(schema.clone());
    config.max_connections = 20;
    // `NOTIFY=0` measures appends without the after-commit notification.
    config.notify = std::env::var("NOTIFY").map_or(true, |v| v != "0");
    let store = PgEventStore::connect(&url, config).await.expect("connect");
    store.migrate().await.expect("migrate");
    let pool = store.pool().clone();
    sqlx::raw_sql(
        "CREATE TABLE raw_events (seq bigserial PRIMARY KEY, stream_id text NOT NULL, \
         version bigint NOT NULL, event_id uuid NOT NULL UNIQUE, event_type text NOT NULL, \
         payload bytea NOT NULL, metadata bytea NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now(), \
         UNIQUE (stream_id, version))",
    )
    .execute(&pool)
    .await
    .unwrap();

    // Warm-up: connections and prepared statements.
    appends(&store, &pool, 4, 50, 1, false).await;

    // Store and raw alternate, three rounds each; the median ratio is reported, since the
    // machine's load drifts between rounds.
    for (name, writers, per_writer, batch, fresh) in [
        ("append_single", 1, 500, 1, false),
        ("append_concurrent", 16, 100, 1, false),
        ("append_batch_fresh", 1, 100, 100, true),
    ] {
        let mut rounds = Vec::new();
        for _ in 0..3 {
            rounds.push(appends(&store, &pool, writers, per_writer, batch, fresh).await);
        }
        rounds.sort_by(|a, b| (a.0 / a.1).total_cmp(&(b.0 / b.1)));
        let (s, r) = rounds[1];
        report(name, s, r);
    }

    // 16 writers on one stream, each reading the version and appending with it.
    let stream = StreamId::new(format!("order-hot{}", Uuid::new_v4().simple())).unwrap();
    let raw_stream = format!("raw-hot{}", Uuid::new_v4().simple());
    let run_for = Duration::from_secs(3);
    let started = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (store, stream) = (store.clone(), stream.clone());
            tokio::spawn(async move {
                let (mut won, mut lost) = (0u64, 0u64);
                while started.elapsed() < run_for {
                    let version = store.stream_version(&stream).await.unwrap().unwrap_or(0);
                    match store
                        .append(&stream, ExpectedVersion::Exact(version), vec![event()])
                        .await
                    {
                        Ok(_) => won += 1,
                        Err(e) if e.is_conflict() => lost += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                (won, lost)
            })
        })
        .collect();
    let (mut won, mut lost) = (0, 0);
    for t in tasks {
        let (w, l) = t.await.unwrap();
        won += w;
        lost += l;
    }
    let store_rate = rate(won, started.elapsed());
    let started = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (pool, raw_stream) = (pool.clone(), raw_stream.clone());
            tokio::spawn(async move {
                let (mut won, mut lost) = (0u64, 0u64);
                while started.elapsed() < run_for {
                    let version: Option<i64> =
                        sqlx::query_scalar("SELECT max(version) FROM raw_events WHERE stream_id = $1")
                            .bind(&raw_stream)
                            .fetch_one(&pool)
                            .await
                            .unwrap();
                    let new = event();
                    let result = sqlx::query(
                        "INSERT INTO raw_events (stream_id, version, event_id, event_type, payload, metadata) \
                         VALUES ($1, $2, $3, 'OrderPlaced', $4, '\\x7b7d')",
                    )
                    .bind(&raw_stream)
                    .bind(version.unwrap_or(0) + 1)
                    .bind(new.event_id)
                    .bind(&new.payload[..])
                    .execute(&pool)
                    .await;
                    match result {
                        Ok(_) => won += 1,
                        Err(_) => lost += 1,
                    }
                }
                (won, lost)
            })
        })
        .collect();
    let (mut raw_won, mut raw_lost) = (0, 0);
    for t in tasks {
        let (w, l) = t.await.unwrap();
        raw_won += w;
        raw_lost += l;
    }
    report(
        "append_contended",
        store_rate,
        rate(raw_won, started.elapsed()),
    );
    println!("  (conflicts: store {lost}, raw {raw_lost})");

    // Reads: one 10,000-event stream, and the whole log in global order.
    let stream = StreamId::new(format!("order-replay{}", Uuid::new_v4().simple())).unwrap();
    for i in 0..10u64 {
        let events = (0..1000).map(|_| event()).collect();
        store
            .append(&stream, ExpectedVersion::Exact(i * 1000), events)
            .await
            .unwrap();
        let events: Vec<_> = (0..1000).map(|_| event()).collect();
        raw_insert(&pool, "raw-replay", (i * 1000) as i64, &events).await;
    }
    let mut s_total = Duration::ZERO;
    let mut r_total = Duration::ZERO;
    for _ in 0..5 {
        let start = Instant::now();
        let events = store.read_stream_to_end(&stream, 1).await.unwrap();
        assert_eq!(events.len(), 10_000);
        s_total += start.elapsed();
        let start = Instant::now();
        let mut from = 1i64;
        let mut n = 0;
        loop {
            let rows: Vec<RawStreamRow> = sqlx::query_as(
                "SELECT event_id, version, seq, recorded_at, event_type, payload, metadata FROM raw_events \
                 WHERE stream_id = 'raw-replay' AND version >= $1 ORDER BY version LIMIT 4096",
            )
            .bind(from)
            .fetch_all(&pool)
            .await
            .unwrap();
            n += rows.len();
            if rows.len() < 4096 {
                break;
            }
            from = rows.last().unwrap().1 + 1;
        }
        assert_eq!(n, 10_000);
        r_total += start.elapsed();
    }
    report(
        "replay_stream",
        rate(50_000, s_total),
        rate(50_000, r_total),
    );

    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    let raw_all: i64 = sqlx::query_scalar("SELECT count(*) FROM raw_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    let start = Instant::now();
    let mut after = Position::START;
    let mut n = 0;
    loop {
        let page = store
            .read_all(&StreamFilter::All, after, 1000)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        n += page.len();
    }
    assert_eq!(n as i64, all);
    let s = rate(n as u64, start.elapsed());
    let start = Instant::now();
    let mut after = 0i64;
    let mut n = 0;
    loop {
        let rows: Vec<RawLogRow> = sqlx::query_as(
            "SELECT seq, event_id, stream_id, version, recorded_at, event_type, payload, metadata \
             FROM raw_events WHERE seq > $1 ORDER BY seq LIMIT 1000",
        )
        .bind(after)
        .fetch_all(&pool)
        .await
        .unwrap();
        let Some(last) = rows.last() else { break };
        after = last.0;
        n += rows.len();
    }
    assert_eq!(n as i64, raw_all);
    report("read_all", s, rate(n as u64, start.elapsed()));

    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
}
