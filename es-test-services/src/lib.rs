#![doc = include_str!("../README.md")]

use std::fmt;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::OnceLock;
use std::time::Duration;

use testcontainers::core::WaitFor;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerRequest, Image, ImageExt, ReuseDirective};
use testcontainers_modules::{postgres::Postgres, rabbitmq::RabbitMq, redis::Redis};

/// How long the standard local port gets to accept a TCP connection before it counts as
/// silent. A local server answers in microseconds; a firewalled port would otherwise hang.
const LOCAL_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a container gets to come up, image pull included (a first pull on a slow line
/// takes minutes; after that a start takes seconds).
const CONTAINER_STARTUP_TIMEOUT: Duration = Duration::from_secs(300);

/// The label that marks the containers started here, so that later runs find and reuse them.
pub const CONTAINER_LABEL: &str = "es-rs.test-service";

/// A backend the integration tests need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// PostgreSQL (event store, read models, inbox).
    Postgres,
    /// RabbitMQ (event bus).
    RabbitMq,
    /// Redis (cache, idempotency keys).
    Redis,
}

impl Service {
    /// Every service, in the order the crates are layered.
    pub const ALL: [Service; 3] = [Service::Postgres, Service::RabbitMq, Service::Redis];

    /// Its name for people.
    pub const fn name(self) -> &'static str {
        match self {
            Service::Postgres => "PostgreSQL",
            Service::RabbitMq => "RabbitMQ",
            Service::Redis => "Redis",
        }
    }

    /// The environment variable that names a server explicitly.
    pub const fn env_var(self) -> &'static str {
        match self {
            Service::Postgres => "DATABASE_URL",
            Service::RabbitMq => "AMQP_URL",
            Service::Redis => "REDIS_URL",
        }
    }

    /// The URL of a server on the standard local port with the stock credentials.
    pub const fn local_url(self) -> &'static str {
        match self {
            Service::Postgres => "postgres://postgres:postgres@127.0.0.1:5432/postgres",
            Service::RabbitMq => "amqp://guest:guest@127.0.0.1:5672/%2f",
            Service::Redis => "redis://127.0.0.1:6379",
        }
    }

    /// A short lowercase key, for container labels.
    const fn key(self) -> &'static str {
        match self {
            Service::Postgres => "postgres",
            Service::RabbitMq => "rabbitmq",
            Service::Redis => "redis",
        }
    }

    /// The port the service listens on inside its container (and by default on a host).
    pub const fn port(self) -> u16 {
        match self {
            Service::Postgres => 5432,
            Service::RabbitMq => 5672,
            Service::Redis => 6379,
        }
    }

    /// How to start one by hand, for the message when none was found.
    const fn how_to_start(self) -> &'static str {
        match self {
            Service::Postgres => {
                "`docker compose up -d postgres`, or a local server: \
                 `pg_ctlcluster <version> main start`"
            }
            Service::RabbitMq => {
                "`docker compose up -d rabbitmq`, or a local broker: `rabbitmq-server -detached`"
            }
            Service::Redis => {
                "`docker compose up -d redis`, or a local server: `redis-server --port 6379`"
            }
        }
    }

    /// The URL of this service, found once per process (see the crate docs for the order of
    /// attempts). Panics, saying how to provide one, when every attempt failed: a test that
    /// needs the service must fail rather than pass without it.
    pub fn url(self) -> String {
        static FOUND: [OnceLock<Result<String, String>>; 3] =
            [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        let slot = &FOUND[self as usize];
        match slot.get_or_init(|| {
            Lookup::new(self)
                .run()
                .map(|found| found.url)
                .map_err(|not_found| not_found.to_string())
        }) {
            Ok(url) => url.clone(),
            Err(message) => panic!("{message}"),
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The PostgreSQL URL for tests: [`Service::url`] of [`Service::Postgres`].
pub fn database_url() -> String {
    Service::Postgres.url()
}

/// The RabbitMQ URL for tests: [`Service::url`] of [`Service::RabbitMq`].
pub fn amqp_url() -> String {
    Service::RabbitMq.url()
}

/// The Redis URL for tests: [`Service::url`] of [`Service::Redis`].
pub fn redis_url() -> String {
    Service::Redis.url()
}

/// Where a service was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The environment variable named it.
    Env,
    /// Something answered on the standard local port.
    LocalPort,
    /// A container was started (or a running one from an earlier run reused).
    Container,
}

/// A service's URL and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The URL to connect to.
    pub url: String,
    /// Which attempt found it.
    pub source: Source,
}

/// No attempt found the service; its `Display` is the message a failing test shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotFound {
    /// The service looked for.
    pub service: Service,
    /// What each attempt found, in order.
    pub attempts: Vec<String>,
}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let service = self.service;
        writeln!(f, "no {service} for the tests:")?;
        for (n, attempt) in self.attempts.iter().enumerate() {
            writeln!(f, "  {}. {attempt}", n + 1)?;
        }
        write!(
            f,
            "Provide one: set {var} to a server's URL (e.g. {var}={local}), start one on the \
             standard port ({start}), or start a Docker engine so that a container can be used.",
            var = service.env_var(),
            local = service.local_url(),
            start = service.how_to_start(),
        )
    }
}

