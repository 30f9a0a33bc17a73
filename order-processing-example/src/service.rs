//! A running service: its router and its background work (consumers, relays, projections,
//! deadline loops), started together and stopped in order.

use std::future::Future;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::backends::{Backends, StartError};
use crate::background::Background;
use crate::config::Settings;
use crate::service_kind::ServiceKind;

/// How many aggregates' folded states a service keeps for its commands
/// ([`Repository::with_trusted_cache`](es_core::Repository::with_trusted_cache)): an order's
/// commands come within seconds of each other, so this covers every order in flight at
/// hundreds a second. Each service owns its aggregates (only it writes their streams), so a
/// command decides on the cached state without reading the stream first; another writer (a
/// second instance of the service) shows as a conflict that reads and decides again.
pub(crate) const AGGREGATE_CACHE: usize = 4096;

/// One started service: serve its router, then stop it.
#[derive(Debug)]
pub struct Service {
    kind: ServiceKind,
    router: Router,
    background: Background,
}

impl Service {
    /// Starts `kind` on `backends`: consumers, relays, read models, and its router.
    pub async fn start(
        kind: ServiceKind,
        backends: &Backends,
        settings: &Settings,
    ) -> Result<Service, StartError> {
        let mut background = Background::default();
        let router = match kind {
            ServiceKind::Order => crate::order::start(backends, settings, &mut background).await,
            ServiceKind::Inventory => {
                crate::inventory::start(backends, settings, &mut background).await
            }
            ServiceKind::Payment => {
                crate::payment::start(backends, settings, &mut background).await
            }
            ServiceKind::Notification => {
                crate::notification::start(backends, settings, &mut background).await
            }
            ServiceKind::Analytics => {
                crate::analytics::start(backends, settings, &mut background).await
            }
        }
        .map_err(|source| StartError::Service {
            service: kind.name(),
            source,
        })?;
        Ok(Service {
            kind,
            router,
            background,
        })
    }

    /// Which service this is.
    pub fn kind(&self) -> ServiceKind {
        self.kind
    }

    /// Its HTTP routes (for `tower::ServiceExt::oneshot` in tests).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serves on `listener` until `shutdown` completes: stops accepting, finishes requests in
    /// flight, then stops the background work.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let address = listener.local_addr()?;
        tracing::info!(service = self.kind.name(), %address, "listening");
        let limits = crate::http::ServeLimits::default();
        let served = crate::http::serve(listener, self.router, shutdown, limits).await;
        self.background.stop().await;
        tracing::info!(service = self.kind.name(), "stopped");
        served
    }

    /// Stops the background work without serving (for a service that never ran).
    pub async fn stop(self) {
        self.background.stop().await;
    }
}

