//! The customer's order listing, written in the same commit as the order's events (an inline
//! projection), so that once `POST /api/orders` has answered 201 the listing includes the
//! order; and the keyset pages every customer listing is served in.
//!
//! - In memory, a [`Typed`] projection registered with
//!   [`MemoryEventStore::with_inline_projection`](es_core::memory::MemoryEventStore::with_inline_projection)
//!   folds each order under the store's lock.
//! - On PostgreSQL, [`PgOrderListing`] writes the `order_listing` table in the append's
//!   transaction ([`PgEventStore::with_inline_projection`]); the table is a versioned read
//!   model ([`PgReadModelRunner`]), so `order-processing projections rebuild order-listing`
//!   rebuilds it beside the one that serves.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use es_core::projection::{Typed, TypedDecoder, TypedProjection};
use es_core::Aggregate;
use es_core::{BoxError, Envelope, RecordedEvent, StreamFilter};
use es_postgres::{PgEventStore, PgProjection, PgReadModelRunner};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::http::{AppError, FieldErrors};
use crate::notification::{NotificationEvent, NotificationView, OrderNotifications};
use crate::order::{Order, OrderEvent, OrderView};

/// The projection's name: its checkpoint, its read-model schema, and what
/// `order-processing projections rebuild` takes.
pub const ORDER_LISTING: &str = "order-listing";

/// Items per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 1000;

// ---- pages ---------------------------------------------------------------------------------

/// A position in a listing sorted newest first: the item's time (to the microsecond, as
/// PostgreSQL keeps it) and its id, which breaks ties. A page starts strictly after it, so a
/// walk is not disturbed by items that arrive meanwhile (they sort before the first page).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    /// Microseconds since the Unix epoch.
    pub micros: i64,
    /// The item's id.
    pub id: Uuid,
}

impl Cursor {
    /// The position of the item created at `at` with id `id`.
    pub fn new(at: DateTime<Utc>, id: Uuid) -> Self {
        Cursor {
            micros: at.timestamp_micros(),
            id,
        }
    }

    /// The opaque text form: 48 lowercase hex digits (the time, then the id, big-endian).
    pub fn encode(&self) -> String {
        let mut bytes = [0u8; 24];
        bytes[..8].copy_from_slice(&self.micros.to_be_bytes());
        bytes[8..].copy_from_slice(self.id.as_bytes());
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads [`encode`](Self::encode)'s form; `None` for anything else.
    pub fn decode(text: &str) -> Option<Self> {
        if text.len() != 48 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut bytes = [0u8; 24];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        let micros = i64::from_be_bytes(bytes[..8].try_into().ok()?);
        let id = Uuid::from_slice(&bytes[8..]).ok()?;
        Some(Cursor { micros, id })
    }

    fn time(&self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_micros(self.micros)
    }
}

/// The query of a paged listing, as sent.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 1000 (100 when absent).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
    pub limit: Option<String>,
    /// Where the page starts: the `cursor` of the previous answer's `Link: rel="next"`.
    pub cursor: Option<String>,
}

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Items per page.
    pub limit: usize,
    /// Start strictly after this position (the first page when `None`).
    pub after: Option<Cursor>,
}

impl Page {
    /// Checks `query`: a bad `limit` or `cursor` is a 400 naming the field.
    pub fn from_query(query: &PageQuery) -> Result<Page, AppError> {
        let mut errors = FieldErrors::new();
        let limit = match query.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    errors.insert(
                        "limit".into(),
                        vec![format!("must be an integer from 1 to {MAX_LIMIT}")],
                    );
                    DEFAULT_LIMIT
                }
            },
        };
        let after = match query.cursor.as_deref() {
            None => None,
            Some(text) => match Cursor::decode(text) {
                Some(cursor) if cursor.time().is_some() => Some(cursor),
                _ => {
                    errors.insert(
                        "cursor".into(),
                        vec!["is not a cursor this listing gave out".into()],
                    );
                    None
                }
            },
        };
        if errors.is_empty() {
            Ok(Page { limit, after })
        } else {
            Err(AppError::validation(errors))
        }
    }

    /// The answer: the items as a JSON array, and when more follow a `Link` to the next page
    /// (RFC 8288) at `path`.
    pub fn respond<T: Serialize>(
        &self,
        path: &str,
        items: Vec<T>,
        next: Option<Cursor>,
    ) -> Response {
        let mut response = Json(items).into_response();
        if let Some(next) = next {
            let link = format!(
                "<{path}?limit={}&cursor={}>; rel=\"next\"",
                self.limit,
                next.encode()
            );
            if let Ok(value) = HeaderValue::from_str(&link) {
                response.headers_mut().insert(header::LINK, value);
            }
        }
        response
    }
}

