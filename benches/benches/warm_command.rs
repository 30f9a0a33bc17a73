//! A command on a warm aggregate through the repository, with and without its aggregate
//! cache, beside raw sqlx doing the same (read the stream's tail, insert one event); and
//! loading several aggregates with one `load_many` against one `load` each.
//!
//! ```sh
//! cargo bench -p es-benches --bench warm_command
//! ```
//!
//! `BENCH_RUNS` (default 3; the median is kept) as in the `throughput` bench; `BENCH_STREAMS`
//! (default 200) aggregates of `BENCH_HISTORY` (default 20) events each. Besides the rates it
//! prints what each command costs the `events` table, from PostgreSQL's per-table counters of
//! this run's own schema (index scans, rows fetched, rows inserted), so that other work on the
//! server does not blur them.

use std::sync::Arc;
use std::time::Duration;

use es_benches::{table, timed, timed_pair, OrderBook, OrderPlacedData, PlaceOrders, Plan, Row};
use es_core::{EventStore, Metadata, NewEvent, Repository};
use es_postgres::{PgConfig, PgEventStore};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

const RAW_TABLE: &str = "
    CREATE TABLE raw_events (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        stream_id text NOT NULL,
        version bigint NOT NULL,
        event_id uuid NOT NULL UNIQUE,
        event_type text NOT NULL,
        payload jsonb NOT NULL,
        metadata jsonb NOT NULL,
        UNIQUE (stream_id, version)
    )";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The raw side's warm aggregate: its state and version kept in memory, as the cache keeps
/// them, so that each command reads only the tail and inserts one row.
struct RawAggregate {
    stream: String,
    book: OrderBook,
    version: i64,
}

