//! The analytics service (5005): daily figures and the recent events, each event counted once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, NaiveDate, Utc};
use es_core::bus::{HandlerError, MessageHandler};
use es_core::projection::TypedDecoder;
use es_core::{
    Aggregate, BoxError, CommandContext, DomainEvent, Projection, RecordedEvent, Repository,
    StreamFilter,
};
use es_postgres::{PgEventStore, PgProjection};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::backends::Backends;
use crate::background::Background;
use crate::config::Settings;
use crate::http::{finish_router, ApiQuery, AppError};
use crate::listing::Listings;
use crate::service_kind::ServiceKind;

/// One wire event, as analytics records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CountedEvent {
    /// The wire event's id.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
    /// Its order.
    pub order_id: Uuid,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// The order's total, on `OrderConfirmed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>)]
    pub amount: Option<Decimal>,
}

/// What analytics records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AnalyticsEvent {
    /// A wire event was counted.
    EventCounted(CountedEvent),
}

impl DomainEvent for AnalyticsEvent {}

/// The events counted for one order: each at most once.
#[derive(Debug, Clone, Default)]
pub struct OrderActivity {
    counted: BTreeSet<Uuid>,
}

impl Aggregate for OrderActivity {
    const TYPE: &'static str = "analytics";
    type Command = CountedEvent;
    type Event = AnalyticsEvent;
    type Error = std::convert::Infallible;

    fn handle(&self, event: CountedEvent) -> Result<Vec<AnalyticsEvent>, std::convert::Infallible> {
        if self.counted.contains(&event.event_id) {
            return Ok(Vec::new());
        }
        Ok(vec![AnalyticsEvent::EventCounted(event)])
    }

    fn apply(&mut self, event: &AnalyticsEvent) {
        let AnalyticsEvent::EventCounted(event) = event;
        self.counted.insert(event.event_id);
    }
}

/// Counts every wire event once: in the order's activity stream, with the inbox entry.
#[derive(Debug, Clone)]
struct AnalyticsHandler {
    activity: Repository<OrderActivity>,
    consumer: String,
}

impl AnalyticsHandler {
    /// The count of one message, on its order's activity stream, with its inbox entry; `None`
    /// for an event that is not on the wire.
    #[allow(clippy::type_complexity)]
    fn command(
        &self,
        message: &RecordedEvent,
    ) -> Result<Option<(String, CountedEvent, CommandContext)>, HandlerError> {
        if crate::events::routing_key_of(&message.event_type).is_none() {
            return Ok(None);
        }
        let payload = message.payload_json().map_err(HandlerError::reject)?;
        let order_id = payload
            .get("orderId")
            .and_then(|v| v.as_str())
            .and_then(|v| Uuid::parse_str(v).ok())
            .ok_or_else(|| HandlerError::reject("the event names no orderId"))?;
        let amount = match (message.event_type.as_str(), payload.get("totalAmount")) {
            (crate::events::ORDER_CONFIRMED, Some(serde_json::Value::Number(n))) => {
                crate::money::from_json_number(n)
            }
            _ => None,
        };
        let counted = CountedEvent {
            event_id: message.event_id,
            event_type: message.event_type.clone(),
            order_id,
            occurred_at: message.recorded_at,
            amount,
        };
        let context = CommandContext::caused_by(message, self.consumer.clone());
        Ok(Some((order_id.to_string(), counted, context)))
    }
}

#[async_trait]
impl MessageHandler for AnalyticsHandler {
    async fn handle(&self, message: &RecordedEvent) -> Result<(), HandlerError> {
        let Some((order_id, counted, context)) = self.command(message)? else {
            return Ok(());
        };
        self.activity.execute(&order_id, counted, context).await?;
        Ok(())
    }

