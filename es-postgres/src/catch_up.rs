//! Catch-up by streaming: a subscription far behind the head reads what is already safe to
//! hand out in one streaming query instead of page by page.
//!
//! Page by page, the server and the client take turns: the server finds a page while the
//! client waits, then the client decodes it while the server waits. One streaming query keeps
//! both busy at once. The query is driven by the consumer's own polls (no task of its own: on a
//! machine with few cores a third busy thread only adds switching) and hands rows over in
//! batches through a small bounded channel, so a slow consumer holds the query back instead of
//! filling memory. Once the stream reaches the horizon (or fails), the subscription goes on as
//! a polling one from the last event it delivered.
//!
//! Each stream holds a pool connection while its consumer works through the rows, and the
//! consumers need connections of the same pool (a relay saves its checkpoint, a projection
//! writes its read model). So at most half the pool (beside the listener's connection) streams
//! at once; a subscription that finds no permit free reads page by page instead.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use es_core::{EventSubscription, Position, RecordedEvent, Result, StreamFilter};
use futures_util::{stream, StreamExt};
use sqlx::PgPool;

use tokio::sync::{mpsc, Semaphore};

use crate::error::from_sqlx;
use crate::log::{visible_query, visible_sql, EventRow};

/// Rows handed to the consumer at once.
///
/// Small on purpose. The query runs only while the consumer polls, and while the consumer
/// works through what was handed over, nobody reads the socket. With 1,280 rows handed over
/// at once (256 a batch, 4 ahead), the server could fill the socket buffer long before the
/// consumer came back, sit idle, and leave the consumer waiting for rows not yet sent. With at
/// most 128 rows in hand the socket drains every few dozen events and the server keeps
/// producing while the consumer works, as it does for a plain streaming query.
const BATCH: usize = 64;
/// Batches read ahead of the consumer.
const BATCHES_AHEAD: usize = 1;

/// A subscription that streams what is safe after `after`, then continues with `live` from the
/// last event it delivered.
pub(crate) fn subscription(
    pool: PgPool,
    permits: Arc<Semaphore>,
    rows_per_query: usize,
    filter: StreamFilter,
    after: Position,
    live: impl FnOnce(Position) -> EventSubscription + Send + 'static,
) -> EventSubscription {
    let (sender, receiver) = mpsc::channel(BATCHES_AHEAD);
    let producer: Producer = Box::pin(async move {
        // With every permit taken, page by page from the start: a stream would hold one more
        // connection that the consumers may need.
        if let Ok(_permit) = permits.try_acquire_owned() {
            stream_safe(pool, rows_per_query, filter, after, sender).await;
        }
    });
    let state = State {
        last: after,
        phase: Phase::CatchingUp {
            receiver,
            producer: Some(producer),
            buffer: VecDeque::new(),
            live: Box::new(live),
        },
    };
    Box::pin(stream::unfold(state, |mut state| async move {
        loop {
            match state.phase {
                Phase::CatchingUp {
                    ref mut receiver,
                    ref mut producer,
                    ref mut buffer,
                    ..
                } => {
                    if let Some(event) = buffer.pop_front() {
                        state.last = event.position;
                        return Some((Ok(event), state));
                    }
                    // Drive the query until it hands over a batch; once it has ended, what it
                    // sent is still in the channel, and then the channel closes.
                    let next = match producer {
                        Some(running) => tokio::select! {
                            biased;
                            next = receiver.recv() => next,
                            () = running => {
                                *producer = None;
                                receiver.recv().await
                            }
                        },
                        None => receiver.recv().await,
                    };
                    match next {
                        Some(Ok(batch)) => buffer.extend(batch),
                        Some(Err(error)) => {
                            state.go_live();
                            return Some((Err(error), state));
                        }
                        None => state.go_live(),
                    }
                }
                Phase::Live(ref mut live) => {
                    return live.next().await.map(|item| (item, state));
                }
                Phase::Switching => unreachable!("the phase is never left switching"),
            }
        }
    }))
}

type Live = Box<dyn FnOnce(Position) -> EventSubscription + Send>;
type Producer = Pin<Box<dyn Future<Output = ()> + Send>>;

struct State {
    /// The last event delivered.
    last: Position,
    phase: Phase,
}

enum Phase {
    CatchingUp {
        receiver: mpsc::Receiver<Result<Vec<RecordedEvent>>>,
        /// The streaming query, until it ends.
        producer: Option<Producer>,
        buffer: VecDeque<RecordedEvent>,
        live: Live,
    },
    Live(EventSubscription),
    Switching,
}

impl State {
    fn go_live(&mut self) {
        if let Phase::CatchingUp { live, .. } = std::mem::replace(&mut self.phase, Phase::Switching)
        {
            self.phase = Phase::Live(live(self.last));
        }
    }
}

/// Streams the safe events after `after` to `sender` in batches, one query of at most
/// `rows_per_query` rows after another, until a query comes back short (the horizon is
/// reached), a read fails (the error is the last thing sent), or the receiver is gone.
async fn stream_safe(
    pool: PgPool,
    rows_per_query: usize,
    filter: StreamFilter,
    mut after: Position,
    sender: mpsc::Sender<Result<Vec<RecordedEvent>>>,
) {
    let sql = visible_sql(&filter);
    loop {
        let query = match visible_query::<EventRow>(&sql, &filter, after, rows_per_query) {
            Ok(query) => query,
            Err(error) => {
                let _ = sender.send(Err(error)).await;
                return;
            }
        };
        let mut rows = query.fetch(&pool);
        let mut read = 0;
        let mut batch = Vec::with_capacity(BATCH);
        while let Some(row) = rows.next().await {
            match row.map_err(from_sqlx).and_then(EventRow::recorded) {
                Ok(event) => {
                    after = event.position;
                    read += 1;
                    batch.push(event);
                    if batch.len() == BATCH {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                        if sender.send(Ok(full)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(error) => {
                    if !batch.is_empty() && sender.send(Ok(batch)).await.is_err() {
                        return;
                    }
                    let _ = sender.send(Err(error)).await;
                    return;
                }
            }
        }
        drop(rows);
        if !batch.is_empty() && sender.send(Ok(batch)).await.is_err() {
            return;
        }
        if read < rows_per_query {
            return;
        }
    }
}
