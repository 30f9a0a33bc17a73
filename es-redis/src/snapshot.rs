//! [`RedisSnapshotStore`]: es-core's [`SnapshotStore`] as one Redis hash per stream.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use es_core::{Error, Result, Snapshot, SnapshotStore, StreamId};
use redis::Script;

use crate::connection::{ttl_millis, RedisConnection};
use crate::error::Corrupt;

/// The key space of snapshots: `{key_prefix}snap:{stream id}`.
const SPACE: &str = "snap";

/// Saves a snapshot unless the stored one is as new or newer. Versions travel as decimal
/// strings and are compared by length, then text: exact for every `u64`, where Lua's
/// doubles would round above 2^53. `ARGV[5]` is the TTL in milliseconds, 0 for none.
static SAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local stored = redis.call('HGET', KEYS[1], 'version')
if stored then
  local new = ARGV[1]
  if #stored > #new or (#stored == #new and stored >= new) then return 0 end
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'schema_version', ARGV[2], 'payload', ARGV[3], 'taken_at', ARGV[4])
if ARGV[5] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
else
  redis.call('PERSIST', KEYS[1])
end
return 1
",
    )
});

/// The stored fields, as `HMGET` returns them.
type Fields = (
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    Option<String>,
);

/// A [`SnapshotStore`] on Redis: the latest snapshot of each stream in one hash.
///
/// Saving compares versions inside a Lua script, so racing writers never move a stream's
/// snapshot backwards. Snapshots are derived data (the events are the truth), which makes
/// Redis a good home for them: [`with_ttl`](Self::with_ttl) lets unused ones expire, and
/// losing them all costs only slower loads until they are taken again.
///
/// ```no_run
/// # async fn demo() -> es_core::Result<()> {
/// use std::time::Duration;
/// use es_core::{Snapshot, SnapshotStore, StreamId};
/// use es_redis::{RedisConfig, RedisConnection, RedisSnapshotStore};
///
/// let redis = RedisConnection::connect(RedisConfig::default()).await?;
/// let snapshots = RedisSnapshotStore::new(redis).with_ttl(Duration::from_secs(7 * 24 * 3600));
/// let stream = StreamId::for_aggregate("order", "42")?;
/// snapshots
///     .save(Snapshot {
///         stream_id: stream.clone(),
///         version: 100,
///         schema_version: 1,
///         payload: br#"{"status":"Confirmed"}"#.to_vec().into(),
///         taken_at: chrono::Utc::now(),
///     })
///     .await?;
/// assert_eq!(snapshots.load(&stream).await?.map(|s| s.version), Some(100));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RedisSnapshotStore {
    redis: RedisConnection,
    ttl: Option<Duration>,
}

impl RedisSnapshotStore {
    /// A store on `redis`, its keys under the connection's key prefix, kept until deleted.
    pub fn new(redis: RedisConnection) -> Self {
        RedisSnapshotStore { redis, ttl: None }
    }

    /// Lets each snapshot expire `ttl` after it was last saved, so snapshots of streams that
    /// nobody loads any more stop taking memory.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The connection this store uses.
    pub fn connection(&self) -> &RedisConnection {
        &self.redis
    }

    /// The full Redis key that holds the snapshot of `stream_id`.
    pub fn redis_key(&self, stream_id: &StreamId) -> String {
        self.redis.key(SPACE, stream_id.as_str())
    }
}

#[async_trait]
impl SnapshotStore for RedisSnapshotStore {
    async fn save(&self, snapshot: Snapshot) -> Result<()> {
        let key = self.redis_key(&snapshot.stream_id);
        let taken_at = snapshot
            .taken_at
            .to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let ttl = self.ttl.map_or(0, ttl_millis);
        self.redis
            .run(|mut connection| async move {
                SAVE.key(&key)
                    .arg(snapshot.version.to_string())
                    .arg(snapshot.schema_version)
                    .arg(snapshot.payload.as_ref())
                    .arg(taken_at)
                    .arg(ttl)
                    .invoke_async::<()>(&mut connection)
                    .await
            })
            .await
    }

    async fn load(&self, stream_id: &StreamId) -> Result<Option<Snapshot>> {
        let key = self.redis_key(stream_id);
        let fields: Fields = self
            .redis
            .run(|mut connection| async move {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg(&["version", "schema_version", "payload", "taken_at"])
                    .query_async::<Fields>(&mut connection)
                    .await
            })
            .await?;
        decode(stream_id, fields)
    }

    async fn delete(&self, stream_id: &StreamId) -> Result<()> {
        let key = self.redis_key(stream_id);
        self.redis
            .run(|mut connection| async move {
                redis::cmd("UNLINK")
                    .arg(&key)
                    .query_async::<()>(&mut connection)
                    .await
            })
            .await
    }
}

/// Turns the stored fields back into a snapshot; a damaged record is a
/// [`Error::Serialization`], never a panic.
fn decode(stream_id: &StreamId, fields: Fields) -> Result<Option<Snapshot>> {
    let corrupt = |what: String| Error::serialization("snapshot", Corrupt(what));
    match fields {
        (None, None, None, None) => Ok(None),
        (Some(version), Some(schema_version), Some(payload), Some(taken_at)) => {
            let version = version.parse::<u64>().map_err(|_| {
                corrupt(format!(
                    "the snapshot of `{stream_id}` has version `{version}`"
                ))
            })?;
            let schema_version = schema_version.parse::<u32>().map_err(|_| {
                corrupt(format!(
                    "the snapshot of `{stream_id}` has schema version `{schema_version}`"
                ))
            })?;
            let taken_at = DateTime::parse_from_rfc3339(&taken_at)
                .map_err(|_| {
                    corrupt(format!(
                        "the snapshot of `{stream_id}` was taken at `{taken_at}`"
                    ))
                })?
                .with_timezone(&Utc);
            Ok(Some(Snapshot {
                stream_id: stream_id.clone(),
                version,
                schema_version,
                payload: Bytes::from(payload),
                taken_at,
            }))
        }
        _ => Err(corrupt(format!(
            "the snapshot of `{stream_id}` is missing fields"
        ))),
    }
}