/// One page from items sorted newest first by `key`: at most `page.limit` of those strictly
/// after `page.after`, and the cursor of the last one when more follow.
pub fn page_of<T>(
    page: &Page,
    sorted_newest_first: impl Iterator<Item = (Cursor, T)>,
) -> (Vec<T>, Option<Cursor>) {
    let mut items = Vec::new();
    let mut last = None;
    for (key, item) in sorted_newest_first.filter(|(key, _)| page.after.is_none_or(|a| *key < a)) {
        if items.len() == page.limit {
            return (items, last);
        }
        last = Some(key);
        items.push(item);
    }
    (items, None)
}

// ---- the order listing ---------------------------------------------------------------------

/// How far behind the log a read model's runner may fall before `/health` says `"Degraded"`.
pub const MAX_LAG: Duration = Duration::from_secs(30);

/// A `/health` check of the store's versioned read models: fails (degrading the service, see
/// [`Health::with_soft`](crate::http::Health::with_soft)) when an active generation's runner has
/// events to read of which the oldest was recorded more than `max_lag` ago.
pub fn lag_probe(store: PgEventStore, max_lag: Duration) -> crate::http::HealthProbe {
    Arc::new(move || {
        let store = store.clone();
        Box::pin(async move {
            let status = es_core::ProjectionAdmin::status(&store)
                .await
                .map_err(|e| e.to_string())?;
            let behind: Vec<String> = status
                .iter()
                .filter(|info| info.phase == es_core::ProjectionPhase::Active)
                .filter(|info| info.events_behind > 0 && info.time_behind >= max_lag)
                .map(|info| {
                    format!(
                        "{} is {} events ({:.0}s) behind",
                        info.name,
                        info.events_behind,
                        info.time_behind.as_secs_f64()
                    )
                })
                .collect();
            if behind.is_empty() {
                Ok(())
            } else {
                Err(behind.join("; "))
            }
        })
    })
}

/// Where the customers' listings live, and with them every read model of the example: the
/// services keep theirs in PostgreSQL tables exactly when this is [`Listings::Postgres`].
#[derive(Clone)]
pub enum Listings {
    /// In the process: the order listing beside the in-memory store (the notification service
    /// keeps its own inbox).
    Memory(Arc<Typed<MemoryOrderListing>>),
    /// In the tables `order_listing` and `notification_listing` (views of their active
    /// generations) of the store's schema.
    Postgres(PgEventStore),
}

impl std::fmt::Debug for Listings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listings::Memory(_) => f.write_str("Listings::Memory"),
            Listings::Postgres(store) => f.debug_tuple("Listings::Postgres").field(store).finish(),
        }
    }
}

impl Listings {
    /// An empty in-memory listing; register [`memory_projection`](Self::memory_projection)
    /// with the in-memory store.
    pub fn memory() -> Self {
        Listings::Memory(Arc::new(Typed::new(MemoryOrderListing::default())))
    }

    /// The inline projection that fills an in-memory listing (`None` on PostgreSQL).
    pub fn memory_projection(&self) -> Option<Arc<dyn es_core::InlineProjection>> {
        match self {
            Listings::Memory(listing) => Some(listing.clone()),
            Listings::Postgres(_) => None,
        }
    }

    /// Sets the listings up on PostgreSQL: creates (or catches up) their active generations,
    /// then registers the order listing inline, so every commit of the returned store writes
    /// its rows. The notification listing is kept by the notification service's runner.
    pub async fn install(store: PgEventStore) -> es_core::Result<(PgEventStore, Listings)> {
        let runner = PgReadModelRunner::new(store.clone());
        runner.catch_up(&PgNotificationListing::default()).await?;
        let model = Arc::new(PgOrderListing::default());
        runner.catch_up(&*model).await?;
        let store = store.with_inline_projection(model);
        Ok((store.clone(), Listings::Postgres(store)))
    }

