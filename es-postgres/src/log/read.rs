//! Reads of the global log, in the order of positions: what is safe to hand out (below the
//! horizon), and the head.

use std::time::Duration;

use es_core::{Error, Page, Position, RecordedEvent, Result, StreamFilter};
use futures_util::TryStreamExt;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::QueryAs;
use sqlx::{FromRow, PgConnection, PgPool, Postgres, Row};

use super::horizon::{
    beyond_horizon_sql, held_back, wait_out_horizon, Hold, HorizonRead, Settled, WaitFor, HORIZON,
};
use super::row::{EventRow, EVENT_COLUMNS, EVENT_COLUMN_COUNT};
use crate::error::{from_sqlx, to_i64, to_u64};
use crate::plan::opaque;

/// The most events a page reserves room for before its rows arrive.
const PAGE_CAPACITY: usize = 1024;

/// The statement that reads the safe events after `($1, $2)`, at most `$3` of them (in
/// category `$4` when the filter names one), in the global order.
pub(crate) fn visible_sql(filter: &StreamFilter) -> String {
    let category = match filter {
        StreamFilter::Category(_) => "category = $4 AND ",
        _ => "",
    };
    format!(
        "SELECT {EVENT_COLUMNS} FROM events \
         WHERE {category}(tx_id, seq) > ($1, $2) AND tx_id < {HORIZON} \
         ORDER BY tx_id, seq LIMIT $3"
    )
}

/// [`visible_sql`] with one more column on every row: whether committed events after `($1, $2)`
/// lie beyond the horizon, held back by an older transaction still running. Read in the same
/// statement (and snapshot) as the page, so a subscription learns whether a short page reached
/// the head without a statement of its own. The category, when the filter names one, is `$3`.
///
/// The position and the category are [`opaque`], and the limit is written into the statement:
/// a subscription near the head, planned for its values, was re-planned on nearly every call
/// (see [`crate::plan`]). Hidden as well, the limit would be guessed at a tenth of a third of
/// the category, a plan for reading much of a large table; written out, every plan knows it
/// reads at most `limit` rows through the category's index (or the global one) from the
/// position on. A subscription reads pages of one size, so that is one statement to prepare.
fn page_sql(filter: &StreamFilter, limit: usize) -> String {
    let category = match filter {
        StreamFilter::Category(_) => format!("category = {} AND ", opaque("$3::text")),
        _ => String::new(),
    };
    format!(
        "SELECT {EVENT_COLUMNS}, {beyond} FROM events \
         WHERE {category}(tx_id, seq) > ({after_commit}, {after_sequence}) \
           AND tx_id < {HORIZON} \
         ORDER BY tx_id, seq LIMIT {limit}",
        beyond = beyond_horizon_sql(&category),
        after_commit = opaque("$1::bigint"),
        after_sequence = opaque("$2::bigint"),
        limit = i64::try_from(limit).unwrap_or(i64::MAX),
    )
}

/// A row of [`page_sql`]: an event, and whether events are held back beyond the horizon.
struct PageRow {
    event: EventRow,
    events_beyond: bool,
}

impl<'r> FromRow<'r, PgRow> for PageRow {
    fn from_row(row: &'r PgRow) -> sqlx::Result<Self> {
        Ok(PageRow {
            event: EventRow::from_row(row)?,
            events_beyond: row.try_get(EVENT_COLUMN_COUNT)?,
        })
    }
}

/// [`visible_sql`] with its parameters bound: the events after `after`, at most `limit`.
pub(crate) fn visible_query<'q, R>(
    sql: &'q str,
    filter: &'q StreamFilter,
    after: Position,
    limit: usize,
) -> Result<QueryAs<'q, Postgres, R, PgArguments>>
where
    R: for<'r> FromRow<'r, PgRow>,
{
    let query = sqlx::query_as(sql)
        .bind(to_i64(after.commit, "position")?)
        .bind(to_i64(after.sequence, "position")?)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX));
    Ok(match filter {
        StreamFilter::Category(category) => query.bind(category.as_str()),
        _ => query,
    })
}

