//! The in-process cache of folded aggregate state behind
//! [`Repository::with_cache`](crate::Repository::with_cache).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::stream::StreamId;

/// Counters of a [`Repository`](crate::Repository)'s aggregate cache, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AggregateCacheStats {
    /// How many streams the cache holds now.
    pub entries: usize,
    /// How many it holds at most.
    pub capacity: usize,
    /// Loads that started from a cached state (and read only the events after it).
    pub hits: u64,
    /// Loads that found nothing cached (and read a snapshot and the stream).
    pub misses: u64,
    /// Entries dropped to make room for others.
    pub evictions: u64,
}

struct Slot<A> {
    stream_id: StreamId,
    state: A,
    version: u64,
    /// Set on every use, cleared as the clock hand passes: an entry used since the hand last
    /// passed gets another round.
    referenced: bool,
}

struct Slots<A> {
    slots: Vec<Slot<A>>,
    index: HashMap<StreamId, usize>,
    hand: usize,
}

/// A bounded map from stream to `(state, version)`, evicting with the CLOCK algorithm (a cheap
/// approximation of least-recently-used: one bit per entry, no list to reorder on every hit).
///
/// Nothing here is trusted blindly: a load starts from the cached version and still reads the
/// stream's newer events, and an append still expects the version the decision was made on.
pub(crate) struct AggregateCache<A> {
    capacity: usize,
    clone: fn(&A) -> A,
    inner: Mutex<Slots<A>>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl<A> AggregateCache<A> {
    pub(crate) fn new(capacity: usize, clone: fn(&A) -> A) -> Self {
        AggregateCache {
            capacity,
            clone,
            inner: Mutex::new(Slots {
                slots: Vec::new(),
                index: HashMap::new(),
                hand: 0,
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots<A>> {
        // A panic while holding the lock leaves at worst a stale entry, which the tail read
        // and the version check make harmless: keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the cached state of `stream_id` and its version.
    pub(crate) fn get(&self, stream_id: &StreamId) -> Option<(A, u64)> {
        let mut inner = self.lock();
        let found = inner.index.get(stream_id).copied().map(|i| {
            let slot = &mut inner.slots[i];
            slot.referenced = true;
            ((self.clone)(&slot.state), slot.version)
        });
        drop(inner);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Stores `state` at `version` unless the cache holds the stream at `version` or newer
    /// (tasks sharing the cache finish in any order: the older result must not win).
    pub(crate) fn put(&self, stream_id: &StreamId, state: &A, version: u64) {
        if self.capacity == 0 || version == 0 {
            return;
        }
        let mut inner = self.lock();
        if let Some(&i) = inner.index.get(stream_id) {
            let slot = &mut inner.slots[i];
            if slot.version < version {
                slot.state = (self.clone)(state);
                slot.version = version;
            }
            slot.referenced = true;
            return;
        }
        let slot = Slot {
            stream_id: stream_id.clone(),
            state: (self.clone)(state),
            version,
            referenced: true,
        };
        if inner.slots.len() < self.capacity {
            let i = inner.slots.len();
            inner.slots.push(slot);
            inner.index.insert(stream_id.clone(), i);
            return;
        }
        // Full: the hand clears reference bits until it finds an entry not used since its
        // last pass (at most one full turn, after which every bit is clear).
        let victim = loop {
            let i = inner.hand;
            inner.hand = (i + 1) % self.capacity;
            if inner.slots[i].referenced {
                inner.slots[i].referenced = false;
            } else {
                break i;
            }
        };
        let old = std::mem::replace(&mut inner.slots[victim], slot);
        inner.index.remove(&old.stream_id);
        inner.index.insert(stream_id.clone(), victim);
        self.evictions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> AggregateCacheStats {
        AggregateCacheStats {
            entries: self.lock().slots.len(),
            capacity: self.capacity,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(id: &str) -> StreamId {
        StreamId::for_aggregate("c", id).unwrap()
    }

    #[test]
    fn keeps_the_newest_version_and_never_goes_back() {
        let cache = AggregateCache::<u64>::new(4, |v| *v);
        assert_eq!(cache.get(&s("a")), None);
        cache.put(&s("a"), &30, 3);
        cache.put(&s("a"), &20, 2);
        assert_eq!(
            cache.get(&s("a")),
            Some((30, 3)),
            "an older result is refused"
        );
        cache.put(&s("a"), &40, 4);
        assert_eq!(cache.get(&s("a")), Some((40, 4)));
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (2, 1, 1));
    }

    #[test]
    fn stays_within_capacity_and_evicts_what_was_not_used() {
        let cache = AggregateCache::<u64>::new(2, |v| *v);
        cache.put(&s("a"), &1, 1);
        cache.put(&s("b"), &2, 1);
        // Both were used since the hand last passed: a full turn clears both, then `a` goes.
        cache.put(&s("c"), &3, 1);
        assert_eq!(cache.stats().entries, 2);
        assert_eq!(cache.stats().evictions, 1);
        // `b` was passed over (its bit cleared) and not used since; `c` is new: `b` goes.
        cache.put(&s("d"), &4, 1);
        assert_eq!(cache.get(&s("a")), None);
        assert_eq!(
            cache.get(&s("b")),
            None,
            "the entry not used since the last pass goes"
        );
        assert_eq!(cache.get(&s("c")), Some((3, 1)), "the newer entry survives");
        assert_eq!(cache.get(&s("d")), Some((4, 1)));
        assert_eq!(cache.stats().entries, 2);
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let cache = AggregateCache::<u64>::new(0, |v| *v);
        cache.put(&s("a"), &1, 1);
        assert_eq!(cache.get(&s("a")), None);
    }
}