    /// One page of the customer's notifications from PostgreSQL, newest first, and the cursor
    /// of the next page; `None` for in-memory listings (the service's own inbox answers).
    pub async fn notification_page(
        &self,
        customer_id: Uuid,
        page: &Page,
    ) -> Option<es_core::Result<(Vec<NotificationView>, Option<Cursor>)>> {
        let Listings::Postgres(store) = self else {
            return None;
        };
        let after_time = page.after.and_then(|c| c.time());
        let after_id = page.after.map(|c| c.id);
        let limit = i64::try_from(page.limit + 1).unwrap_or(i64::MAX);
        let rows = sqlx::query_as::<_, (DateTime<Utc>, Uuid, serde_json::Value)>(
            "SELECT created_at, notification_id, view FROM notification_listing \
             WHERE customer_id = $1 \
               AND ($2::timestamptz IS NULL OR (created_at, notification_id) < ($2, $3)) \
             ORDER BY created_at DESC, notification_id DESC LIMIT $4",
        )
        .bind(customer_id)
        .bind(after_time)
        .bind(after_id)
        .bind(limit)
        .fetch_all(store.pool())
        .await
        .map_err(|e| es_core::Error::backend("notification listing", e));
        Some(rows.and_then(|rows| {
            let mut items = Vec::with_capacity(rows.len());
            for (created_at, id, view) in rows {
                let view: NotificationView = serde_json::from_value(view)
                    .map_err(|e| es_core::Error::backend("notification listing", e))?;
                items.push((Cursor::new(created_at, id), view));
            }
            Ok(page_of(page, items.into_iter()))
        }))
    }

    /// One page of the customer's orders, newest first, and the cursor of the next page.
    pub async fn page(
        &self,
        customer_id: Uuid,
        page: &Page,
    ) -> es_core::Result<(Vec<OrderView>, Option<Cursor>)> {
        match self {
            Listings::Memory(listing) => {
                let listing = listing.read();
                let Some(keys) = listing.by_customer.get(&customer_id) else {
                    return Ok((Vec::new(), None));
                };
                let items = keys.iter().rev().filter_map(|key| {
                    let (order, version) = listing.orders.get(&key.id)?;
                    Some((*key, order.view(*version)))
                });
                Ok(page_of(page, items))
            }
            Listings::Postgres(store) => {
                let after_time = page.after.and_then(|c| c.time());
                let after_id = page.after.map(|c| c.id);
                let limit = i64::try_from(page.limit + 1).unwrap_or(i64::MAX);
                let rows: Vec<(DateTime<Utc>, Uuid, i64, serde_json::Value)> = sqlx::query_as(
                    "SELECT created_at, order_id, version, state FROM order_listing \
                     WHERE customer_id = $1 \
                       AND ($2::timestamptz IS NULL OR (created_at, order_id) < ($2, $3)) \
                     ORDER BY created_at DESC, order_id DESC LIMIT $4",
                )
                .bind(customer_id)
                .bind(after_time)
                .bind(after_id)
                .bind(limit)
                .fetch_all(store.pool())
                .await
                .map_err(|e| es_core::Error::backend("order listing", e))?;
                let mut items = Vec::with_capacity(rows.len());
                for (created_at, order_id, version, state) in rows {
                    let order: Order = serde_json::from_value(state)
                        .map_err(|e| es_core::Error::backend("order listing", e))?;
                    let version = u64::try_from(version).unwrap_or_default();
                    items.push((Cursor::new(created_at, order_id), order.view(version)));
                }
                Ok(page_of(page, items.into_iter()))
            }
        }
    }
}

/// The in-memory listing: each order folded to its latest version, and each customer's
/// orders by position.
#[derive(Debug, Default)]
pub struct MemoryOrderListing {
    orders: HashMap<Uuid, (Order, u64)>,
    by_customer: HashMap<Uuid, BTreeSet<Cursor>>,
}

impl TypedProjection for MemoryOrderListing {
    type Event = OrderEvent;
    const NAME: &'static str = ORDER_LISTING;

    fn filter(&self) -> StreamFilter {
        StreamFilter::category(Order::TYPE)
    }

    fn apply(&mut self, event: Envelope<OrderEvent>) -> Result<(), BoxError> {
        let order_id = order_id_of(&event.event);
        let entry = self.orders.entry(order_id).or_default();
        // An event already folded (a replay) changes nothing.
        if event.stream_version <= entry.1 {
            return Ok(());
        }
        entry.0.apply(&event.event);
        entry.1 = event.stream_version;
        if let OrderEvent::OrderPlaced {
            customer_id,
            placed_at,
            ..
        } = &event.event
        {
            self.by_customer
                .entry(*customer_id)
                .or_default()
                .insert(Cursor::new(*placed_at, order_id));
        }
        Ok(())
    }
}

fn order_id_of(event: &OrderEvent) -> Uuid {
    match event {
        OrderEvent::OrderPlaced { order_id, .. }
        | OrderEvent::OrderInventoryReserved { order_id, .. }
        | OrderEvent::OrderPaymentProcessed { order_id, .. }
        | OrderEvent::OrderConfirmed { order_id, .. }
        | OrderEvent::OrderCancelled { order_id, .. } => *order_id,
    }
}