/// The events after `after` that are safe to hand out: those of transactions older than every
/// transaction still running.
pub(crate) async fn read_visible(
    conn: &mut PgConnection,
    filter: &StreamFilter,
    after: Position,
    limit: usize,
) -> Result<Vec<RecordedEvent>> {
    let sql = visible_sql(filter);
    // Each row becomes an event as it arrives: no second vector of rows to fill and walk.
    let mut rows = visible_query::<EventRow>(&sql, filter, after, limit)?.fetch(&mut *conn);
    let mut events = Vec::with_capacity(limit.min(PAGE_CAPACITY));
    while let Some(row) = rows.try_next().await.map_err(from_sqlx)? {
        events.push(row.recorded()?);
    }
    Ok(events)
}

/// Every committed event after `after` that `filter` takes, at most `limit`, in the global
/// order, *without* the horizon: also those of transactions that committed while an older one
/// still runs. Not for moving a checkpoint (an older transaction may still commit events that
/// sort before these); for a caller that must see every committed event now, and applies them
/// idempotently (a read-model switch carrying inline writes over, see `PgReadModelRunner`).
pub(crate) async fn read_committed(
    conn: &mut PgConnection,
    filter: &StreamFilter,
    after: Position,
    limit: usize,
) -> Result<Vec<RecordedEvent>> {
    let category = match filter {
        StreamFilter::Category(_) => "category = $4 AND ",
        _ => "",
    };
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE {category}(tx_id, seq) > ($1, $2) \
         ORDER BY tx_id, seq LIMIT $3"
    );
    let rows: Vec<EventRow> = visible_query(&sql, filter, after, limit)?
        .fetch_all(&mut *conn)
        .await
        .map_err(from_sqlx)?;
    rows.into_iter().map(EventRow::recorded).collect()
}

/// The safe events after `after`: a read that comes back short may wait for the transactions
/// holding newer events back.
struct VisibleRead<'a> {
    filter: &'a StreamFilter,
    after: Position,
    limit: usize,
}

impl HorizonRead for VisibleRead<'_> {
    type Found = Vec<RecordedEvent>;

    async fn read(&self, conn: &mut PgConnection) -> Result<(Self::Found, bool)> {
        let events = read_visible(conn, self.filter, self.after, self.limit).await?;
        let full = events.len() >= self.limit;
        Ok((events, full))
    }

    /// After the last event found: those are below the horizon, and whatever became readable
    /// since the read comes after them.
    async fn hold(&self, conn: &mut PgConnection, found: &Self::Found) -> Result<Hold> {
        let after = found.last().map_or(self.after, |event| event.position);
        held_back(conn, self.filter, after).await
    }
}

/// Reads the global log under the horizon rule; a page that comes back short waits, at most
/// `max_wait`, for the transactions that were running when the read began and hold newer
/// events back.
pub(crate) async fn read_all_settled(
    pool: &PgPool,
    filter: &StreamFilter,
    after: Position,
    limit: usize,
    max_wait: Duration,
) -> Result<Vec<RecordedEvent>> {
    if limit == 0 {
        return Err(Error::InvalidInput(
            "a read limit must be at least 1".into(),
        ));
    }
    let read = VisibleRead {
        filter,
        after,
        limit,
    };
    let (events, _) = wait_out_horizon(pool, &read, max_wait, WaitFor::RunningAtStart).await?;
    Ok(events)
}

/// A subscription's page, and on every row whether events are held back beyond it.
struct PageRead<'a> {
    sql: String,
    filter: &'a StreamFilter,
    after: Position,
    limit: usize,
}

impl HorizonRead for PageRead<'_> {
    /// The events, and whether the last row saw events held back beyond the horizon.
    type Found = (Vec<RecordedEvent>, bool);

    async fn read(&self, conn: &mut PgConnection) -> Result<(Self::Found, bool)> {
        let query = sqlx::query_as::<_, PageRow>(&self.sql)
            .bind(to_i64(self.after.commit, "position")?)
            .bind(to_i64(self.after.sequence, "position")?);
        let query = match self.filter {
            StreamFilter::Category(category) => query.bind(category.as_str()),
            _ => query,
        };
        let mut rows = query.fetch(conn);
        let mut events = Vec::with_capacity(self.limit.min(PAGE_CAPACITY));
        let mut beyond = false;
        while let Some(row) = rows.try_next().await.map_err(from_sqlx)? {
            beyond = row.events_beyond;
            events.push(row.event.recorded()?);
        }
        // Events found: the rows told whether more wait beyond them. None: no row carried the
        // answer, and waiting may bring some.
        let found_some = !events.is_empty();
        Ok(((events, beyond), found_some))
    }

    /// Asked only after a read that found nothing, so from the read's own position.
    async fn hold(&self, conn: &mut PgConnection, _: &Self::Found) -> Result<Hold> {
        held_back(conn, self.filter, self.after).await
    }
}

