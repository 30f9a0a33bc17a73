//! The `order-processing` binary as a newcomer starts it: the greeting on stdout before the
//! first log line, `--log-format json`, and settings read from `.env` in the working directory.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::processes::*;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Longer than any start on a busy machine, short enough to fail rather than hang.
const PATIENCE: Duration = Duration::from_secs(60);

/// The five services' ports, all free.
fn ports() -> [u16; 5] {
    std::array::from_fn(|_| free_port())
}

fn port_flags(command: &mut Command, ports: [u16; 5]) {
    for (name, port) in ["order", "inventory", "payment", "notification", "analytics"]
        .iter()
        .zip(ports)
    {
        command.args([format!("--{name}-port"), port.to_string()]);
    }
}

/// `order-processing all` on the embedded backends, stdout piped, nothing inherited that would
/// change what it prints.
fn embedded_all() -> Command {
    let mut command = Command::new(BINARY);
    command
        .arg("all")
        .env("RUST_LOG", "info")
        .env_remove("LOG_FORMAT")
        .env_remove("DATABASE_URL")
        .env_remove("AMQP_URL")
        .env_remove("REDIS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("a line within the patience")
        .expect("stdout readable")
        .expect("stdout open: the process is still running")
}

/// The greeting: stdout's lines up to and including the `try:` line.
async fn read_greeting(child: &mut Child) -> (String, Lines<BufReader<ChildStdout>>) {
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let mut greeting = String::new();
    loop {
        let line = next_line(&mut lines).await;
        greeting.push_str(&line);
        greeting.push('\n');
        if line.starts_with("try:") {
            return (greeting, lines);
        }
        assert!(
            greeting.lines().count() < 20,
            "no end to the greeting:\n{greeting}"
        );
    }
}

async fn stop(mut child: Child) {
    sigterm(&child);
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("stops on SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn the_greeting_comes_first_and_names_every_service_before_the_log() {
    let ports = ports();
    let mut command = embedded_all();
    port_flags(&mut command, ports);
    let mut child = command.spawn().expect("spawn order-processing");
    let (greeting, mut lines) = read_greeting(&mut child).await;

    let first = greeting.lines().next().unwrap();
    assert!(
        first.starts_with("order-processing ") && first.ends_with(": five services on 127.0.0.1"),
        "the first line of stdout is the greeting's, not a log line: {first}"
    );
    for port in ports {
        let url = format!("http://127.0.0.1:{port}");
        assert!(
            greeting.contains(&format!("{url}/scalar")),
            "{url}\n{greeting}"
        );
    }
    assert!(
        greeting.contains("backends: embedded") && greeting.contains("gone when it exits"),
        "{greeting}"
    );
    assert!(
        greeting.contains(&format!(
            "curl -s -X POST http://127.0.0.1:{}/api/orders",
            ports[0]
        )),
        "{greeting}"
    );
    // The log follows.
    let log = next_line(&mut lines).await;
    assert!(
        log.contains("INFO") || log.contains("WARN"),
        "a log line: {log}"
    );
    stop(child).await;
}

#[tokio::test]
async fn with_log_format_json_every_log_line_after_the_greeting_is_json() {
    let ports = ports();
    let mut command = embedded_all();
    port_flags(&mut command, ports);
    command.args(["--log-format", "json"]);
    let mut child = command.spawn().expect("spawn order-processing");
    let (greeting, mut lines) = read_greeting(&mut child).await;
    assert!(greeting.starts_with("order-processing "), "{greeting}");
    // Read until all five listen (their own log lines), then the rest after SIGTERM.
    let mut listening = 0;
    let mut log = Vec::new();
    while listening < 5 {
        let line = next_line(&mut lines).await;
        if line.contains("\"listening\"") {
            listening += 1;
        }
        log.push(line);
    }
    sigterm(&child);
    while let Some(line) = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("stdout closes after SIGTERM")
        .expect("readable")
    {
        log.push(line);
    }
    assert!(child.wait().await.expect("wait").success());
    assert!(
        log.iter().any(|line| line.contains("\"stopped\"")),
        "{log:#?}"
    );
    for line in &log {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
        assert!(
            value["level"].is_string() && value["fields"].is_object(),
            "{line}"
        );
    }
}

/// A directory of its own holding `.env` with `text`; removed on drop.
struct EnvDir(PathBuf);

impl EnvDir {
    fn new(text: &str) -> EnvDir {
        let dir =
            std::env::temp_dir().join(format!("order-processing-env-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        std::fs::write(dir.join(".env"), text).expect("write .env");
        EnvDir(dir)
    }
}

impl Drop for EnvDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dotenv_ports(ports: [u16; 5]) -> String {
    ["ORDER", "INVENTORY", "PAYMENT", "NOTIFICATION", "ANALYTICS"]
        .iter()
        .zip(ports)
        .map(|(name, port)| format!("{name}_PORT={port}\n"))
        .collect()
}

fn in_dir(dir: &EnvDir) -> Command {
    let mut command = embedded_all();
    command.current_dir(&dir.0);
    for name in ["ORDER", "INVENTORY", "PAYMENT", "NOTIFICATION", "ANALYTICS"] {
        command.env_remove(format!("{name}_PORT"));
    }
    command
}

#[tokio::test]
async fn dot_env_in_the_working_directory_sets_the_ports_and_an_explicit_variable_wins() {
    let ports = ports();
    let dir = EnvDir::new(&format!("# the ports\n{}", dotenv_ports(ports)));

    let mut child = in_dir(&dir).spawn().expect("spawn order-processing");
    let (greeting, _lines) = read_greeting(&mut child).await;
    for port in ports {
        assert!(
            greeting.contains(&format!("http://127.0.0.1:{port}/scalar")),
            "port {port} from .env in\n{greeting}"
        );
    }
    stop(child).await;

    let explicit = free_port();
    let mut child = in_dir(&dir)
        .env("ORDER_PORT", explicit.to_string())
        .spawn()
        .expect("spawn order-processing");
    let (greeting, _lines) = read_greeting(&mut child).await;
    assert!(
        greeting.contains(&format!("http://127.0.0.1:{explicit}/scalar")),
        "ORDER_PORT={explicit} in the environment wins over .env:\n{greeting}"
    );
    assert!(!greeting.contains(&format!(":{}/", ports[0])), "{greeting}");
    assert!(greeting.contains(&format!("http://127.0.0.1:{}/scalar", ports[1])));
    stop(child).await;
}

#[tokio::test]
async fn a_malformed_dot_env_is_a_clear_error() {
    let dir = EnvDir::new("ORDER_PORT='5001\n");
    let output = tokio::time::timeout(PATIENCE, in_dir(&dir).output())
        .await
        .expect("exits at once")
        .expect("run order-processing");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot read .env"), "{stderr}");
    assert!(
        output.stdout.is_empty(),
        "no greeting: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}
