//! Processes of the `order-processing` binary for tests: free ports, command lines, waiting for
//! `/health`, SIGTERM and the log a process wrote.

use std::process::{ExitStatus, Stdio};

use order_processing_example::{ServiceKind, Settings};
use tokio::process::{Child, Command};

use super::{client, eventually};

pub const BINARY: &str = env!("CARGO_BIN_EXE_order-processing");

/// A port nothing listens on at the moment.
pub fn free_port() -> u16 {
    order_processing_example::chaos::free_port().expect("a free port")
}

/// Spawns one `kind` service on `port` with the backends and names of `settings`.
pub fn spawn_service(kind: ServiceKind, settings: &Settings, port: u16) -> Child {
    let mut command =
        order_processing_example::chaos::service_command(BINARY.as_ref(), kind, settings, port);
    if settings.queue_expires.is_none() {
        command.args(["--amqp-queue-expires", "120s"]);
    }
    // With `TEST_SERVICE_LOGS=<folder>` each process writes its log there (at `RUST_LOG`'s
    // level, `info` by default), to read after a failure that the test's output alone does not
    // explain.
    let log = match std::env::var_os("TEST_SERVICE_LOGS") {
        Some(folder) => {
            std::fs::create_dir_all(&folder).expect("the log folder");
            let path = std::path::Path::new(&folder).join(format!("{}-{port}.log", kind.name()));
            let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
            command.env("RUST_LOG", level);
            Stdio::from(std::fs::File::create(path).expect("a log file"))
        }
        None => {
            command.env("RUST_LOG", "warn");
            Stdio::null()
        }
    };
    command
        .stdout(log)
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the order-processing binary")
}

/// `order-processing all` with the order service on `order_port` and the others on free ports,
/// its log (stdout) piped for [`read_log`]. The caller adds the backends and `RUST_LOG`.
pub fn all_services(order_port: u16) -> Command {
    let mut command = Command::new(BINARY);
    command
        .arg("all")
        .args(["--order-port", &order_port.to_string()])
        .args(["--inventory-port", &free_port().to_string()])
        .args(["--payment-port", &free_port().to_string()])
        .args(["--notification-port", &free_port().to_string()])
        .args(["--analytics-port", &free_port().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Waits until `/health` on `port` answers `status`.
pub async fn wait_for_health(port: u16, status: u16, what: &str) {
    let url = format!("http://127.0.0.1:{port}/health");
    let client = client();
    eventually(what, || async {
        let response = client.get(&url).send().await.ok()?;
        (response.status() == status).then_some(())
    })
    .await;
}

/// Waits until the service on `port` is healthy (`/health` answers 200).
pub async fn wait_healthy(port: u16, what: &str) {
    wait_for_health(port, 200, what).await;
}

/// Sends SIGTERM to `child`; returns how `kill` exited.
pub fn sigterm(child: &Child) -> ExitStatus {
    let pid = child.id().expect("a pid").to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM")
}

/// What an exited `child` wrote to its piped stdout after its greeting: its log. The greeting
/// names the backends' URLs, so a test looking for one in the log must not find it there.
pub async fn read_log(child: &mut Child) -> String {
    use tokio::io::AsyncReadExt;
    let mut log = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut log).await;
    }
    if log.starts_with("order-processing ") {
        if let Some(try_line) = log.find("\ntry:  ") {
            let end = log[try_line + 1..]
                .find('\n')
                .map_or(log.len(), |i| try_line + 1 + i + 1);
            log.drain(..end);
        }
    }
    log
}
