//! What every service's HTTP side shares: problem+json errors, extractors that answer them,
//! the fallback, the middleware stack (request ids, tracing, body limit) and health, and the
//! server that guards itself against slow and many clients ([`serve`]: header-read timeout,
//! request timeout, connection cap).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

/// The largest request body a service reads.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// How long one request may take before it is answered 408 (by default; see [`ServeLimits`]).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client may take to send a request's head (by default; see [`ServeLimits`]).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How many connections a service holds open at once (by default; see [`ServeLimits`]).
pub const MAX_CONNECTIONS: usize = 1024;

/// Field name → messages, as in `"errors": {"items[0].quantity": ["..."]}`.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// An error answered as `application/problem+json` (RFC 9457).
///
/// A 5xx never shows its cause: it is logged and the body says only what failed.
#[derive(Debug)]
pub struct AppError {
    status: StatusCode,
    detail: String,
    errors: Option<FieldErrors>,
}

impl AppError {
    /// An error with this status and detail.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        AppError {
            status,
            detail: detail.into(),
            errors: None,
        }
    }

    /// 400 with a detail.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 400 listing what is wrong with each field.
    pub fn validation(errors: FieldErrors) -> Self {
        AppError {
            status: StatusCode::BAD_REQUEST,
            detail: "the request has invalid fields".into(),
            errors: Some(errors),
        }
    }

    /// 404 with a detail.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    /// 500 or 503 for a failure below the domain; the cause goes to the log only.
    pub fn internal(error: &(dyn std::error::Error + 'static)) -> Self {
        let unavailable = error
            .downcast_ref::<es_core::Error>()
            .is_some_and(|e| matches!(e, es_core::Error::Unavailable { .. }));
        tracing::error!(%error, "request failed");
        if unavailable {
            Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "a backend is unavailable; try again later",
            )
        } else {
            Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the request could not be carried out",
            )
        }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<es_core::Error> for AppError {
    fn from(error: es_core::Error) -> Self {
        match &error {
            es_core::Error::InvalidInput(detail) => AppError::bad_request(detail.clone()),
            _ => AppError::internal(&error),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(errors) = self.errors {
            body["errors"] = json!(errors);
        }
        let mut response = (self.status, Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

/// A JSON body whose rejections answer problem+json: 400 for malformed JSON or a wrong content
/// type, 413 for a body over [`MAX_BODY_BYTES`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> AppError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            AppError::bad_request("the body must be JSON with `Content-Type: application/json`")
        }
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        ),
        other => AppError::bad_request(other.body_text()),
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

/// Path parameters whose rejection (a bad UUID, say) answers 400 problem+json.
#[derive(Debug, Clone, Copy)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(path_rejection(rejection)),
        }
    }
}

fn path_rejection(rejection: PathRejection) -> AppError {
    AppError::bad_request(rejection.body_text())
}

/// Query parameters whose rejection answers 400 problem+json.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> AppError {
    AppError::bad_request(rejection.body_text())
}

async fn not_found(method: Method, uri: Uri) -> AppError {
    AppError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> AppError {
    AppError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Gives an error answered without a body by a layer (the timeout's 408, say) the
/// problem+json body every error has.
async fn problem_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    let bare = (status.is_client_error() || status.is_server_error())
        && response.headers().get(header::CONTENT_TYPE).is_none();
    if bare {
        let detail = status
            .canonical_reason()
            .unwrap_or("the request failed")
            .to_lowercase();
        return AppError::new(status, detail).into_response();
    }
    response
}

/// A check of one dependency: `Ok` when it answers, else what failed.
pub type HealthProbe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// The dependencies whose health `/health` reports, by name.
#[derive(Clone, Default)]
pub struct Health {
    probes: Vec<(String, HealthProbe)>,
    /// Checks whose failure degrades the service (still 200) instead of making it unhealthy.
    soft: Vec<(String, HealthProbe)>,
    /// Where each dependency lives (URLs with passwords hidden), for the logs.
    targets: BTreeMap<String, String>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.probes.iter().map(|(name, _)| name))
            .finish()
    }
}

impl Health {
    /// Adds a dependency.
    pub fn with(mut self, name: impl Into<String>, probe: HealthProbe) -> Self {
        self.probes.push((name.into(), probe));
        self
    }

    /// Adds a check whose failure answers `"Degraded"` (still 200: the service works, but
    /// something lags, such as a read model), not `"Unhealthy"`.
    pub fn with_soft(mut self, name: impl Into<String>, probe: HealthProbe) -> Self {
        self.soft.push((name.into(), probe));
        self
    }