    /// The batch's counts in one load of the orders' streams and one commit with every inbox
    /// entry: this consumer hears every wire event, so one message at a time it held more pool
    /// connections than the services on the order's path.
    async fn handle_batch(&self, messages: &[RecordedEvent]) -> Result<(), HandlerError> {
        let mut commands = Vec::with_capacity(messages.len());
        for message in messages {
            commands.extend(self.command(message)?);
        }
        if commands.is_empty() {
            return Ok(());
        }
        self.activity.execute_batch(commands).await?;
        Ok(())
    }
}

/// One day's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DailyMetrics {
    /// The UTC day.
    #[schema(value_type = String, format = Date)]
    pub date: NaiveDate,
    /// Orders placed that day.
    pub orders_placed: u64,
    /// Orders confirmed that day.
    pub orders_confirmed: u64,
    /// Orders cancelled that day.
    pub orders_cancelled: u64,
    /// The total of the orders confirmed that day.
    #[serde(with = "crate::money")]
    #[schema(value_type = f64)]
    pub revenue: Decimal,
    /// Revenue per confirmed order (0 when none).
    #[serde(with = "crate::money")]
    #[schema(value_type = f64)]
    pub average_order_value: Decimal,
}

/// A recent event as listed.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecentEvent {
    /// The wire event's id.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
    /// Its order.
    pub order_id: Uuid,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct Figures {
    days: BTreeMap<NaiveDate, DailyMetrics>,
    recent: BTreeMap<(DateTime<Utc>, Uuid), RecentEvent>,
}

/// Daily figures and recent events, folded from the analytics streams.
#[derive(Debug, Default)]
pub struct AnalyticsReadModel {
    figures: Mutex<Figures>,
}

impl AnalyticsReadModel {
    fn day(&self, date: NaiveDate) -> DailyMetrics {
        let figures = self.figures.lock().unwrap_or_else(|e| e.into_inner());
        finish_day(date, figures.days.get(&date).cloned().unwrap_or_default())
    }
}

/// The day's figures as answered: dated, with the average order value worked out.
fn finish_day(date: NaiveDate, mut day: DailyMetrics) -> DailyMetrics {
    day.date = date;
    day.average_order_value = if day.orders_confirmed == 0 {
        Decimal::ZERO
    } else {
        crate::money::to_cents(day.revenue / Decimal::from(day.orders_confirmed))
    };
    day
}

#[async_trait]
impl Projection for AnalyticsReadModel {
    fn name(&self) -> &str {
        "analytics-figures"
    }

    fn filter(&self) -> StreamFilter {
        StreamFilter::category(OrderActivity::TYPE)
    }

    async fn apply(&self, recorded: &RecordedEvent) -> Result<(), BoxError> {
        let AnalyticsEvent::EventCounted(event) = recorded.decode()?;
        let mut figures = self.figures.lock().unwrap_or_else(|e| e.into_inner());
        let key = (event.occurred_at, event.event_id);
        if figures.recent.contains_key(&key) {
            return Ok(());
        }
        let day = figures
            .days
            .entry(event.occurred_at.date_naive())
            .or_default();
        match event.event_type.as_str() {
            crate::events::ORDER_PLACED => day.orders_placed += 1,
            crate::events::ORDER_CONFIRMED => {
                day.orders_confirmed += 1;
                day.revenue += event.amount.unwrap_or_default();
            }
            crate::events::ORDER_CANCELLED => day.orders_cancelled += 1,
            _ => {}
        }
        figures.recent.insert(
            key,
            RecentEvent {
                event_id: event.event_id,
                event_type: event.event_type,
                order_id: event.order_id,
                occurred_at: event.occurred_at,
            },
        );
        Ok(())
    }
}

/// The name of the analytics read model: its checkpoint, its tables' schema, and what
/// `order-processing projections rebuild` takes.
pub const ANALYTICS_FIGURES: &str = "analytics-figures";

