//! The load generator against a running system: the embedded one, and one on PostgreSQL,
//! RabbitMQ and Redis for the budget.

mod common;

use std::time::Duration;

use common::System;
use order_processing_example::loadtest::report::{LoadTestReport, Mode};
use order_processing_example::loadtest::{self, LoadTestArgs, Rate};
use order_processing_example::{ServiceKind, Settings};

fn open_loop(system: &System, rate: f64, seconds: u64) -> LoadTestArgs {
    LoadTestArgs {
        rate: Some(Rate::new(rate).expect("a positive rate")),
        duration: Some(Duration::from_secs(seconds)),
        target: system.url(ServiceKind::Order, ""),
        inventory_target: system.url(ServiceKind::Inventory, ""),
        wait: Duration::from_secs(60),
        ..LoadTestArgs::default()
    }
}

/// Every order is accounted for once, in every view of the report.
fn assert_consistent(report: &LoadTestReport) {
    let c = report.orders;
    assert_eq!(c.placed + c.failed, c.scheduled, "{c:?}");
    assert_eq!(c.confirmed + c.cancelled + c.unfinished, c.placed, "{c:?}");
    assert_eq!(
        report.timeline.len(),
        c.confirmed,
        "one point per confirmed order"
    );
    let placed: usize = report.throughput.iter().map(|s| s.placed).sum();
    let confirmed: usize = report.throughput.iter().map(|s| s.confirmed).sum();
    assert_eq!(placed, c.placed, "{:?}", report.throughput);
    assert_eq!(confirmed, c.confirmed, "{:?}", report.throughput);
    let request = report.latency.request.expect("request latencies");
    assert_eq!(request.count, c.scheduled);
    let end_to_end = report.latency.end_to_end.expect("end-to-end latencies");
    assert_eq!(end_to_end.count, c.confirmed);
    assert_eq!(
        report.stages.len(),
        3,
        "placed → reserved → paid → confirmed"
    );
    assert_eq!(
        report.stages[0].summary.count,
        report.stages[1].summary.count
    );
    // An order paid before it heard of its reservation has no first two stages.
    assert_eq!(report.stages[2].summary.count, c.confirmed);
    for stage in &report.stages {
        assert!(stage.summary.count <= c.confirmed, "{stage:?}");
        assert!(stage.summary.p50_ms <= stage.summary.max_ms, "{stage:?}");
    }
    // End to end holds every stage (and the POST before them).
    assert!(
        end_to_end.max_ms + 1.0 >= report.stages[0].summary.max_ms,
        "{report:?}"
    );
    assert!(report.slowest_stage.is_some());
    // The services' /metrics name where the handling time went: every order went through
    // the inventory consumer at least, which takes up to 16 messages a call (a batch). The
    // recorder is the test process's, shared with the systems of the tests running beside this
    // one (their consumers have other prefixes), so one of the inventory consumers listed is
    // this system's.
    assert!(
        report
            .consumers
            .iter()
            .filter(|t| t.consumer.ends_with("inventory-service"))
            .any(|inventory| inventory.attempts >= (c.placed as u64).div_ceil(16)),
        "{:?}",
        report.consumers
    );
    assert_eq!(
        report.slowest_consumer.as_deref(),
        Some(report.consumers[0].consumer.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_run_accounts_for_every_order() {
    let system = System::embedded().await;
    let args = open_loop(&system, 50.0, 3);
    let report = loadtest::run(&args, &Settings::default())
        .await
        .expect("the load test runs");
    assert_eq!(
        report.mode,
        Mode::Open {
            rate: 50.0,
            duration_seconds: 3.0
        }
    );
    assert_eq!(report.orders.scheduled, 150);
    assert_eq!(report.orders.confirmed, 150, "{}", report.render());
    assert_consistent(&report);
    // Arrivals kept to the schedule: sent over about three seconds, not in one burst.
    let last_sent = report
        .timeline
        .iter()
        .map(|p| p.sent_at)
        .fold(0.0, f64::max);
    assert!(
        (2.9..3.0).contains(&last_sent),
        "last order due at {last_sent} s"
    );
    assert_eq!(report.in_flight_bound_hit, 0);
    let html = report.render_html();
    assert_eq!(html.matches("<svg").count(), 2);
    assert_eq!(html.matches("<circle").count(), 150);
    let json = serde_json::to_value(&report).expect("JSON");
    assert_eq!(json["orders"]["confirmed"], 150);
    system.stop().await;
}

/// `loadtest --json` prints the report and nothing else on stdout, whatever the log level: the
/// bench scripts read it with `jq`, and a log line there (a slow statement's warning under
/// load) made it unreadable. Its log goes to stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_json_keeps_stdout_for_the_report() {
    let system = System::embedded().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_order-processing"))
        .args(["loadtest", "--json", "--orders", "3", "--concurrency", "1"])
        .args(["--target", &system.url(ServiceKind::Order, "")])
        .args([
            "--inventory-target",
            &system.url(ServiceKind::Inventory, ""),
        ])
        // Debug logs every connection the load generator opens: plenty to land on stdout.
        .env("RUST_LOG", "debug")
        .output()
        .await
        .expect("run the load generator");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is the report alone ({e}): {stdout:.400}"));
    assert_eq!(report["orders"]["confirmed"], 3, "{stdout:.400}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("DEBUG"),
        "the log went to stderr"
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_loop_run_on_one_hot_product_still_confirms_every_order() {
    let system = System::embedded().await;
    let args = LoadTestArgs {
        orders: 40,
        concurrency: 8,
        hot: true,
        target: system.url(ServiceKind::Order, ""),
        inventory_target: system.url(ServiceKind::Inventory, ""),
        wait: Duration::from_secs(60),
        ..LoadTestArgs::default()
    };
    let report = loadtest::run(&args, &Settings::default())
        .await
        .expect("the load test runs");
    assert_eq!(report.mode, Mode::Closed { concurrency: 8 });
    assert_eq!(report.orders.confirmed, 40, "{}", report.render());
    assert_consistent(&report);
    system.stop().await;
}

/// A database of its own, so `pg_stat_database` counts this system alone; dropped at the end.
async fn fresh_database() -> (String, String) {
    let admin = common::database_url();
    let name = format!(
        "op_loadtest_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let pool = sqlx::PgPool::connect(&admin).await.expect("PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&pool)
        .await
        .expect("create a database");
    pool.close().await;
    let (base, _) = admin.rsplit_once('/').expect("a database URL");
    (name.clone(), format!("{base}/{name}"))
}

async fn drop_database(name: &str) {
    if let Ok(pool) = sqlx::PgPool::connect(&common::database_url()).await {
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        if let Err(error) = sqlx::query(&drop).execute(&pool).await {
            eprintln!("cannot drop database {name}: {error}");
        }
        pool.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_counts_what_an_order_costs_postgresql() {
    let (name, url) = fresh_database().await;
    let mut settings = common::isolated(common::patient());
    settings.database_url = Some(url);
    let backends = common::connect(&settings).await;
    let system = System::start(backends, settings.clone(), &ServiceKind::ALL).await;
    let args = LoadTestArgs {
        stats_settle: Duration::from_secs(2),
        ..open_loop(&system, 10.0, 3)
    };
    let report = loadtest::run(&args, &settings).await;
    system.stop().await;
    drop_database(&name).await;
    let report = report.expect("the load test runs");
    println!("{}", report.render());
    assert_consistent(&report);
    assert!(report.orders.confirmed > 0, "{}", report.render());
    assert!(
        report
            .vacuumed
            .as_deref()
            .is_some_and(|v| v.starts_with("VACUUM ANALYZE of the")),
        "{:?}",
        report.vacuumed
    );
    let budget = report.budget.as_ref().expect("a budget");
    let pg = budget.postgres.expect("PostgreSQL counted");
    let per_order = |n: u64| budget.per_order(n);
    // An order appends to several streams, each in a transaction of its own, and writes
    // its inbox rows, read models and checkpoints.
    assert!(per_order(pg.transactions) >= 3.0, "{}", report.render());
    assert!(per_order(pg.rows_inserted) >= 3.0, "{}", report.render());
    assert!(
        pg.rows_fetched + pg.rows_returned > 0,
        "{}",
        report.render()
    );
    assert!(
        budget.redis_calls.is_some_and(|n| n > 0),
        "{}",
        report.render()
    );
    assert!(budget.cpu_ms_per_order() > 0.0, "{}", report.render());
    assert!(budget.ceiling().is_some());
    let text = report.render();
    assert!(text.contains("budget per order"), "{text}");
    assert!(text.contains("ceiling on"), "{text}");
}