    /// Names where dependency `name` lives (a URL, password hidden), for the logs.
    pub fn with_target(mut self, name: impl Into<String>, target: impl Into<String>) -> Self {
        self.targets.insert(name.into(), target.into());
        self
    }

    /// Checks every `interval` until `stop` completes, and logs each dependency that goes
    /// down (which one, where, what failed) or comes back.
    pub async fn watch(self, interval: Duration, stop: impl Future<Output = ()> + Send) {
        tokio::pin!(stop);
        let mut down: BTreeMap<String, String> = BTreeMap::new();
        loop {
            let (_, entries) = self.check().await;
            for (name, entry) in entries.as_object().into_iter().flatten() {
                let target = self.targets.get(name).map_or("", String::as_str);
                // A degraded entry (a lagging read model) is not a backend out of reach.
                let problem = (entry["status"] == "Unhealthy")
                    .then(|| entry["description"].as_str())
                    .flatten();
                match (problem, down.contains_key(name)) {
                    (Some(problem), false) => {
                        tracing::error!(dependency = %name, target, error = problem, "a backend cannot be reached; retrying");
                        down.insert(name.clone(), problem.to_owned());
                    }
                    (None, true) => {
                        tracing::info!(dependency = %name, target, "a backend is reachable again");
                        down.remove(name);
                    }
                    _ => {}
                }
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// Runs every probe (each bounded by a short timeout): healthy and the entries.
    pub async fn check(&self) -> (bool, Value) {
        let mut healthy = true;
        let mut entries = serde_json::Map::new();
        for (name, probe) in &self.probes {
            let outcome = match tokio::time::timeout(Duration::from_secs(3), probe()).await {
                Ok(outcome) => outcome,
                Err(_) => Err("no answer within 3s".to_owned()),
            };
            let entry = match outcome {
                Ok(()) => json!({"status": "Healthy"}),
                Err(description) => {
                    healthy = false;
                    json!({"status": "Unhealthy", "description": description})
                }
            };
            entries.insert(name.clone(), entry);
        }
        for (name, probe) in &self.soft {
            let outcome = match tokio::time::timeout(Duration::from_secs(3), probe()).await {
                Ok(outcome) => outcome,
                Err(_) => Err("no answer within 3s".to_owned()),
            };
            let entry = match outcome {
                Ok(()) => json!({"status": "Healthy"}),
                Err(description) => json!({"status": "Degraded", "description": description}),
            };
            entries.insert(name.clone(), entry);
        }
        (healthy, Value::Object(entries))
    }
}

async fn health(axum::extract::State(health): axum::extract::State<Health>) -> Response {
    let (healthy, entries) = health.check().await;
    let degraded = entries
        .as_object()
        .is_some_and(|entries| entries.values().any(|e| e["status"] == "Degraded"));
    let status = match (healthy, degraded) {
        (false, _) => "Unhealthy",
        (true, true) => "Degraded",
        (true, false) => "Healthy",
    };
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({"status": status, "entries": entries}))).into_response()
}

/// Wraps a service's API routes with `/health`, `/metrics`, `/openapi.json`, `/scalar`, the problem+json
/// fallbacks and the middleware stack.
pub fn finish_router(
    api: Router,
    openapi: utoipa::openapi::OpenApi,
    health_checks: Health,
) -> Router {
    use utoipa_scalar::{Scalar, Servable};
    let spec = Arc::new(openapi.clone());
    let openapi_route = Router::new().route(
        "/openapi.json",
        axum::routing::get(move || {
            let spec = spec.clone();
            async move { Json(spec.as_ref().clone()) }
        }),
    );
    let health_route = Router::new()
        .route("/health", axum::routing::get(health))
        .with_state(health_checks);
    api.merge(openapi_route)
        .merge(health_route)
        .merge(crate::telemetry::route())
        .merge(Scalar::with_url("/scalar", openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
                let request_id = request
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                tracing::info_span!("http", method = %request.method(), uri = %request.uri(), request_id)
            }),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// How deep into a request body [`ExactJson`] keeps the text of numbers. Each level is parsed
/// once more, so the cost of a body grows with its depth; the bodies the services take are
/// three levels deep.
const EXACT_NUMBER_DEPTH: usize = 4;

/// A JSON request body, plus the text of each number in it as the client wrote it.
///
/// Without serde_json's `arbitrary_precision`, a `Value` holds a decimal as `f64`, which
/// cannot tell `0.1` from `0.10000000000000000001`; the [`Validator`] reads money and whole
/// numbers from the text instead. Numbers are keyed by the path the validation errors name
/// (`items[0].unitPrice`).
#[derive(Debug, Clone, Default)]
pub struct ExactJson {
    /// The body.
    pub value: Value,
    numbers: HashMap<String, String>,
}

impl ExactJson {
    /// The text of the number at `path` (`items[0].unitPrice`), as written.
    pub fn number_text(&self, path: &str) -> Option<&str> {
        self.numbers.get(path).map(String::as_str)
    }

    fn collect(
        raw: &serde_json::value::RawValue,
        path: &mut String,
        depth: usize,
        numbers: &mut HashMap<String, String>,
    ) -> serde_json::Result<()> {
        use serde_json::value::RawValue;
        let text = raw.get();
        let prefix = path.len();
        match text.as_bytes().first() {
            Some(b'{') if depth < EXACT_NUMBER_DEPTH => {
                // Later duplicates of a key replace earlier ones, as they do in `Value`.
                let fields: HashMap<String, &RawValue> = serde_json::from_str(text)?;
                for (key, value) in fields {
                    // A key such as `items[0].unitPrice` would pose as the path of another
                    // number; no field the services read is named so, so it is passed over.
                    if key.contains(['.', '[', ']']) {
                        continue;
                    }
                    if prefix > 0 {
                        path.push('.');
                    }
                    path.push_str(&key);
                    Self::collect(value, path, depth + 1, numbers)?;
                    path.truncate(prefix);
                }
            }
            Some(b'[') if depth < EXACT_NUMBER_DEPTH => {
                let items: Vec<&RawValue> = serde_json::from_str(text)?;
                for (i, item) in items.into_iter().enumerate() {
                    use std::fmt::Write as _;
                    let _ = write!(path, "[{i}]");
                    Self::collect(item, path, depth + 1, numbers)?;
                    path.truncate(prefix);
                }
            }
            Some(b'-' | b'0'..=b'9') => {
                numbers.insert(path.clone(), text.to_owned());
            }
            _ => {}
        }
        Ok(())
    }
}

impl<'de> serde::Deserialize<'de> for ExactJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
        let value = serde_json::from_str(raw.get()).map_err(D::Error::custom)?;
        let mut numbers = HashMap::new();
        Self::collect(&raw, &mut String::new(), 0, &mut numbers).map_err(D::Error::custom)?;
        Ok(ExactJson { value, numbers })
    }
}