async fn raw_command(pool: &PgPool, aggregate: &mut RawAggregate) {
    let tail: Vec<(i64, sqlx::types::Json<OrderPlacedData>)> = sqlx::query_as(
        "SELECT version, payload FROM raw_events WHERE stream_id = $1 AND version > $2 ORDER BY version",
    )
    .bind(&aggregate.stream)
    .bind(aggregate.version)
    .fetch_all(pool)
    .await
    .expect("raw tail");
    for (version, sqlx::types::Json(data)) in tail {
        es_core::Aggregate::apply(&mut aggregate.book, &data.into());
        aggregate.version = version;
    }
    let event = NewEvent::from_domain(&es_benches::order_placed(), Metadata::new_correlation())
        .expect("encodes");
    let payload: serde_json::Value = serde_json::from_slice(&event.payload).expect("json");
    sqlx::query(
        "INSERT INTO raw_events (stream_id, version, event_id, event_type, payload, metadata) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&aggregate.stream)
    .bind(aggregate.version + 1)
    .bind(event.event_id)
    .bind(&event.event_type)
    .bind(&payload)
    .bind(serde_json::to_value(&event.metadata).expect("json"))
    .execute(pool)
    .await
    .expect("raw insert");
    let data: OrderPlacedData = serde_json::from_value(payload).expect("decodes");
    es_core::Aggregate::apply(&mut aggregate.book, &data.into());
    aggregate.version += 1;
}

/// The per-table counters of `events` in the store's schema (index scans, rows fetched by
/// them, rows read by sequential scans, rows inserted), after PostgreSQL flushed them.
async fn table_counters(pool: &PgPool) -> [i64; 4] {
    // A backend reports its counters at the end of a transaction at most once a second, and
    // an idle one ten seconds after its last transaction: wait for both.
    tokio::time::sleep(Duration::from_millis(11_000)).await;
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(pool)
        .await
        .expect("clear");
    let (a, b, c, d): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT coalesce(idx_scan, 0), coalesce(idx_tup_fetch, 0), coalesce(seq_tup_read, 0), n_tup_ins \
         FROM pg_stat_user_tables WHERE relname = 'events' AND schemaname = current_schema()",
    )
    .fetch_one(pool)
    .await
    .expect("counters");
    [a, b, c, d]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("warm_command: run with `cargo bench -p es-benches --bench warm_command`");
        return;
    }
    let plan = Plan::from_env();
    let streams = env_usize("BENCH_STREAMS", 200);
    let history = env_usize("BENCH_HISTORY", 20);

    let suffix = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let (store_schema, raw_schema) = (format!("bench_wc_{suffix}"), format!("bench_wcr_{suffix}"));
    let store = PgEventStore::connect(&database_url(), PgConfig::new(&store_schema))
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} ({e}); set DATABASE_URL", database_url()));
    store.migrate().await.expect("migrate");
    let admin = PgPool::connect(&database_url()).await.expect("connect");
    sqlx::query(&format!("CREATE SCHEMA {raw_schema}"))
        .execute(&admin)
        .await
        .expect("schema");
    let search_path = raw_schema.clone();
    let raw = PgPoolOptions::new()
        .max_connections(4)
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
    sqlx::query(RAW_TABLE).execute(&raw).await.expect("table");

    // Each side gets its own aggregates of `history` events, so that all grow alike.
    let shared: Arc<dyn EventStore> = Arc::new(store.clone());
    let seed = Repository::<OrderBook>::new(shared.clone());
    let ids = |side: &str| -> Vec<String> {
        (0..streams)
            .map(|i| format!("{side}{suffix}x{i}"))
            .collect()
    };
    let (plain_ids, cached_ids, many_ids) = (ids("p"), ids("c"), ids("m"));
    for id in plain_ids.iter().chain(&cached_ids).chain(&many_ids) {
        seed.execute(id, PlaceOrders(history), Metadata::default())
            .await
            .expect("seed");
    }
    let mut raw_aggregates = Vec::new();
    for i in 0..streams {
        let mut aggregate = RawAggregate {
            stream: format!("book-r{suffix}x{i}"),
            book: OrderBook::default(),
            version: 0,
        };
        for _ in 0..history {
            raw_command(&raw, &mut aggregate).await;
        }
        raw_aggregates.push(aggregate);
    }
    for (pool, table) in [(store.pool(), "events"), (&raw, "raw_events")] {
        sqlx::query(&format!("VACUUM ANALYZE {table}"))
            .execute(pool)
            .await
            .expect("vacuum");
    }

    let plain = Repository::<OrderBook>::new(shared.clone());
    let cached = Repository::<OrderBook>::new(shared.clone()).with_cache(streams);
    // Warm the cache (a service's cache is warm for the aggregates it handles often).
    cached.load_many(&cached_ids).await.expect("warm");

    // One command per aggregate per run, one after the other: the latency of a command.
    let run = |repository: Repository<OrderBook>, ids: Vec<String>| {
        move || {
            let (repository, ids) = (repository.clone(), ids.clone());
            async move {
                for id in &ids {
                    repository
                        .execute(id, PlaceOrders(1), Metadata::default())
                        .await
                        .expect("execute");
                }
                ids.len() as u64
            }
        }
    };
    let raw_aggregates = Arc::new(tokio::sync::Mutex::new(raw_aggregates));
    let raw_run = || {
        let (pool, aggregates) = (raw.clone(), raw_aggregates.clone());
        async move {
            let mut aggregates = aggregates.lock().await;
            for aggregate in aggregates.iter_mut() {
                raw_command(&pool, aggregate).await;
            }
            aggregates.len() as u64
        }
    };

    let mut rows = Vec::new();
    // The shared machine's load drifts: each pair alternates its two sides' runs.
    let (cached_rate, plain_rate) = timed_pair(
        plan,
        run(cached.clone(), cached_ids.clone()),
        run(plain.clone(), plain_ids.clone()),
    )
    .await;
    let (plain_rate_2, raw_rate) =
        timed_pair(plan, run(plain.clone(), plain_ids.clone()), raw_run).await;
    let plain_rate = (plain_rate + plain_rate_2) / 2.0;
    let stats = cached.cache_stats().expect("a cache");
    println!("cache after the runs: {stats:?}");

    // The counters, over a run of each side alone.
    let before = table_counters(store.pool()).await;
    run(plain.clone(), plain_ids.clone())().await;
    let after_plain = table_counters(store.pool()).await;
    run(cached.clone(), cached_ids.clone())().await;
    let after_cached = table_counters(store.pool()).await;
    let scenario = format!("command on a warm aggregate ({history}+ events, 1 event appended)");
    rows.push(Row {
        scenario: scenario.clone(),
        contender: "Repository, no cache".into(),
        rate: plain_rate,
        raw: Some(raw_rate),
        target: None,
        unit: "commands/s",
    });
    rows.push(Row {
        scenario,
        contender: format!("Repository::with_cache({streams})"),
        rate: cached_rate,
        raw: Some(raw_rate),
        target: None,
        unit: "commands/s",
    });

    // Loading 8 aggregates of one unit of work: one load each, or one load_many.
    let group = 8;
    let groups: Vec<Vec<String>> = many_ids.chunks(group).map(<[String]>::to_vec).collect();
    let groups = Arc::new(groups);
    let one_by_one = timed(plan, || {
        let (repository, groups) = (plain.clone(), groups.clone());
        async move {
            for ids in groups.iter() {
                for id in ids {
                    repository.load(id).await.expect("load");
                }
            }
            groups.len() as u64
        }
    })
    .await;
    let together = timed(plan, || {
        let (repository, groups) = (plain.clone(), groups.clone());
        async move {
            for ids in groups.iter() {
                repository.load_many(ids).await.expect("load_many");
            }
            groups.len() as u64
        }
    })
    .await;
    rows.push(Row {
        scenario: format!("load {group} aggregates of {history} events"),
        contender: "load_many (one query)".into(),
        rate: together,
        raw: Some(one_by_one),
        target: None,
        unit: "groups/s",
    });

    let commands = streams as f64;
    let per = |a: [i64; 4], b: [i64; 4]| -> String {
        let d: Vec<f64> = (0..4).map(|i| (b[i] - a[i]) as f64 / commands).collect();
        format!("| {:.2} | {:.1} | {:.1} | {:.2} |", d[0], d[1], d[2], d[3])
    };
    let counters = format!(
        "| per command on `events` | index scans | rows fetched by index | rows read by seq scan | rows inserted |\n\
         |---|---|---|---|---|\n\
         | Repository, no cache {}\n\
         | Repository::with_cache {}\n",
        per(before, after_plain),
        per(after_plain, after_cached),
    );
    println!(
        "\n{}\nIn the load_many row, \"raw driver\" is the same groups loaded one `load` per aggregate.\n\n{counters}",
        table(&rows)
    );

    store.close().await;
    raw.close().await;
    for schema in [store_schema, raw_schema] {
        let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&admin)
            .await;
    }
}