/// The analytics read model on PostgreSQL: `analytics_daily` (one row per UTC day: the counts
/// and the revenue, as an exact `numeric`) and `analytics_events` (one row per counted wire
/// event, indexed newest first for `events/recent`). Kept by a [`PgReadModelRunner`]; an event
/// whose id is already in `analytics_events` changes nothing, so a redelivered or re-read event
/// is counted once.
///
/// [`PgReadModelRunner`]: es_postgres::PgReadModelRunner
#[derive(Debug, Default)]
pub struct PgAnalytics {
    decoder: TypedDecoder,
}

#[async_trait]
impl PgProjection for PgAnalytics {
    fn name(&self) -> &str {
        ANALYTICS_FIGURES
    }

    fn filter(&self) -> StreamFilter {
        StreamFilter::category(OrderActivity::TYPE)
    }

    fn tables(&self) -> Vec<String> {
        vec!["analytics_daily".into(), "analytics_events".into()]
    }

    async fn create(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query(
            "CREATE TABLE analytics_daily (\
               day date PRIMARY KEY, \
               orders_placed bigint NOT NULL, \
               orders_confirmed bigint NOT NULL, \
               orders_cancelled bigint NOT NULL, \
               revenue numeric NOT NULL)",
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "CREATE TABLE analytics_events (\
               event_id uuid PRIMARY KEY, \
               event_type text NOT NULL, \
               order_id uuid NOT NULL, \
               occurred_at timestamptz NOT NULL)",
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "CREATE INDEX analytics_events_newest \
             ON analytics_events (occurred_at DESC, event_id DESC)",
        )
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn apply(&self, conn: &mut PgConnection, event: &RecordedEvent) -> Result<(), BoxError> {
        self.apply_batch(conn, std::slice::from_ref(event)).await
    }

    /// The whole batch in one statement: the event rows first (an id already there counts
    /// nothing), then each day's figures from the rows that were new.
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), BoxError> {
        let mut rows = CountedRows::default();
        for event in events {
            if let Some(envelope) = self
                .decoder
                .decode::<AnalyticsEvent>(ANALYTICS_FIGURES, event)?
            {
                let AnalyticsEvent::EventCounted(counted) = envelope.event;
                rows.push(counted);
            }
        }
        if rows.event_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "WITH input AS (\
               SELECT DISTINCT ON (event_id) * FROM UNNEST(\
                 $1::uuid[], $2::text[], $3::uuid[], $4::timestamptz[], $5::date[], \
                 $6::int8[], $7::int8[], $8::int8[], $9::text[]) \
               AS i(event_id, event_type, order_id, occurred_at, day, \
                    placed, confirmed, cancelled, revenue)), \
             counted AS (\
               INSERT INTO analytics_events (event_id, event_type, order_id, occurred_at) \
               SELECT event_id, event_type, order_id, occurred_at FROM input \
               ON CONFLICT (event_id) DO NOTHING RETURNING event_id) \
             INSERT INTO analytics_daily AS d \
               (day, orders_placed, orders_confirmed, orders_cancelled, revenue) \
             SELECT i.day, sum(i.placed), sum(i.confirmed), sum(i.cancelled), \
                    sum(i.revenue::numeric) \
             FROM input i JOIN counted USING (event_id) \
             WHERE i.placed + i.confirmed + i.cancelled > 0 \
             GROUP BY i.day \
             ON CONFLICT (day) DO UPDATE SET \
               orders_placed = d.orders_placed + EXCLUDED.orders_placed, \
               orders_confirmed = d.orders_confirmed + EXCLUDED.orders_confirmed, \
               orders_cancelled = d.orders_cancelled + EXCLUDED.orders_cancelled, \
               revenue = d.revenue + EXCLUDED.revenue",
        )
        .bind(&rows.event_ids)
        .bind(&rows.event_types)
        .bind(&rows.order_ids)
        .bind(&rows.occurred_at)
        .bind(&rows.days)
        .bind(&rows.placed)
        .bind(&rows.confirmed)
        .bind(&rows.cancelled)
        .bind(&rows.revenue)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// A batch of counted events as the columns of `PgAnalytics`'s statement.
#[derive(Default)]
struct CountedRows {
    event_ids: Vec<Uuid>,
    event_types: Vec<String>,
    order_ids: Vec<Uuid>,
    occurred_at: Vec<DateTime<Utc>>,
    days: Vec<NaiveDate>,
    placed: Vec<i64>,
    confirmed: Vec<i64>,
    cancelled: Vec<i64>,
    /// Exact decimals as text, read back as `numeric`.
    revenue: Vec<String>,
}

impl CountedRows {
    fn push(&mut self, event: CountedEvent) {
        let (placed, confirmed, cancelled, revenue) = match event.event_type.as_str() {
            crate::events::ORDER_PLACED => (1, 0, 0, Decimal::ZERO),
            crate::events::ORDER_CONFIRMED => (0, 1, 0, event.amount.unwrap_or_default()),
            crate::events::ORDER_CANCELLED => (0, 0, 1, Decimal::ZERO),
            _ => (0, 0, 0, Decimal::ZERO),
        };
        self.event_ids.push(event.event_id);
        self.order_ids.push(event.order_id);
        self.occurred_at.push(event.occurred_at);
        self.days.push(event.occurred_at.date_naive());
        self.event_types.push(event.event_type);
        self.placed.push(placed);
        self.confirmed.push(confirmed);
        self.cancelled.push(cancelled);
        self.revenue.push(revenue.to_string());
    }
}

/// Where the service reads its figures.
#[derive(Clone)]
enum ReadFrom {
    /// Folded in the process (embedded backends).
    Memory(Arc<AnalyticsReadModel>),
    /// The tables of [`PgAnalytics`] (views of their active generation).
    Postgres(PgEventStore),
}

impl ReadFrom {
    /// The figures of the days `from` to `to`, inclusive, oldest first; a day without events
    /// has zeros.
    async fn days(&self, from: NaiveDate, to: NaiveDate) -> es_core::Result<Vec<DailyMetrics>> {
        let dates = from.iter_days().take_while(|d| *d <= to);
        match self {
            ReadFrom::Memory(model) => Ok(dates.map(|d| model.day(d)).collect()),
            ReadFrom::Postgres(store) => {
                let rows: Vec<(NaiveDate, i64, i64, i64, String)> = sqlx::query_as(
                    "SELECT day, orders_placed, orders_confirmed, orders_cancelled, revenue::text \
                     FROM analytics_daily WHERE day BETWEEN $1 AND $2",
                )
                .bind(from)
                .bind(to)
                .fetch_all(store.pool())
                .await
                .map_err(|e| es_core::Error::backend("analytics", e))?;
                let mut found = BTreeMap::new();
                for (day, placed, confirmed, cancelled, revenue) in rows {
                    let revenue = revenue
                        .parse::<Decimal>()
                        .map_err(|e| es_core::Error::backend("analytics", e))?;
                    let count = |n: i64| u64::try_from(n).unwrap_or_default();
                    found.insert(
                        day,
                        DailyMetrics {
                            date: day,
                            orders_placed: count(placed),
                            orders_confirmed: count(confirmed),
                            orders_cancelled: count(cancelled),
                            revenue,
                            average_order_value: Decimal::ZERO,
                        },
                    );
                }
                Ok(dates
                    .map(|d| finish_day(d, found.remove(&d).unwrap_or_default()))
                    .collect())
            }
        }
    }

