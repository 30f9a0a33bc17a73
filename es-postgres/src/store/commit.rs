//! The commit of a unit of work: its inbox entries, appends, inline projections and checkpoint
//! in one transaction, or one statement when a single append is all there is (with, for a
//! consumer's message, its inbox entry).
//! [`EventStore::commit`](es_core::EventStore::commit) and [`PgEventStore::commit_with`] share
//! the transaction; the second runs the application's own writes in it too.

use std::future::Future;
use std::pin::Pin;

use es_core::{
    AppendResult, BoxError, CommitOutcome, Error, EventStore, NewEvent, Result, UnitOfWork,
};
use sqlx::PgConnection;

use super::append::{append_records_entry, appends_combine, Failure};
use super::checkpoints::save_checkpoint;
use super::inbox::record_entries;
use super::inline::apply_inline;
use super::PgEventStore;
use crate::error::{from_sqlx, from_user};

/// Work that runs in a commit's transaction after the appends, on the transaction's connection
/// and with the appends' results.
type Work<'w, T> = Box<
    dyn for<'c> FnOnce(
            &'c mut PgConnection,
            &'c [AppendResult],
        ) -> Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'c>>
        + Send
        + 'w,
>;

impl PgEventStore {
    /// [`EventStore::commit`]: a single append with no inline projection reading it is one
    /// statement, and so is a single append pinned to a version with one inbox entry (a
    /// consumer handling one message); anything else is the shared transaction.
    pub(super) async fn commit_unit(&self, unit: UnitOfWork) -> Result<CommitOutcome> {
        let started = std::time::Instant::now();
        unit.validate()?;
        if unit.inbox.is_empty() && unit.checkpoint.is_none() && unit.appends.is_empty() {
            return Ok(CommitOutcome::Committed(Vec::new()));
        }
        let one_statement = unit.checkpoint.is_none()
            && ((unit.inbox.is_empty() && unit.appends.len() == 1)
                || append_records_entry(&unit.appends, &unit.inbox))
            && self.inline_projections_for(&unit.appends).is_empty();
        if one_statement {
            // The common cases need no explicit transaction: a single append, or a consumer's
            // message on one stream (the append and its inbox entry), is one statement, atomic
            // on its own: one round trip.
            let entry = unit.inbox.into_iter().next();
            let Some(append) = unit.appends.into_iter().next() else {
                return Ok(CommitOutcome::Committed(Vec::new()));
            };
            let mut conn = self.inner.pool.acquire().await.map_err(from_sqlx)?;
            let written = match &entry {
                None => self.append_on(&mut conn, append, false).await.map(Some),
                Some(entry) => self.append_recording(&mut conn, append, entry).await,
            };
            // The connection goes back before a conflict's version is read on another.
            drop(conn);
            let appended = match written {
                Ok(Some(appended)) => appended,
                Ok(None) => return Ok(CommitOutcome::AlreadyHandled),
                Err(failure) => return Err(self.failure_error(failure).await),
            };
            match entry {
                None => crate::telemetry::store().append(started.elapsed()),
                Some(_) => crate::telemetry::store().commit(started.elapsed()),
            }
            let results = vec![appended.result];
            self.announce(&results);
            return Ok(CommitOutcome::Committed(results));
        }
        let nothing_more: Work<'_, ()> = Box::new(|_, _| Box::pin(async { Ok(()) }));
        let outcome = self.commit_transaction(unit, nothing_more).await?;
        if let CommitOutcome::Committed(_) = outcome {
            crate::telemetry::store().commit(started.elapsed());
        }
        Ok(match outcome {
            CommitOutcome::Committed((results, ())) => CommitOutcome::Committed(results),
            CommitOutcome::AlreadyHandled => CommitOutcome::AlreadyHandled,
        })
    }

