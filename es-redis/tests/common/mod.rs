//! Shared by the integration tests: the shared Redis, private servers, fresh key prefixes.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use es_redis::{RedisConfig, RedisConnection};

/// The shared Redis (`REDIS_URL`, else the local port, else a container); fails the test,
/// saying how to provide one, when there is none.
pub fn redis_url() -> String {
    es_test_services::redis_url()
}

/// A key prefix no other test run uses.
pub fn unique_prefix() -> String {
    format!("test:{}:", uuid::Uuid::new_v4().simple())
}

/// A connection to the shared Redis with a fresh key prefix. Fails the test, saying how to
/// provide a Redis, when none answers.
pub async fn shared_redis() -> RedisConnection {
    let url = redis_url();
    let config = RedisConfig::new(&url).with_key_prefix(unique_prefix());
    match RedisConnection::connect(config).await {
        Ok(redis) => redis,
        Err(error) => panic!(
            "no Redis answers at {url} ({error}); start one (redis-server --port 6379) \
             or point REDIS_URL at one"
        ),
    }
}

/// A port nothing listens on right now.
///
/// One a cluster node can take too: its bus port (port + 10,000) exists and is free now.
pub fn free_port() -> u16 {
    let mut port = 0;
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        port = listener.local_addr().expect("local address").port();
        if port <= 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            break;
        }
    }
    port
}

/// A fresh, empty directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("es-redis-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("create a temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `redis-server` of this test's own, killed when dropped (also when the test panics).
#[derive(Debug)]
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
    extra_args: Vec<String>,
    dir: PathBuf,
}

impl PrivateRedis {
    /// Starts a server on a free port, in `dir`, with `extra_args`; waits until it answers.
    ///
    /// A port free when picked can be taken before the server binds it, and a cluster node
    /// also binds its port + 10,000 (its bus), which nothing checked: a server that exits at
    /// start is tried again on another port, a few times.
    pub fn start(dir: &TempDir, extra_args: &[&str]) -> Self {
        let mut server = Self::not_started(dir, extra_args);
        let mut tries = 0;
        loop {
            match server.try_start() {
                Ok(()) => return server,
                Err(exited) if tries < 5 => {
                    tries += 1;
                    eprintln!("{exited}; trying another port");
                    server.port = free_port();
                }
                Err(exited) => panic!("{exited}; gave up after {tries} other ports"),
            }
        }
    }

    /// A server on a free port that is not running yet ([`restart`](Self::restart) starts it).
    pub fn not_started(dir: &TempDir, extra_args: &[&str]) -> Self {
        PrivateRedis {
            port: free_port(),
            child: None,
            extra_args: extra_args.iter().map(|arg| (*arg).to_owned()).collect(),
            dir: dir.0.clone(),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and waits until it answers.
    pub fn restart(&mut self) {
        if let Err(exited) = self.try_start() {
            panic!("{exited}; was the port taken meanwhile?");
        }
    }

    /// Starts the server on its port and waits until it answers; `Err` when it exited at start
    /// (the port, or a cluster node's bus port, was taken).
    fn try_start(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "the server is already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start redis-server ({error}); is it installed and on PATH?")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "the private redis-server on port {} exited at start ({status})",
                    self.port
                ));
            }
            assert!(
                Instant::now() < deadline,
                "the private redis-server on port {} did not answer within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops the server the way an operator would (`SHUTDOWN NOSAVE`) and waits for it to exit.
    pub fn shutdown(&mut self) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown", "nosave"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `redis-cli -p PORT args...`, its output trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn answers(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && self.cli(&["ping"]) == "PONG"
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