/// The order listing on PostgreSQL: one row per order (its folded state and version), indexed
/// for a customer's newest-first pages. Written inline by every commit and kept by a
/// [`PgReadModelRunner`] (which also rebuilds it); both apply an event once, by version.
#[derive(Debug, Default)]
pub struct PgOrderListing {
    decoder: TypedDecoder,
}

#[async_trait::async_trait]
impl PgProjection for PgOrderListing {
    fn name(&self) -> &str {
        ORDER_LISTING
    }

    fn filter(&self) -> StreamFilter {
        StreamFilter::category(Order::TYPE)
    }

    fn version(&self) -> u32 {
        1
    }

    fn tables(&self) -> Vec<String> {
        vec!["order_listing".into()]
    }

    // Every commit of an order writes its row inline: a rebuild's switch must carry the
    // last of those into the new generation (`apply` skips what a row already has).
    fn written_inline(&self) -> bool {
        true
    }

    async fn create(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query(
            "CREATE TABLE order_listing (\
               order_id uuid PRIMARY KEY, \
               customer_id uuid NOT NULL, \
               created_at timestamptz NOT NULL, \
               version bigint NOT NULL, \
               state jsonb NOT NULL)",
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "CREATE INDEX order_listing_by_customer \
             ON order_listing (customer_id, created_at DESC, order_id DESC)",
        )
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn apply(&self, conn: &mut PgConnection, event: &RecordedEvent) -> Result<(), BoxError> {
        match self.decoder.decode::<OrderEvent>(ORDER_LISTING, event)? {
            Some(envelope) => fold_into_row(conn, envelope).await,
            None => Ok(()),
        }
    }

    /// A commit's events are the next of their orders: each is folded into its row at once.
    async fn apply_inline(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), BoxError> {
        for event in events {
            self.apply(&mut *conn, event).await?;
        }
        Ok(())
    }

    /// The runner's batches: the commits wrote most of these events inline already, so one
    /// read (without locks) finds the rows that are behind, and only their events are folded
    /// (each under its row's lock). Without it the runner locked every row once per event
    /// again, only to find the version there.
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), BoxError> {
        let mut decoded = Vec::with_capacity(events.len());
        for event in events {
            if let Some(envelope) = self.decoder.decode::<OrderEvent>(ORDER_LISTING, event)? {
                decoded.push(envelope);
            }
        }
        let ids: Vec<Uuid> = decoded.iter().map(|e| order_id_of(&e.event)).collect();
        // The array as a scalar subquery: planned for its length, the probe was planned again
        // on nearly every call; hidden from the planner, one plan serves every batch. (The
        // cast keeps `ANY` from reading the subquery as a set of rows.)
        let stored: HashMap<Uuid, i64> = sqlx::query_as(
            "SELECT order_id, version FROM order_listing WHERE order_id = ANY((SELECT $1::uuid[])::uuid[])",
        )
                .bind(&ids)
                .fetch_all(&mut *conn)
                .await?
                .into_iter()
                .collect();
        for envelope in decoded {
            // A row's version only grows, one event at a time: a row at `v` holds every event
            // of the order up to `v`.
            let held = stored
                .get(&order_id_of(&envelope.event))
                .is_some_and(|&version| {
                    u64::try_from(version).unwrap_or(0) >= envelope.stream_version
                });
            if !held {
                fold_into_row(conn, envelope).await?;
            }
        }
        Ok(())
    }
}

