//! Connection and behaviour settings of a [`PgEventStore`](crate::PgEventStore).

use std::time::Duration;

use es_core::{Error, Result};

/// The longest schema name accepted, so that the notification channel derived from it
/// (`{schema}_events`) stays within PostgreSQL's 63-byte identifier limit.
pub const MAX_SCHEMA_LEN: usize = 48;

/// Settings of a [`PgEventStore`](crate::PgEventStore).
///
/// ```
/// use std::time::Duration;
/// use es_postgres::PgConfig;
///
/// let mut config = PgConfig::new("orders");
/// config.max_connections = 20;
/// config.poll_interval = Duration::from_millis(500);
/// assert!(config.validate().is_ok());
/// assert!(PgConfig::new("Robert'); DROP TABLE").validate().is_err());
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PgConfig {
    /// The schema holding the store's tables: lowercase ASCII letters, digits and `_`, starting
    /// with a letter or `_`, at most [`MAX_SCHEMA_LEN`] bytes. Default `es`.
    pub schema: String,
    /// The most connections the pool opens. Default 10.
    pub max_connections: u32,
    /// Connections the pool keeps open when idle. Default 0.
    pub min_connections: u32,
    /// How long a call waits for a free connection (or for the server to accept one) before it
    /// fails with [`Error::Unavailable`]. Default 5 s.
    pub acquire_timeout: Duration,
    /// How long a connection may sit idle in the pool and still be handed out without a check.
    /// The pool checks every connection with a round trip as it comes back; one idle for
    /// longer than this is checked again before it is handed out (the server may have closed
    /// it meanwhile), one used again sooner is not, which saves a round trip per statement or
    /// transaction under load (as PgBouncer's `server_check_delay` does). Zero checks every
    /// connection before it is handed out. Default 1 s.
    pub check_idle_after: Duration,
    /// The `application_name` of every connection (shows in `pg_stat_activity`).
    /// Default `es-postgres`.
    pub application_name: String,
    /// Events a subscription reads per page once it has caught up. Default 1000.
    pub page_size: usize,
    /// Events one streaming query of a catching-up subscription reads at most. Far behind the
    /// head, a subscription streams what is safe to hand out in one query rather than page by
    /// page; the query holds a connection and a snapshot while the consumer works through its
    /// rows, so this bounds how long. At most `(max_connections - 1) / 2` subscriptions stream
    /// at once (one connection is the listener's; consumers need the others), the rest read
    /// page by page. Default 100,000.
    pub catch_up_rows: usize,
    /// How long a caught-up subscription waits for a notification before it polls anyway.
    /// Default 1 s.
    pub poll_interval: Duration,
    /// How long [`read_all`](es_core::EventStore::read_all) and
    /// [`head`](es_core::EventStore::head) wait, at most, when newer committed events are held
    /// back by write transactions that were already running when the read began, so that a
    /// read right after an append sees it. Transactions that begin later are never waited for.
    /// Zero never waits (the read then returns only what is already safe to hand out).
    /// Default 1 s. Subscriptions never wait this way: they deliver what is safe and are woken
    /// when more is.
    pub read_settle: Duration,
    /// Whether appends announce themselves with a `NOTIFY` for subscribers in other processes.
    /// Subscribers in the appending process are woken directly either way; with `false`,
    /// others learn of new events by polling (`poll_interval`). Default `true`.
    pub notify: bool,
    /// Whether a [`read_all`](es_core::EventStore::read_all) that hands out a full page of at
    /// least 100 events reads the pages after it while the caller works through this one, so
    /// that a scan page by page keeps the server and the client busy at once. They come from
    /// streaming queries (two pages, then twice as many each time, up to
    /// [`catch_up_rows`](Self::catch_up_rows) rows), cut into the caller's pages, one page
    /// ahead of the caller; a page read ahead is handed out only if the next call asks for it
    /// and it is full (then it is exactly what a fresh read would return). Such a stream holds a connection while its scan goes on,
    /// taking one of the permits the streaming catch-ups share (half the pool), and gives it
    /// back at the head, or closes it one second after its scan last asked for a page; with
    /// no permit free, a single page is read ahead. Costs up to two pages of memory per scan
    /// under way, and pages read for nothing when a scan stops early. Default `true`.
    pub read_ahead: bool,
    /// The most connections of a second pool that only subscriptions' page reads use, opened
    /// as they are needed. Its connections keep one plan per statement
    /// (`plan_cache_mode = force_generic_plan`): a page read hides its values from the planner,
    /// so a plan for them is the generic plan, yet on a growing log PostgreSQL kept planning it
    /// anew (each `ANALYZE` raises the generic plan's estimate above the average of the plans
    /// it made for values while the log was smaller, and then it plans for the values until
    /// that average catches up). The store opens at most `max_connections` plus these. Every
    /// subscription of the store reads its pages here (a page read holds a connection for one
    /// or two short statements): raise it when many subscriptions catch up at once.
    /// Default 2.
    pub page_read_connections: u32,
}

impl Default for PgConfig {
    fn default() -> Self {
        PgConfig {
            schema: "es".to_owned(),
            max_connections: 10,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(5),
            check_idle_after: Duration::from_secs(1),
            application_name: "es-postgres".to_owned(),
            page_size: 1000,
            catch_up_rows: 100_000,
            poll_interval: Duration::from_secs(1),
            read_settle: Duration::from_secs(1),
            notify: true,
            read_ahead: true,
            page_read_connections: 2,
        }
    }
}

impl PgConfig {
    /// The default settings in schema `schema`.
    pub fn new(schema: impl Into<String>) -> Self {
        PgConfig {
            schema: schema.into(),
            ..PgConfig::default()
        }
    }

    /// Checks the settings: a valid schema name, at least one connection, a non-zero page.
    pub fn validate(&self) -> Result<()> {
        let schema = self.schema.as_bytes();
        let valid_start = schema
            .first()
            .is_some_and(|b| b.is_ascii_lowercase() || *b == b'_');
        let valid_rest = schema
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_');
        if !valid_start || !valid_rest || schema.len() > MAX_SCHEMA_LEN {
            return Err(Error::InvalidInput(format!(
                "a schema name is 1 to {MAX_SCHEMA_LEN} lowercase ASCII letters, digits or `_`, \
                 not starting with a digit; got `{}`",
                self.schema
            )));
        }
        if self.max_connections == 0 {
            return Err(Error::InvalidInput(
                "max_connections must be at least 1".into(),
            ));
        }
        if self.page_read_connections == 0 {
            return Err(Error::InvalidInput(
                "page_read_connections must be at least 1".into(),
            ));
        }
        if self.page_size == 0 {
            return Err(Error::InvalidInput("page_size must be at least 1".into()));
        }
        if self.catch_up_rows == 0 {
            return Err(Error::InvalidInput(
                "catch_up_rows must be at least 1".into(),
            ));
        }
        if self
            .application_name
            .chars()
            .any(|c| c.is_control() || c == '\'')
        {
            return Err(Error::InvalidInput(
                "application_name cannot contain control characters or quotes".into(),
            ));
        }
        Ok(())
    }

    /// The `LISTEN`/`NOTIFY` channel on which appends to this schema announce themselves.
    pub fn channel(&self) -> String {
        format!("{}_events", self.schema)
    }
}