    /// Commits `unit` and, in the same transaction, runs `work` on the transaction's connection
    /// after the appends (whose results it receives): the application's own writes commit with
    /// the events, the inbox entry and the checkpoint, or nothing does.
    ///
    /// Answers, as [`EventStore::commit`] does, [`CommitOutcome::Committed`], here with the
    /// append results and `work`'s value, or [`CommitOutcome::AlreadyHandled`] when the
    /// unit's inbox entry was already there: then nothing was written and `work` did not run. An error from `work` rolls everything back; an `es_core::Error`
    /// or `sqlx::Error` it returns comes back mapped like the store's own errors.
    ///
    /// ```no_run
    /// # async fn example(store: es_postgres::PgEventStore, unit: es_core::UnitOfWork) -> es_core::Result<()> {
    /// use es_core::CommitOutcome;
    ///
    /// let outcome = store
    ///     .commit_with(unit, |conn, results| {
    ///         let version = results[0].next_expected_version as i64;
    ///         Box::pin(async move {
    ///             sqlx::query("UPDATE order_summary SET version = $1")
    ///                 .bind(version)
    ///                 .execute(&mut *conn)
    ///                 .await?;
    ///             Ok(())
    ///         })
    ///     })
    ///     .await?;
    /// if let CommitOutcome::Committed((results, ())) = outcome {
    ///     println!("order summary at version {}", results[0].next_expected_version);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn commit_with<T, F>(
        &self,
        unit: UnitOfWork,
        work: F,
    ) -> Result<CommitOutcome<(Vec<AppendResult>, T)>>
    where
        F: for<'c> FnOnce(
                &'c mut PgConnection,
                &'c [AppendResult],
            )
                -> Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'c>>
            + Send,
        T: Send,
    {
        unit.validate()?;
        self.commit_transaction(unit, Box::new(work)).await
    }

    /// The transaction of a validated `unit`: everything of the unit, then `work`, then the
    /// commit and the announcement. Already handled when the unit's inbox entry was there:
    /// then the transaction is rolled back and `work` does not run.
    async fn commit_transaction<T: Send>(
        &self,
        unit: UnitOfWork,
        work: Work<'_, T>,
    ) -> Result<CommitOutcome<(Vec<AppendResult>, T)>> {
        let mut tx = self.inner.pool.begin().await.map_err(from_sqlx)?;
        let outcome = match self.commit_in(&mut tx, unit).await {
            Ok(outcome) => outcome,
            Err(failure) => {
                // End the transaction first: its connection goes back to the pool.
                let _ = tx.rollback().await;
                return Err(self.failure_error(failure).await);
            }
        };
        let Some(results) = outcome else {
            tx.rollback().await.map_err(from_sqlx)?;
            return Ok(CommitOutcome::AlreadyHandled);
        };
        let value = work(&mut tx, &results).await.map_err(from_user)?;
        tx.commit().await.map_err(from_sqlx)?;
        self.announce(&results);
        Ok(CommitOutcome::Committed((results, value)))
    }

    /// The error to return for a failure; a taken version is read now, after the failed
    /// transaction has ended and given its connection back.
    async fn failure_error(&self, failure: Failure) -> Error {
        match failure {
            Failure::Error(error) => error,
            // The stream that fails its expectation now is the one whose version was taken.
            Failure::VersionTaken { streams } => {
                let mut first = None;
                for (stream_id, expected) in &streams {
                    match self.stream_version(stream_id).await {
                        Ok(actual) if !expected.is_met_by(actual) => {
                            return expected.conflict(stream_id, actual)
                        }
                        Ok(actual) => {
                            first.get_or_insert_with(|| expected.conflict(stream_id, actual));
                        }
                        Err(error) => return error,
                    }
                }
                first.unwrap_or_else(|| {
                    Error::backend(
                        crate::error::BACKEND,
                        "a version was taken, but of no stream",
                    )
                })
            }
        }
    }

    /// Everything of `unit` inside an open transaction; `None` when its inbox entry was there.
    async fn commit_in(
        &self,
        conn: &mut PgConnection,
        unit: UnitOfWork,
    ) -> Result<Option<Vec<AppendResult>>, Failure> {
        if !record_entries(&mut *conn, &unit.inbox).await? {
            return Ok(None);
        }
        if unit.appends.len() > 1 {
            // Take the streams' locks in one order, so two units touching the same streams in
            // opposite orders wait for each other instead of deadlocking on the versions.
            let mut streams: Vec<&str> =
                unit.appends.iter().map(|a| a.stream_id.as_str()).collect();
            streams.sort_unstable();
            sqlx::query(
                "SELECT pg_advisory_xact_lock(hashtextextended('es-stream:' || s, 0)) \
                 FROM UNNEST($1::text[]) AS s",
            )
            .bind(&streams)
            .execute(&mut *conn)
            .await
            .map_err(from_sqlx)?;
        }
        let inline = self.inline_projections_for(&unit.appends);
        // The inline projections need the events as recorded; keep them (cheap: `Bytes`).
        let written: Vec<Vec<NewEvent>> = if inline.is_empty() {
            Vec::new()
        } else {
            unit.appends.iter().map(|a| a.events.clone()).collect()
        };
        let mut results = Vec::with_capacity(unit.appends.len());
        let mut recorded_at = None;
        // Several streams at pinned versions: one statement for all of them.
        let appended = if appends_combine(&unit.appends) {
            self.append_many_on(&mut *conn, unit.appends).await?
        } else {
            let mut appended = Vec::with_capacity(unit.appends.len());
            for append in unit.appends {
                appended.push(self.append_on(&mut *conn, append, true).await?);
            }
            appended
        };
        for appended in appended {
            recorded_at = recorded_at.or(appended.recorded_at);
            results.push(appended.result);
        }
        if let Some(recorded_at) = recorded_at.filter(|_| !inline.is_empty()) {
            apply_inline(&mut *conn, &inline, &results, written, recorded_at).await?;
        }
        if let Some((name, position)) = unit.checkpoint {
            save_checkpoint(&mut *conn, &name, position).await?;
        }
        Ok(Some(results))
    }
}
