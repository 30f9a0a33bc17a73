//! The proof: the five services as processes on the real backends, orders at a steady rate
//! with a 1 s order timeout, faults injected at random (SIGKILL and restart, the broker closing
//! connections, PostgreSQL backends terminated, Redis stopped and started, duplicate
//! deliveries), then every order, stock figure, payment, notification, count and dead-letter
//! queue checked. See `order_processing_example::chaos`.

mod common;

use std::time::Duration;

use order_processing_example::chaos::{self, ChaosArgs, ChaosReport, FaultSet};
use order_processing_example::Settings;

/// One run at a time: each is five service processes and a Redis server.
static ONE_RUN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn chaos_run(duration: Duration, faults: FaultSet, seed: u64) -> ChaosReport {
    let _turn = ONE_RUN.lock().await;
    let args = ChaosArgs {
        duration,
        rate: 5,
        seed: Some(seed),
        fault_interval: Duration::from_millis(2500),
        faults,
        binary: Some(env!("CARGO_BIN_EXE_order-processing").into()),
        ..ChaosArgs::default()
    };
    let settings = Settings {
        database_url: Some(common::database_url()),
        amqp_url: Some(common::amqp_url()),
        order_timeout: Duration::from_secs(1),
        ..Settings::default()
    };
    let report = chaos::run(&args, &settings).await.unwrap_or_else(|e| {
        panic!("{e}: the chaos run needs PostgreSQL, RabbitMQ with rabbitmqctl, and redis-server")
    });
    eprint!("{}", report.render());
    if !report.is_clean() {
        for id in report.problem_orders().iter().take(3) {
            eprintln!(
                "--- the path of order {id} through the services:\n{}",
                report.trail(id)
            );
        }
        eprintln!(
            "--- warnings and errors of the services:\n{}",
            report.log_tails(15)
        );
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_faults_the_run_is_clean() {
    let report = chaos_run(Duration::from_secs(15), FaultSet::none(), 1).await;
    assert!(report.orders >= 50, "{}", report.line());
    assert_eq!(report.fault_count(), 0);
    assert!(
        report.confirmed > 0 && report.cancelled > 0,
        "{}",
        report.render()
    );
    assert!(report.is_clean(), "{}", report.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_faults_every_order_ends_right_and_the_stock_stays_whole() {
    let report = chaos_run(Duration::from_secs(50), FaultSet::all(), 42).await;
    assert!(report.orders >= 200, "{}", report.line());
    for kind in chaos::FaultKind::ALL {
        assert!(
            report.faults.get(kind.name()).copied().unwrap_or(0) >= 2,
            "too few {} faults: {}",
            kind.name(),
            report.render()
        );
    }
    assert!(report.is_clean(), "{}", report.render());
}