    /// The newest `limit` events, newest first.
    async fn recent(&self, limit: usize) -> es_core::Result<Vec<RecentEvent>> {
        match self {
            ReadFrom::Memory(model) => {
                let figures = model.figures.lock().unwrap_or_else(|e| e.into_inner());
                Ok(figures.recent.values().rev().take(limit).cloned().collect())
            }
            ReadFrom::Postgres(store) => {
                let rows: Vec<(Uuid, String, Uuid, DateTime<Utc>)> = sqlx::query_as(
                    "SELECT event_id, event_type, order_id, occurred_at FROM analytics_events \
                     ORDER BY occurred_at DESC, event_id DESC LIMIT $1",
                )
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(store.pool())
                .await
                .map_err(|e| es_core::Error::backend("analytics", e))?;
                Ok(rows
                    .into_iter()
                    .map(
                        |(event_id, event_type, order_id, occurred_at)| RecentEvent {
                            event_id,
                            event_type,
                            order_id,
                            occurred_at,
                        },
                    )
                    .collect())
            }
        }
    }
}

/// Today's figures (UTC).
#[utoipa::path(get, path = "/api/analytics/metrics/today", tag = "analytics",
    responses((status = 200, body = DailyMetrics)))]
async fn today(State(figures): State<ReadFrom>) -> Result<Json<DailyMetrics>, AppError> {
    let today = Utc::now().date_naive();
    let mut days = figures.days(today, today).await?;
    Ok(Json(days.pop().unwrap_or_else(|| {
        finish_day(today, DailyMetrics::default())
    })))
}