impl std::error::Error for NotFound {}

/// One search for a service, with every input explicit so that the order of attempts can be
/// tested: [`Lookup::new`] takes them from the process environment.
#[derive(Debug, Clone)]
pub struct Lookup {
    service: Service,
    env: Option<String>,
    local_url: String,
    containers: bool,
}

impl Lookup {
    /// The search the tests make: the service's environment variable (unset or empty counts
    /// as absent), its standard local URL, then a container.
    pub fn new(service: Service) -> Self {
        let env = std::env::var(service.env_var())
            .ok()
            .filter(|value| !value.trim().is_empty());
        Lookup {
            service,
            env,
            local_url: service.local_url().to_owned(),
            containers: true,
        }
    }

    /// Replaces the environment variable's value.
    pub fn with_env(mut self, value: Option<String>) -> Self {
        self.env = value;
        self
    }

    /// Replaces the local URL to probe (a test points it at a port nothing listens on).
    pub fn with_local_url(mut self, url: impl Into<String>) -> Self {
        self.local_url = url.into();
        self
    }

    /// Whether the last attempt, a container, is made at all.
    pub fn with_containers(mut self, enabled: bool) -> Self {
        self.containers = enabled;
        self
    }

    /// Makes the attempts in order and returns the first that found the service.
    ///
    /// The environment variable is taken as it is, without probing it: a URL someone named
    /// is never swapped for another server behind their back, and a wrong one fails the test
    /// where it connects, naming that URL.
    pub fn run(self) -> Result<Found, NotFound> {
        let service = self.service;
        let var = service.env_var();
        if let Some(url) = self.env {
            return Ok(Found {
                url,
                source: Source::Env,
            });
        }
        let mut attempts = vec![format!("{var} is not set")];
        match probe(&self.local_url) {
            Ok(()) => {
                return Ok(Found {
                    url: self.local_url,
                    source: Source::LocalPort,
                })
            }
            Err(why) => attempts.push(format!("nothing answers at {}: {why}", self.local_url)),
        }
        if !self.containers {
            attempts.push("containers are switched off".to_owned());
            return Err(NotFound { service, attempts });
        }
        match start_container(service) {
            Ok(url) => Ok(Found {
                url,
                source: Source::Container,
            }),
            Err(why) => {
                attempts.push(format!("no container could be started: {why}"));
                Err(NotFound { service, attempts })
            }
        }
    }
}

