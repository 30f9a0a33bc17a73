//! Stored events as rows, and the rows as [`RecordedEvent`]s.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use es_core::{Error, Metadata, Position, RecordedEvent, Result, StreamId};
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};
use uuid::Uuid;

use crate::error::{to_u64, BACKEND};

/// The columns of an event, in the order [`EventRow`] decodes them.
pub(crate) const EVENT_COLUMNS: &str =
    "stream_id, event_id, stream_version, tx_id, seq, recorded_at, event_type, schema_version, \
     payload, metadata";

/// [`EVENT_COLUMNS`] without the stream: the columns of an event of a stream the reader names,
/// in the order [`StreamEventRow`] decodes them.
pub(crate) const STREAM_EVENT_COLUMNS: &str =
    "event_id, stream_version, tx_id, seq, recorded_at, event_type, schema_version, payload, \
     metadata";

/// How many columns [`EVENT_COLUMNS`] names: a statement's own columns follow them.
pub(crate) const EVENT_COLUMN_COUNT: usize = 10;

/// A row of [`EVENT_COLUMNS`]: one stored event of any stream.
pub(crate) struct EventRow {
    stream_id: String,
    event: StreamEventRow,
}

impl EventRow {
    /// The event the row holds.
    pub(crate) fn recorded(self) -> Result<RecordedEvent> {
        let stream_id = StreamId::new(self.stream_id).map_err(|e| Error::backend(BACKEND, e))?;
        self.event.recorded(stream_id)
    }
}

/// Decoded by position, not by name: a look-up by name costs each column of each row a hash,
/// and a catch-up decodes rows as fast as the server sends them.
impl<'r> FromRow<'r, PgRow> for EventRow {
    fn from_row(row: &'r PgRow) -> sqlx::Result<Self> {
        Ok(EventRow {
            stream_id: row.try_get(0)?,
            event: StreamEventRow::from_columns(row, 1)?,
        })
    }
}

/// A row of [`STREAM_EVENT_COLUMNS`]: one stored event of the stream the reader asked for.
pub(crate) struct StreamEventRow {
    event_id: Uuid,
    stream_version: i64,
    tx_id: i64,
    seq: i64,
    recorded_at: DateTime<Utc>,
    event_type: String,
    schema_version: i32,
    payload: Vec<u8>,
    metadata: Vec<u8>,
}

impl StreamEventRow {
    /// The row's columns from `first` on, in the order of [`STREAM_EVENT_COLUMNS`].
    fn from_columns(row: &PgRow, first: usize) -> sqlx::Result<Self> {
        Ok(StreamEventRow {
            event_id: row.try_get(first)?,
            stream_version: row.try_get(first + 1)?,
            tx_id: row.try_get(first + 2)?,
            seq: row.try_get(first + 3)?,
            recorded_at: row.try_get(first + 4)?,
            event_type: row.try_get(first + 5)?,
            schema_version: row.try_get(first + 6)?,
            payload: row.try_get(first + 7)?,
            metadata: row.try_get(first + 8)?,
        })
    }

    /// The event the row holds, in stream `stream_id`.
    pub(crate) fn recorded(self, stream_id: StreamId) -> Result<RecordedEvent> {
        Ok(RecordedEvent {
            event_id: self.event_id,
            stream_id,
            stream_version: to_u64(self.stream_version),
            position: Position::new(to_u64(self.tx_id), to_u64(self.seq)),
            recorded_at: self.recorded_at,
            event_type: self.event_type,
            schema_version: u32::try_from(self.schema_version).unwrap_or_default(),
            payload: Bytes::from(self.payload),
            metadata: Metadata::from_json(&self.metadata)?,
        })
    }
}

impl<'r> FromRow<'r, PgRow> for StreamEventRow {
    fn from_row(row: &'r PgRow) -> sqlx::Result<Self> {
        StreamEventRow::from_columns(row, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_row_is_the_stream_then_a_stream_event_row() {
        assert_eq!(
            EVENT_COLUMNS,
            format!("stream_id, {STREAM_EVENT_COLUMNS}"),
            "EventRow decodes the stream first, then the columns of StreamEventRow"
        );
        assert_eq!(EVENT_COLUMNS.split(',').count(), EVENT_COLUMN_COUNT);
    }
}