fn date_param(
    query: &HashMap<String, String>,
    name: &str,
    check: &mut crate::http::Validator,
) -> Option<NaiveDate> {
    match query.get(name) {
        None => check.error(name, "is required (YYYY-MM-DD)"),
        Some(text) => match NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            Ok(date) => return Some(date),
            Err(_) => check.error(name, "must be a date as YYYY-MM-DD"),
        },
    }
    None
}

/// The longest range `metrics/range` answers, in days.
pub const MAX_RANGE_DAYS: i64 = 366;

// The bounds of `events/recent`'s `limit`. Its `#[utoipa::path]` repeats them as literals
// (utoipa takes no constant there); `tests/openapi_bounds.rs` proves the two agree.

/// Fewest events `events/recent` answers.
pub const MIN_RECENT_LIMIT: usize = 1;
/// Most events `events/recent` answers.
pub const MAX_RECENT_LIMIT: usize = 1000;
/// How many events `events/recent` answers without a `limit`.
pub const DEFAULT_RECENT_LIMIT: usize = 50;

/// One object per day from `from` to `to`, inclusive, oldest first.
#[utoipa::path(get, path = "/api/analytics/metrics/range", tag = "analytics",
    params(
        ("from" = String, Query, format = Date, example = "2026-01-01",
            description = "The first day, YYYY-MM-DD; not after `to`"),
        ("to" = String, Query, format = Date, example = "2026-01-31",
            description = "The last day, YYYY-MM-DD; the range holds at most 366 days"),
    ),
    responses((status = 200, body = [DailyMetrics]), (status = 400)))]
async fn range(
    State(figures): State<ReadFrom>,
    ApiQuery(query): ApiQuery<HashMap<String, String>>,
) -> Result<Json<Vec<DailyMetrics>>, AppError> {
    let mut check = crate::http::Validator::default();
    let from = date_param(&query, "from", &mut check);
    let to = date_param(&query, "to", &mut check);
    if let (Some(from), Some(to)) = (from, to) {
        if from > to {
            check.error("from", "must not be after to");
        } else if (to - from).num_days() + 1 > MAX_RANGE_DAYS {
            check.error("to", format!("the range is at most {MAX_RANGE_DAYS} days"));
        }
    }
    check.finish()?;
    let (Some(from), Some(to)) = (from, to) else {
        return Err(AppError::bad_request("from and to are required"));
    };
    Ok(Json(figures.days(from, to).await?))
}

/// The newest events first.
#[utoipa::path(get, path = "/api/analytics/events/recent", tag = "analytics",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, example = 50,
        description = "How many, 1 to 1000; default 50")),
    responses((status = 200, body = [RecentEvent]), (status = 400)))]