/// Folds one event into its order's row, unless the row has it already: inline and by the
/// runner, the row lock orders the two, the version skips a repeat.
async fn fold_into_row(
    conn: &mut PgConnection,
    envelope: Envelope<OrderEvent>,
) -> Result<(), BoxError> {
    let order_id = order_id_of(&envelope.event);
    let version = i64::try_from(envelope.stream_version)?;
    let row: Option<(i64, serde_json::Value)> =
        sqlx::query_as("SELECT version, state FROM order_listing WHERE order_id = $1 FOR UPDATE")
            .bind(order_id)
            .fetch_optional(&mut *conn)
            .await?;
    let stored = row.as_ref().map_or(0, |(stored, _)| *stored);
    if version <= stored {
        return Ok(());
    }
    if version > stored + 1 {
        // An earlier event of the order is not in the row yet: it was appended by code that
        // does not write this table inline (a rolling deploy) and the runner has not reached
        // it. Folding this one over the older state would lose it for good; the runner
        // applies both in order instead.
        tracing::debug!(%order_id, stored, version, "order listing: an earlier event is still to come; leaving this one to the runner");
        return Ok(());
    }
    let mut order = match row {
        Some((_, state)) => serde_json::from_value::<Order>(state)?,
        None => Order::default(),
    };
    order.apply(&envelope.event);
    let view = order.view(envelope.stream_version);
    // Kept to the microsecond, as the cursor is.
    let created_at = DateTime::from_timestamp_micros(view.created_at.timestamp_micros())
        .unwrap_or(view.created_at);
    sqlx::query(
        "INSERT INTO order_listing (order_id, customer_id, created_at, version, state) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (order_id) DO UPDATE SET version = EXCLUDED.version, state = EXCLUDED.state \
         WHERE order_listing.version < EXCLUDED.version",
    )
    .bind(order_id)
    .bind(view.customer_id)
    .bind(created_at)
    .bind(version)
    .bind(serde_json::to_value(&order)?)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The notification listing's name (checkpoint, schema, `projections rebuild`).
pub const NOTIFICATION_LISTING: &str = "notification-listing";

/// The customers' notifications on PostgreSQL: one row per notification, indexed for a
/// customer's newest-first pages, kept by the notification service's [`PgReadModelRunner`].
#[derive(Debug, Default)]
pub struct PgNotificationListing {
    decoder: TypedDecoder,
}

#[async_trait::async_trait]
impl PgProjection for PgNotificationListing {
    fn name(&self) -> &str {
        NOTIFICATION_LISTING
    }

    fn filter(&self) -> StreamFilter {
        StreamFilter::category(OrderNotifications::TYPE)
    }

    fn tables(&self) -> Vec<String> {
        vec!["notification_listing".into()]
    }

    async fn create(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query(
            "CREATE TABLE notification_listing (\
               notification_id uuid PRIMARY KEY, \
               customer_id uuid NOT NULL, \
               created_at timestamptz NOT NULL, \
               view jsonb NOT NULL)",
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "CREATE INDEX notification_listing_by_customer \
             ON notification_listing (customer_id, created_at DESC, notification_id DESC)",
        )
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn apply(&self, conn: &mut PgConnection, event: &RecordedEvent) -> Result<(), BoxError> {
        let Some(envelope) = self
            .decoder
            .decode::<NotificationEvent>(NOTIFICATION_LISTING, event)?
        else {
            return Ok(());
        };
        let NotificationEvent::NotificationSent(view) = envelope.event;
        let created_at = DateTime::from_timestamp_micros(view.created_at.timestamp_micros())
            .unwrap_or(view.created_at);
        sqlx::query(
            "INSERT INTO notification_listing (notification_id, customer_id, created_at, view) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (notification_id) DO NOTHING",
        )
        .bind(view.notification_id)
        .bind(view.customer_id)
        .bind(created_at)
        .bind(serde_json::to_value(&view)?)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        let cursor = Cursor::new(Utc::now(), Uuid::now_v7());
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for bad in ["", "x", &"g".repeat(48), &cursor.encode()[1..], "é"] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn pages_start_after_the_cursor_and_say_when_more_follow() {
        let items: Vec<(Cursor, u32)> = (0..5)
            .rev()
            .map(|i| {
                (
                    Cursor {
                        micros: i,
                        id: Uuid::nil(),
                    },
                    i as u32,
                )
            })
            .collect();
        let first = Page {
            limit: 2,
            after: None,
        };
        let (got, next) = page_of(&first, items.clone().into_iter());
        assert_eq!(got, vec![4, 3]);
        let second = Page {
            limit: 2,
            after: next,
        };
        let (got, next) = page_of(&second, items.clone().into_iter());
        assert_eq!(got, vec![2, 1]);
        let (got, next) = page_of(
            &Page {
                limit: 2,
                after: next,
            },
            items.into_iter(),
        );
        assert_eq!((got, next), (vec![0], None));
    }

    #[test]
    fn the_openapi_documents_the_bounds_of_limit() {
        let api = serde_json::to_value(crate::order::openapi()).unwrap();
        let params = &api["paths"]["/api/orders/customer/{customerId}"]["get"]["parameters"];
        let limit = params
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .expect("limit documented");
        assert_eq!(limit["in"], "query");
        assert_eq!(limit["schema"]["minimum"], 1);
        assert_eq!(limit["schema"]["maximum"], 1000);
        assert_eq!(limit["schema"]["default"], 100);
        assert!(params
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "cursor"));
        let api = serde_json::to_value(crate::notification::openapi()).unwrap();
        let params = &api["paths"]["/api/notifications/customer/{customerId}"]["get"]["parameters"];
        assert_eq!(params.as_array().unwrap().len(), 3, "{params}");
    }
}