/// Whether something accepts TCP connections at the host and port of `url`.
fn probe(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    let host = parsed.host_str().ok_or("the URL names no host")?;
    let port = parsed.port().ok_or("the URL names no port")?;
    let addresses: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host} ({e})"))?
        .collect();
    let mut last = String::from("no address");
    for address in addresses {
        match TcpStream::connect_timeout(&address, LOCAL_PROBE_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// Starts (or finds running from an earlier run) the service's container and returns its URL.
///
/// The container is marked for reuse: it outlives the test process, and every later run on
/// the machine connects to the same one instead of starting another (a test process cannot
/// stop a container when it exits, as nothing runs after `main`). Tests isolate themselves by
/// names, so sharing it is safe. `docker rm -f $(docker ps -q --filter label=es-rs.test-service)`
/// removes them.
fn start_container(service: Service) -> Result<String, String> {
    // testcontainers is async; the tests call from inside their own runtimes (where blocking
    // on another is refused) or outside any. A thread of its own with a runtime of its own
    // works from both.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("no runtime for the Docker client: {e}"))?;
                runtime.block_on(async {
                    match service {
                        Service::Postgres => {
                            // xid8 needs PostgreSQL 13+; the suites open many pools at once.
                            let request = Postgres::default().with_tag("16-alpine").with_cmd([
                                "-c",
                                "fsync=off",
                                "-c",
                                "max_connections=300",
                            ]);
                            let (host, port) = run(service, request, "16-alpine").await?;
                            Ok(format!(
                                "postgres://postgres:postgres@{host}:{port}/postgres"
                            ))
                        }
                        Service::RabbitMq => {
                            // The module waits for a plugin count of its own default tag.
                            let request = RabbitMq::default()
                                .with_tag("3.13-management")
                                .with_ready_conditions(vec![WaitFor::message_on_stdout(
                                    "Server startup complete",
                                )]);
                            let (host, port) = run(service, request, "3.13-management").await?;
                            Ok(format!("amqp://guest:guest@{host}:{port}/%2f"))
                        }
                        Service::Redis => {
                            let request = Redis::default().with_tag("7-alpine");
                            let (host, port) = run(service, request, "7-alpine").await?;
                            Ok(format!("redis://{host}:{port}"))
                        }
                    }
                })
            })
            .join()
            .unwrap_or_else(|_| Err("the container start panicked".to_owned()))
    })
}

/// Runs `request` as the reusable container of `service` and returns the host and port its
/// service port is published on.
async fn run<I: Image>(
    service: Service,
    request: ContainerRequest<I>,
    tag: &str,
) -> Result<(String, u16), String> {
    let container = request
        .with_label(CONTAINER_LABEL, format!("{}-{tag}", service.key()))
        .with_reuse(ReuseDirective::Always)
        .with_startup_timeout(CONTAINER_STARTUP_TIMEOUT)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let host = container.get_host().await.map_err(|e| e.to_string())?;
    let port = container
        .get_host_port_ipv4(service.port())
        .await
        .map_err(|e| e.to_string())?;
    // Dropping a container marked for reuse leaves it running.
    drop(container);
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A local URL on a port that was free a moment ago.
    fn silent_url() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        drop(listener);
        format!("redis://127.0.0.1:{port}")
    }

    #[test]
    fn the_env_var_wins_without_probing_anything() {
        // A local URL that would fail to parse shows that it was never probed.
        let found = Lookup::new(Service::Postgres)
            .with_env(Some("postgres://elsewhere:5432/db".into()))
            .with_local_url("not a url")
            .with_containers(false)
            .run()
            .expect("found");
        assert_eq!(found.source, Source::Env);
        assert_eq!(found.url, "postgres://elsewhere:5432/db");
    }

    #[test]
    fn the_local_port_comes_next_when_something_answers() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "redis://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let found = Lookup::new(Service::Redis)
            .with_env(None)
            .with_local_url(url.clone())
            .with_containers(false)
            .run()
            .expect("found");
        assert_eq!(
            found,
            Found {
                url,
                source: Source::LocalPort
            }
        );
    }

    #[test]
    fn with_nothing_anywhere_the_message_lists_the_attempts_and_the_ways_out() {
        let local = silent_url();
        let error = Lookup::new(Service::Redis)
            .with_env(None)
            .with_local_url(local.clone())
            .with_containers(false)
            .run()
            .expect_err("nothing to find");
        assert_eq!(error.attempts.len(), 3, "{error}");
        let message = error.to_string();
        assert!(message.starts_with("no Redis for the tests:"), "{message}");
        assert!(message.contains("REDIS_URL is not set"), "{message}");
        assert!(
            message.contains(&format!("nothing answers at {local}")),
            "{message}"
        );
        assert!(
            message.contains("set REDIS_URL to a server's URL"),
            "{message}"
        );
        assert!(message.contains("redis-server --port 6379"), "{message}");
        assert!(message.contains("Docker engine"), "{message}");
    }

    #[test]
    fn every_service_names_its_variable_and_standard_port() {
        for service in Service::ALL {
            let url = url::Url::parse(service.local_url()).expect("a URL");
            assert_eq!(url.port(), Some(service.port()), "{service}");
            assert!(!service.env_var().is_empty());
        }
    }
}