async fn recent(
    State(figures): State<ReadFrom>,
    ApiQuery(query): ApiQuery<HashMap<String, String>>,
) -> Result<Json<Vec<RecentEvent>>, AppError> {
    let limit = match query.get("limit") {
        None => DEFAULT_RECENT_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if (MIN_RECENT_LIMIT..=MAX_RECENT_LIMIT).contains(&limit) => limit,
            _ => {
                let mut check = crate::http::Validator::default();
                check.error(
                    "limit",
                    format!("must be a whole number from {MIN_RECENT_LIMIT} to {MAX_RECENT_LIMIT}"),
                );
                return Err(check
                    .finish()
                    .err()
                    .unwrap_or_else(|| AppError::bad_request("bad limit")));
            }
        },
    };
    Ok(Json(figures.recent(limit).await?))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Analytics service",
        description = "Daily figures and recent events; each event counted once."
    ),
    paths(today, range, recent),
    components(schemas(DailyMetrics, RecentEvent))
)]
struct AnalyticsApi;

/// The service's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    AnalyticsApi::openapi()
}

/// Starts the analytics service: its consumer and read model.
pub(crate) async fn start(
    backends: &Backends,
    _settings: &Settings,
    background: &mut Background,
) -> es_core::Result<Router> {
    let activity = Repository::<OrderActivity>::new(backends.store.clone())
        .with_trusted_cache(crate::service::AGGREGATE_CACHE);
    let model = Arc::new(AnalyticsReadModel::default());
    background
        .read_model(backends, Arc::new(PgAnalytics::default()), model.clone())
        .await?;
    let figures = match &backends.listings {
        Listings::Postgres(store) => ReadFrom::Postgres(store.clone()),
        Listings::Memory(_) => ReadFrom::Memory(model),
    };
    let consumer = backends.consumer(ServiceKind::Analytics);
    let handler = Arc::new(AnalyticsHandler {
        activity,
        consumer: consumer.clone(),
    });
    background
        .consume_batched(
            &backends.bus,
            consumer,
            crate::events::bindings(ServiceKind::Analytics),
            handler,
            crate::background::CONSUMER_BATCH,
        )
        .await?;
    let api = Router::new()
        .route("/api/analytics/metrics/today", get(today))
        .route("/api/analytics/metrics/range", get(range))
        .route("/api/analytics/events/recent", get(recent))
        .with_state(figures);
    Ok(finish_router(api, openapi(), backends.health.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use es_core::{EventStore, ExpectedVersion, Metadata, NewEvent, ProjectionRunner, StreamId};
    use es_postgres::PgReadModelRunner;

    /// The same analytics events give the same answers from the PostgreSQL tables as from the
    /// in-memory fold (which the contract tests hold to the contract on the embedded backends),
    /// with two instances' runners building the tables at once: each event counted once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_tables_answer_as_the_memory_model_with_two_instances_counting() {
        crate::backends::testing::on_postgres(|backends| async move {
            let Listings::Postgres(store) = backends.listings.clone() else {
                panic!("on PostgreSQL");
            };
            let types = [
                crate::events::ORDER_PLACED,
                crate::events::ORDER_CONFIRMED,
                crate::events::ORDER_CANCELLED,
                "InventoryReserved",
            ];
            // Times as PostgreSQL records them (a wire event's time is its `recorded_at`): to
            // the microsecond.
            let micros = |t: DateTime<Utc>| DateTime::from_timestamp_micros(t.timestamp_micros());
            let yesterday = micros(Utc::now() - chrono::Duration::days(1)).unwrap();
            for i in 0..300u32 {
                let order_id = Uuid::now_v7();
                let occurred_at = if i % 3 == 0 {
                    yesterday
                } else {
                    micros(Utc::now()).unwrap()
                };
                let event_type = types[i as usize % types.len()];
                let amount = (event_type == crate::events::ORDER_CONFIRMED)
                    .then(|| Decimal::new(i64::from(i) * 101 + 1, 2));
                let counted = AnalyticsEvent::EventCounted(CountedEvent {
                    event_id: Uuid::now_v7(),
                    event_type: event_type.into(),
                    order_id,
                    occurred_at,
                    amount,
                });
                store
                    .append(
                        &StreamId::for_aggregate(OrderActivity::TYPE, &order_id.to_string())
                            .unwrap(),
                        ExpectedVersion::NoStream,
                        vec![NewEvent::from_domain(&counted, Metadata::default()).unwrap()],
                    )
                    .await
                    .unwrap();
            }
            // Two instances, small batches, at once; step until all is visible.
            let tables = ReadFrom::Postgres(store.clone());
            let counted = || async {
                let days = tables
                    .days(yesterday.date_naive(), Utc::now().date_naive())
                    .await
                    .unwrap();
                days.iter()
                    .map(|d| d.orders_placed + d.orders_confirmed + d.orders_cancelled)
                    .sum::<u64>()
            };
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let runs = (0..2).map(|_| {
                    let runner = PgReadModelRunner::new(store.clone()).with_batch_size(7);
                    tokio::spawn(async move { runner.catch_up(&PgAnalytics::default()).await })
                });
                for run in runs.collect::<Vec<_>>() {
                    run.await.unwrap().unwrap();
                }
                if counted().await == 225 {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "not caught up");
            }
            let memory = Arc::new(AnalyticsReadModel::default());
            ProjectionRunner::new(
                Arc::new(store.clone()),
                Arc::new(es_core::memory::MemoryEventStore::new()),
            )
            .catch_up(&*memory)
            .await
            .unwrap();
            let memory = ReadFrom::Memory(memory);
            let (from, to) = (
                yesterday.date_naive() - chrono::Duration::days(1),
                Utc::now().date_naive() + chrono::Duration::days(1),
            );
            assert_eq!(
                serde_json::to_value(tables.days(from, to).await.unwrap()).unwrap(),
                serde_json::to_value(memory.days(from, to).await.unwrap()).unwrap()
            );
            assert_eq!(
                serde_json::to_value(tables.recent(1000).await.unwrap()).unwrap(),
                serde_json::to_value(memory.recent(1000).await.unwrap()).unwrap()
            );
            assert_eq!(tables.recent(1000).await.unwrap().len(), 300);

            // A wire event counted twice in one batch, and one counted in an earlier batch:
            // each counts once.
            let again = tables.recent(1).await.unwrap().remove(0);
            let new_one = CountedEvent {
                event_id: Uuid::now_v7(),
                event_type: crate::events::ORDER_PLACED.into(),
                order_id: Uuid::now_v7(),
                occurred_at: micros(Utc::now()).unwrap(),
                amount: None,
            };
            let again = CountedEvent {
                event_id: again.event_id,
                // Were it counted again, it would move a figure.
                event_type: crate::events::ORDER_PLACED.into(),
                order_id: again.order_id,
                occurred_at: again.occurred_at,
                amount: None,
            };
            let recorded: Vec<NewEvent> = [new_one.clone(), new_one, again]
                .into_iter()
                .map(|e| {
                    NewEvent::from_domain(&AnalyticsEvent::EventCounted(e), Metadata::default())
                        .unwrap()
                })
                .collect();
            store
                .append(
                    &StreamId::for_aggregate(OrderActivity::TYPE, &Uuid::now_v7().to_string())
                        .unwrap(),
                    ExpectedVersion::NoStream,
                    recorded,
                )
                .await
                .unwrap();
            PgReadModelRunner::new(store.clone())
                .catch_up(&PgAnalytics::default())
                .await
                .unwrap();
            assert_eq!(counted().await, 226, "the new event counts once");
            assert_eq!(tables.recent(1000).await.unwrap().len(), 301);
        })
        .await;
    }
}