/// A body built in code: each number's text is what the `Value` holds (exact for integers and
/// for decimals of up to 15 digits).
impl From<Value> for ExactJson {
    fn from(value: Value) -> Self {
        let text = value.to_string();
        serde_json::from_str(&text).unwrap_or(ExactJson {
            value,
            numbers: HashMap::new(),
        })
    }
}

/// A validation helper collecting field errors.
#[derive(Debug, Default)]
pub struct Validator {
    errors: FieldErrors,
    /// The numbers' text by field, when the body is an [`ExactJson`].
    numbers: HashMap<String, String>,
}

impl Validator {
    /// A validator that reads numbers from `body`'s text, for fields named by their path in
    /// it (`items[0].unitPrice`).
    pub fn exact(body: &ExactJson) -> Self {
        Validator {
            errors: FieldErrors::default(),
            numbers: body.numbers.clone(),
        }
    }

    /// The exact text of the number at `field`: as the client wrote it where known, else as
    /// the `Value` holds it.
    fn number_text(&self, field: &str, number: &serde_json::Number) -> String {
        self.numbers
            .get(field)
            .cloned()
            .unwrap_or_else(|| number.to_string())
    }

    /// Records a problem with `field`.
    pub fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors
            .entry(field.into())
            .or_default()
            .push(message.into());
    }

    /// `Ok` when nothing was recorded, else the 400 listing the problems.
    pub fn finish(self) -> Result<(), AppError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(AppError::validation(self.errors))
        }
    }

    /// A required UUID string at `field`.
    pub fn uuid(&mut self, body: &Value, key: &str, field: &str) -> Option<uuid::Uuid> {
        match body.get(key) {
            None | Some(Value::Null) => self.error(field, "is required"),
            Some(Value::String(text)) => match uuid::Uuid::parse_str(text) {
                Ok(id) => return Some(id),
                Err(_) => self.error(field, "must be a UUID"),
            },
            Some(_) => self.error(field, "must be a UUID string"),
        }
        None
    }

    /// A required string of `min..=max` characters (not blank) at `field`.
    pub fn text(&mut self, body: &Value, key: &str, field: &str, max: usize) -> Option<String> {
        match body.get(key) {
            None | Some(Value::Null) => self.error(field, "is required"),
            Some(Value::String(text)) => {
                let length = text.chars().count();
                if text.trim().is_empty() {
                    self.error(field, format!("must be 1 to {max} characters, not blank"));
                } else if length > max {
                    self.error(field, format!("must be 1 to {max} characters"));
                } else {
                    return Some(text.clone());
                }
            }
            Some(_) => self.error(field, "must be a string"),
        }
        None
    }

    /// A required whole number in `min..=max` at `field`. `3.0` and `3e0` count as 3, as
    /// they do for JSON Schema's `integer` (which the OpenAPI documents state).
    pub fn integer(
        &mut self,
        body: &Value,
        key: &str,
        field: &str,
        min: u64,
        max: u64,
    ) -> Option<u64> {
        match body.get(key) {
            None | Some(Value::Null) => self.error(field, "is required"),
            Some(Value::Number(number)) => match whole_number(&self.number_text(field, number)) {
                Some(n) if (min..=max).contains(&n) => return Some(n),
                _ => self.error(field, format!("must be a whole number from {min} to {max}")),
            },
            Some(_) => self.error(field, format!("must be a whole number from {min} to {max}")),
        }
        None
    }

    /// A required amount of money in `min..=max` with at most two decimals at `field`.
    pub fn money(
        &mut self,
        body: &Value,
        key: &str,
        field: &str,
        min: rust_decimal::Decimal,
        max: rust_decimal::Decimal,
    ) -> Option<rust_decimal::Decimal> {
        match body.get(key) {
            None | Some(Value::Null) => self.error(field, "is required"),
            Some(Value::Number(number)) => {
                match crate::money::from_number_text(&self.number_text(field, number)) {
                    Some(amount) if amount < min || amount > max => {
                        self.error(field, format!("must be from {min} to {max}"))
                    }
                    Some(amount) if amount.normalize().scale() > 2 => {
                        self.error(field, "must have at most two decimals")
                    }
                    Some(amount) => return Some(amount),
                    None => self.error(field, format!("must be a number from {min} to {max}")),
                }
            }
            Some(_) => self.error(field, format!("must be a number from {min} to {max}")),
        }
        None
    }
}

