//! Reads of one stream, or several, by version.

use bytes::Bytes;
use es_core::{RecordedEvent, ReplayedEvent, Result, StreamId};
use sqlx::{PgConnection, PgPool};

use super::row::{StreamEventRow, STREAM_EVENT_COLUMNS};
use crate::error::{from_sqlx, to_i64, to_u64};

/// The stream's version now (`None`: no stream): its newest event's.
pub(crate) async fn stream_version(
    conn: &mut PgConnection,
    stream_id: &StreamId,
) -> Result<Option<u64>> {
    Ok(sqlx::query_scalar::<_, Option<i64>>(
        "SELECT max(stream_version) FROM events WHERE stream_id = $1",
    )
    .bind(stream_id.as_str())
    .fetch_one(&mut *conn)
    .await
    .map_err(from_sqlx)?
    .map(to_u64))
}

/// The events of `stream_id` from version `from_version` on, at most `limit`.
pub(crate) async fn read_stream(
    pool: &PgPool,
    stream_id: &StreamId,
    from_version: u64,
    limit: usize,
) -> Result<Vec<RecordedEvent>> {
    let from = to_i64(from_version.max(1), "stream version")?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows: Vec<StreamEventRow> = sqlx::query_as(&format!(
        "SELECT {STREAM_EVENT_COLUMNS} FROM events \
         WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version LIMIT $3"
    ))
    .bind(stream_id.as_str())
    .bind(from)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(from_sqlx)?;
    rows.into_iter()
        .map(|row| row.recorded(stream_id.clone()))
        .collect()
}

/// What folding `stream_id` from version `from_version` on needs, at most `limit` events: no
/// ids, positions, times or metadata to send and decode.
pub(crate) async fn replay_stream(
    pool: &PgPool,
    stream_id: &StreamId,
    from_version: u64,
    limit: usize,
) -> Result<Vec<ReplayedEvent>> {
    let from = to_i64(from_version.max(1), "stream version")?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows: Vec<(i64, String, i32, Vec<u8>)> = sqlx::query_as(
        "SELECT stream_version, event_type, schema_version, payload FROM events \
         WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version LIMIT $3",
    )
    .bind(stream_id.as_str())
    .bind(from)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(from_sqlx)?;
    Ok(rows
        .into_iter()
        .map(|(version, event_type, schema, payload)| ReplayedEvent {
            stream_version: to_u64(version),
            event_type,
            schema_version: u32::try_from(schema).unwrap_or_default(),
            payload: Bytes::from(payload),
        })
        .collect())
}

/// Replays several streams with one round trip: the requests go as two arrays, and a lateral
/// join reads each stream from its version with the limit per stream, through the same
/// `(stream_id, stream_version)` index a single replay uses.
pub(crate) async fn replay_streams(
    pool: &PgPool,
    requests: &[(StreamId, u64)],
    limit: usize,
) -> Result<Vec<Vec<ReplayedEvent>>> {
    let mut answers = vec![Vec::new(); requests.len()];
    if requests.is_empty() || limit == 0 {
        return Ok(answers);
    }
    let streams: Vec<&str> = requests.iter().map(|(s, _)| s.as_str()).collect();
    let froms = requests
        .iter()
        .map(|(_, from)| to_i64((*from).max(1), "stream version"))
        .collect::<Result<Vec<_>>>()?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // The arrays are opaque (scalar subqueries, see `crate::plan`): planned for their lengths,
    // the statement was planned on every call, for the same probe per stream.
    let sql = "SELECT r.ord, e.stream_version, e.event_type, e.schema_version, e.payload \
         FROM unnest((SELECT $1::text[]), (SELECT $2::bigint[])) \
           WITH ORDINALITY AS r(stream_id, from_version, ord) \
         CROSS JOIN LATERAL (SELECT stream_version, event_type, schema_version, payload \
           FROM events WHERE stream_id = r.stream_id AND stream_version >= r.from_version \
           ORDER BY stream_version LIMIT $3) AS e \
         ORDER BY r.ord, e.stream_version";
    let rows: Vec<(i64, i64, String, i32, Vec<u8>)> = sqlx::query_as(sql)
        .bind(&streams)
        .bind(&froms)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(from_sqlx)?;
    for (ord, version, event_type, schema, payload) in rows {
        // `WITH ORDINALITY` counts from 1, in the order of the arrays.
        let Some(answer) = usize::try_from(ord - 1)
            .ok()
            .and_then(|i| answers.get_mut(i))
        else {
            continue;
        };
        answer.push(ReplayedEvent {
            stream_version: to_u64(version),
            event_type,
            schema_version: u32::try_from(schema).unwrap_or_default(),
            payload: Bytes::from(payload),
        });
    }
    Ok(answers)
}