/// A subscription's page: the safe events after `after`, and whether they reach the head.
/// A page that comes back short reaches the head unless committed events are held back
/// behind it (then the subscription reads again at once, and that read waits them out);
/// an empty page with events held back waits, up to `max_wait`, for the transactions
/// holding them, as their end may announce nothing.
pub(crate) async fn read_page_settled(
    pool: &PgPool,
    filter: &StreamFilter,
    after: Position,
    limit: usize,
    max_wait: Duration,
) -> Result<Page> {
    if limit == 0 {
        return Err(Error::InvalidInput(
            "a read limit must be at least 1".into(),
        ));
    }
    let read = PageRead {
        sql: page_sql(filter, limit),
        filter,
        after,
        limit,
    };
    let ((events, beyond), settled) = wait_out_horizon(pool, &read, max_wait, WaitFor::Any).await?;
    let at_head = match settled {
        Settled::Final => events.len() < limit && !beyond,
        Settled::Released => true,
        Settled::GaveUp | Settled::HeldByNewer => false,
    };
    Ok(Page::new(events, at_head))
}

/// The newest safe position, with what holds newer events back, in one statement.
///
/// Whether events lie beyond the horizon is the first of them in the `(tx_id, seq)` index, not
/// `EXISTS (…)`: planned generically, `tx_id >= horizon` is guessed to match a third of the
/// table, and `EXISTS` then scanned all of it whenever nothing lay beyond (most calls), so
/// every `head` read the whole log.
struct HeadRead;

impl HorizonRead for HeadRead {
    type Found = (Position, Hold);

    async fn read(&self, conn: &mut PgConnection) -> Result<(Self::Found, bool)> {
        let (tx_id, seq, events_beyond, xmin, xmax): (Option<i64>, Option<i64>, bool, i64, i64) =
            sqlx::query_as(&format!(
                "SELECT h.tx_id, h.seq, \
                   (SELECT tx_id FROM events WHERE tx_id >= {HORIZON} ORDER BY tx_id LIMIT 1) \
                     IS NOT NULL, \
                   pg_snapshot_xmin(pg_current_snapshot())::text::bigint, \
                   pg_snapshot_xmax(pg_current_snapshot())::text::bigint \
                 FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT tx_id, seq FROM events \
                   WHERE tx_id < {HORIZON} ORDER BY tx_id DESC, seq DESC LIMIT 1) AS h ON true"
            ))
            .fetch_one(conn)
            .await
            .map_err(from_sqlx)?;
        let head = Position::new(tx_id.map_or(0, to_u64), seq.map_or(0, to_u64));
        let hold = Hold {
            // The head and the hold are of one statement: nothing came below its horizon since.
            events_readable: false,
            events_beyond,
            xmin,
            xmax,
        };
        Ok(((head, hold), false))
    }

    /// Read with the head.
    async fn hold(&self, _: &mut PgConnection, &(_, hold): &Self::Found) -> Result<Hold> {
        Ok(hold)
    }
}