/// Binds every service's port on `settings.host`.
async fn bind(kinds: &[ServiceKind], settings: &Settings) -> Result<Vec<TcpListener>, StartError> {
    let mut listeners = Vec::new();
    for &kind in kinds {
        let address = format!("{}:{}", settings.host, kind.port(settings));
        let listener = TcpListener::bind(&address)
            .await
            .map_err(|source| StartError::Bind { address, source })?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Starts `kinds` on `backends`, each on its port of `settings`, and serves until `shutdown`.
pub async fn run_services(
    kinds: &[ServiceKind],
    backends: &Backends,
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let listeners = bind(kinds, settings).await?;
    serve(kinds, listeners, backends, settings, shutdown).await
}

async fn serve(
    kinds: &[ServiceKind],
    listeners: Vec<TcpListener>,
    backends: &Backends,
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let mut services = Vec::new();
    for &kind in kinds {
        services.push(Service::start(kind, backends, settings).await?);
    }
    let stop = CancellationToken::new();
    let mut running = Vec::new();
    // One pruning loop per process; running it in several processes at once is harmless.
    let (housekeeping, retention, interval, wait) = (
        backends.housekeeping.clone(),
        settings.retention,
        settings.housekeeping_interval,
        stop.clone().cancelled_owned(),
    );
    running.push(tokio::spawn(async move {
        es_core::housekeeping::prune_every(&*housekeeping, retention, interval, wait).await
    }));
    for (service, listener) in services.into_iter().zip(listeners) {
        let name = service.kind().name();
        let wait = stop.clone().cancelled_owned();
        running.push(tokio::spawn(async move {
            if let Err(error) = service.run(listener, wait).await {
                tracing::error!(service = name, %error, "server failed");
            }
        }));
    }
    shutdown.await;
    stop.cancel();
    for task in running {
        let _ = task.await;
    }
    Ok(())
}

/// What a service answers while its backends are still out of reach: `/health` 503 naming
/// what it waits for, everything else 503 problem+json.
fn starting_router(waiting_for: String) -> Router {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let health = move || {
        let waiting_for = waiting_for.clone();
        async move {
            let body = serde_json::json!({
                "status": "Unhealthy",
                "entries": {"eventStore": {"status": "Unhealthy", "description": waiting_for}},
            });
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
        }
    };
    Router::new()
        .route("/health", axum::routing::get(health))
        .fallback(|| async {
            crate::http::AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is starting: its backends cannot be reached yet",
            )
        })
}

/// A second handle on a listening socket, so a stand-in server can answer on it until the
/// real one takes over.
fn share(listener: TcpListener) -> std::io::Result<(TcpListener, TcpListener)> {
    let socket = listener.into_std()?;
    let clone = socket.try_clone()?;
    Ok((
        TcpListener::from_std(socket)?,
        TcpListener::from_std(clone)?,
    ))
}

/// Runs what the command line asks for until `shutdown` completes.
///
/// The ports are bound first; while PostgreSQL cannot be reached each service answers 503
/// (its `/health` says why) and the connection is retried with backoff, never a crash.
pub async fn run(
    cli: crate::config::Cli,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    use crate::config::Command;
    let kinds: Vec<ServiceKind> = match cli.command.unwrap_or(Command::All) {
        Command::All => ServiceKind::ALL.to_vec(),
        Command::Order => vec![ServiceKind::Order],
        Command::Inventory => vec![ServiceKind::Inventory],
        Command::Payment => vec![ServiceKind::Payment],
        Command::Notification => vec![ServiceKind::Notification],
        Command::Analytics => vec![ServiceKind::Analytics],
        Command::Loadtest(args) => {
            crate::loadtest::main(&args, &cli.settings).await?;
            return Ok(());
        }
        Command::Dlq(command) => {
            print!("{}", crate::dlq::run(&command, &cli.settings).await?);
            return Ok(());
        }
        Command::Projections(command) => {
            print!(
                "{}",
                crate::projections::run(&command, &cli.settings).await?
            );
            return Ok(());
        }
        Command::Chaos(args) => {
            let report = crate::chaos::run(&args, &cli.settings).await?;
            eprint!("{}", report.render());
            println!("{}", report.line());
            if !report.is_clean() {
                return Err(crate::chaos::ChaosError::Broken(report.line()).into());
            }
            return Ok(());
        }
    };
    if kinds.len() == 1 && cli.settings.amqp_url.is_none() {
        return Err(StartError::NeedsBroker(kinds[0].name()));
    }
    let settings = cli.settings;
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    let mut listeners = Vec::new();
    let ready = CancellationToken::new();
    let mut stand_ins = Vec::new();
    let waiting_for = match &settings.database_url {
        Some(url) => format!(
            "connecting to PostgreSQL at {}",
            crate::backends::redact(url)
        ),
        None => "starting".to_owned(),
    };
    let bound = bind(&kinds, &settings).await?;
    // Before the log starts: where each service answers, which backends hold the data.
    let addresses: Vec<_> = kinds
        .iter()
        .zip(&bound)
        .filter_map(|(&kind, listener)| Some((kind, listener.local_addr().ok()?)))
        .collect();
    crate::greeting::print(&addresses, &settings);
    for listener in bound {
        let address = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let (listener, stand_in) =
            share(listener).map_err(|source| StartError::Bind { address, source })?;
        listeners.push(listener);
        let until = ready.clone().cancelled_owned();
        let router = starting_router(waiting_for.clone());
        stand_ins.push(tokio::spawn(async move {
            let _ = axum::serve(stand_in, router)
                .with_graceful_shutdown(until)
                .await;
        }));
    }
    let connected = Backends::from_settings_until(&settings, stop.clone().cancelled_owned()).await;
    ready.cancel();
    for stand_in in stand_ins {
        let _ = stand_in.await;
    }
    let backends = match connected {
        Ok(backends) => backends,
        Err(_) if stop.is_cancelled() => return Ok(()),
        Err(error) => return Err(error),
    };
    // Name in the log every backend that goes away later, and when it is back.
    tokio::spawn(backends.health.clone().watch(
        std::time::Duration::from_secs(5),
        stop.clone().cancelled_owned(),
    ));
    serve(
        &kinds,
        listeners,
        &backends,
        &settings,
        stop.clone().cancelled_owned(),
    )
    .await
}