/// The text of a JSON number without a fractional part as a `u64`, however it is written
/// (`3`, `3.0`, `3e0`); `None` for a fraction, a negative number or one too large.
fn whole_number(text: &str) -> Option<u64> {
    use rust_decimal::prelude::ToPrimitive;
    text.parse::<u64>().ok().or_else(|| {
        let value = crate::money::from_number_text(text)?;
        if value.fract().is_zero() {
            value.to_u64()
        } else {
            None
        }
    })
}

/// How a service's server guards itself: against clients that send slowly, and against more
/// connections than it should hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// A connection that has not sent a whole request head this long after it opened (or after
    /// its previous response) is closed. An idle keep-alive connection goes the same way.
    pub header_read_timeout: Duration,
    /// A request not answered this long after its head arrived (a stalled body, say) is
    /// answered 408 problem+json.
    pub request_timeout: Duration,
    /// At most this many connections are open at once; further clients wait in the listen
    /// backlog until one closes.
    pub max_connections: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes; then stops
/// accepting, lets every connection finish the request in hand, and returns once all closed.
///
/// `axum::serve` gives hyper no timer, so a client that sends half a request line holds its
/// connection forever; here hyper gets a timer and a header-read timeout, and a semaphore
/// holds one permit per open connection.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ServeLimits,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    use tokio::sync::Semaphore;

    let router = router
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(axum::middleware::map_response(problem_for_bare_errors))
        // Outside the timeout and the problem mapping, so that it sees the status the client
        // gets: inside, a timeout drops it unfinished and the 408 is never counted.
        .layer(axum::middleware::from_fn(crate::telemetry::track));
    let max = limits
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let permits = Arc::new(Semaphore::new(max));
    let closing = tokio_util::sync::CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Take a permit before accepting: past the cap, clients wait in the backlog.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    if !is_connection_error(&error) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let closed = closing.clone().cancelled_owned();
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _permit = permit;
            let mut connection = std::pin::pin!(connection);
            let outcome = tokio::select! {
                outcome = connection.as_mut() => outcome,
                () = closed => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = outcome {
                tracing::debug!(%error, timeout = error.is_timeout(), "connection closed");
            }
        });
    }
    drop(listener);
    closing.cancel();
    // Every connection holds a permit until it closed: all of them back means all closed.
    let _ = permits.acquire_many(max as u32).await;
    Ok(())
}

/// Errors of one connection that says nothing about the listener.
fn is_connection_error(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