/// The newest safe position; while committed events are held back, waits up to `max_wait` for
/// the transactions that were running when it began and hold them.
pub(crate) async fn head(pool: &PgPool, max_wait: Duration) -> Result<Position> {
    let ((head, _), _) =
        wait_out_horizon(pool, &HeadRead, max_wait, WaitFor::RunningAtStart).await?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    //! The race between a read and its look at what holds it back, provoked deterministically:
    //! the holding transaction ends right after the read, before the look. Against the server
    //! the tests of this crate use (`es-test-services`).

    use es_core::testing::sample_event;
    use es_core::{EventStore, ExpectedVersion, StreamId};
    use sqlx::Transaction;
    use tokio::sync::Mutex;

    use super::*;
    use crate::{PgConfig, PgEventStore};

    /// Taken by each test here: one test's transactions would hold back another's events (the
    /// horizon is the server's), and these count reads.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

    /// What happens right after each try of a read, before the look at what holds it back.
    enum Then<'a> {
        /// The holder commits (after the first try only).
        HolderEnds(Mutex<Option<Transaction<'static, Postgres>>>),
        /// Another event is committed: a log that never stops.
        Commits(&'a PgEventStore),
    }

    /// `read`, with `then` after each of its tries, which it counts.
    struct AfterEachRead<'a, R> {
        read: R,
        then: Then<'a>,
        tries: std::sync::atomic::AtomicU64,
    }

    impl<'a, R> AfterEachRead<'a, R> {
        fn new(read: R, then: Then<'a>) -> Self {
            AfterEachRead {
                read,
                then,
                tries: std::sync::atomic::AtomicU64::new(0),
            }
        }
    }

    impl<R: HorizonRead> HorizonRead for AfterEachRead<'_, R> {
        type Found = R::Found;

        async fn read(&self, conn: &mut PgConnection) -> Result<(Self::Found, bool)> {
            let found = self.read.read(conn).await?;
            let n = self.tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match &self.then {
                Then::HolderEnds(holder) => {
                    if let Some(holder) = holder.lock().await.take() {
                        holder.commit().await.expect("the holder commits");
                    }
                }
                Then::Commits(store) => append(store, &format!("later-{n}"), 1).await,
            }
            Ok(found)
        }

        async fn hold(&self, conn: &mut PgConnection, found: &Self::Found) -> Result<Hold> {
            self.read.hold(conn, found).await
        }
    }

    /// The default settings in a fresh schema.
    fn config(prefix: &str) -> PgConfig {
        PgConfig::new(format!(
            "t_{prefix}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ))
    }

    /// A migrated store with `config`.
    async fn store_with(config: PgConfig) -> PgEventStore {
        let store = PgEventStore::connect(&es_test_services::database_url(), config)
            .await
            .expect("the test server");
        store.migrate().await.expect("migrations apply");
        store
    }

    /// A migrated store in a fresh schema.
    async fn store(prefix: &str) -> PgEventStore {
        store_with(config(prefix)).await
    }

    /// A transaction that has an id and writes nothing: it holds back the events of every
    /// transaction that got its id later.
    async fn holder(store: &PgEventStore) -> Transaction<'static, Postgres> {
        let mut holder = store.pool().begin().await.expect("a transaction");
        sqlx::query("SELECT pg_current_xact_id()")
            .execute(&mut *holder)
            .await
            .expect("a transaction id");
        holder
    }

    async fn append(store: &PgEventStore, stream: &str, n: u64) {
        let events = (0..n).map(|i| sample_event("Held", i)).collect();
        store
            .append(
                &StreamId::new(stream).unwrap(),
                ExpectedVersion::NoStream,
                events,
            )
            .await
            .expect("the append commits");
    }

    async fn drop_schema(store: &PgEventStore) {
        let schema = store.config().schema.clone();
        sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .execute(store.pool())
            .await
            .expect("drop the test schema");
        store.close().await;
    }

    /// Plans of the page read that the one connection of `pool` made for values and
    /// generically, from `pg_prepared_statements`.
    async fn page_read_plans(pool: &PgPool) -> (i64, i64) {
        sqlx::query_as(
            "SELECT coalesce(sum(custom_plans), 0)::bigint, coalesce(sum(generic_plans), 0)::bigint \
             FROM pg_prepared_statements WHERE statement LIKE '%IS NOT NULL FROM events%'",
        )
        .fetch_one(pool)
        .await
        .expect("the session's prepared statements")
    }

    /// On a log that grows between reads and is analyzed each time (as autovacuum does), a
    /// connection with PostgreSQL's default plan choice plans the page read for its values
    /// call after call: each `ANALYZE` raises the generic plan's estimate above the average of
    /// the plans made while the log was smaller. The page-read pool keeps the generic plan.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_page_read_keeps_one_plan_on_a_growing_log() {
        let _alone = ONE_AT_A_TIME.lock().await;
        let mut config = config("growing");
        config.max_connections = 1;
        config.page_read_connections = 1;
        let store = store_with(config).await;
        let filter = StreamFilter::category("growing");
        // Past every event: each read finds nothing, as a caught-up subscription does.
        let head = Position::new(1 << 40, 0);
        for round in 0..40 {
            append(&store, &format!("growing-{round}"), 300).await;
            sqlx::query("ANALYZE events")
                .execute(store.pool())
                .await
                .unwrap();
            for _ in 0..2 {
                read_page_settled(store.pool(), &filter, head, 1000, Duration::ZERO)
                    .await
                    .unwrap();
                store.read_page(&filter, head, 1000).await.unwrap();
            }
        }
        let (custom, _) = page_read_plans(store.pool()).await;
        assert!(
            custom > 20,
            "with the default plan choice the read is planned for its values again and again \
             ({custom} custom plans in 80 calls or more): the shape this test needs"
        );
        let (custom, generic) = page_read_plans(store.page_read_pool()).await;
        // At least 80 calls: a read that met events held back by another test's transaction
        // read again.
        assert!(
            custom == 0 && generic >= 80,
            "the page-read pool keeps the generic plan: {custom} custom plans, {generic} generic"
        );
        drop_schema(&store).await;
    }

    /// A `read_all` of the whole log from the start, as `read_all_settled` waits it out, with
    /// `then` after each try: the events, how the wait settled, and how many tries it took.
    async fn read_all_then(
        store: &PgEventStore,
        limit: usize,
        then: Then<'_>,
    ) -> (Vec<RecordedEvent>, Settled, u64) {
        let filter = StreamFilter::All;
        let read = AfterEachRead::new(
            VisibleRead {
                filter: &filter,
                after: Position::START,
                limit,
            },
            then,
        );
        let (events, settled) = wait_out_horizon(
            store.pool(),
            &read,
            Duration::from_secs(30),
            WaitFor::RunningAtStart,
        )
        .await
        .unwrap();
        let tries = read.tries.load(std::sync::atomic::Ordering::SeqCst);
        (events, settled, tries)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_empty_page_whose_holder_ends_before_the_look_is_read_again() {
        let _alone = ONE_AT_A_TIME.lock().await;
        let store = store("page_released").await;
        let holder = holder(&store).await;
        append(&store, "held-1", 3).await;
        let filter = StreamFilter::All;
        let read = AfterEachRead::new(
            PageRead {
                sql: page_sql(&filter, 10),
                filter: &filter,
                after: Position::START,
                limit: 10,
            },
            Then::HolderEnds(Mutex::new(Some(holder))),
        );
        let ((events, _), settled) =
            wait_out_horizon(store.pool(), &read, Duration::from_secs(30), WaitFor::Any)
                .await
                .unwrap();
        // Taken for the head, the empty first try left the subscription waiting for a wake-up
        // that the holder's end never sends.
        assert_eq!(
            (events.len(), settled),
            (3, Settled::Final),
            "the events the holder released are read, not an empty page at the head"
        );
        drop_schema(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_read_whose_holder_ends_before_the_look_is_read_again() {
        let _alone = ONE_AT_A_TIME.lock().await;
        let store = store("short_released").await;
        // Two events safe before the holder begins, three held back behind it.
        append(&store, "safe-1", 2).await;
        let holder = holder(&store).await;
        append(&store, "held-1", 3).await;
        let (events, settled, _) =
            read_all_then(&store, 10, Then::HolderEnds(Mutex::new(Some(holder)))).await;
        let streams: Vec<&str> = events.iter().map(|e| e.stream_id.as_str()).collect();
        assert_eq!(
            streams,
            ["safe-1", "safe-1", "held-1", "held-1", "held-1"],
            "read again after the two safe events, once the holder ended ({settled:?})"
        );
        assert_eq!(settled, Settled::Released);
        drop_schema(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_read_reads_again_once_not_for_every_later_commit() {
        let _alone = ONE_AT_A_TIME.lock().await;
        let store = store("short_chase").await;
        append(&store, "safe-1", 2).await;
        let (events, _, tries) = read_all_then(&store, 100, Then::Commits(&store)).await;
        // Twice (the second read finds the first later commit). A transaction of another test
        // binary may hold the log back for a moment, and the read then tries a few more times
        // while it waits; reading again for every commit would fill the page (99 tries).
        assert!(
            events.len() >= 2 && tries < 10,
            "read {tries} times for {} events: a short page is not filled commit by commit",
            events.len()
        );
        drop_schema(&store).await;
    }
}
