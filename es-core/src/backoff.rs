//! [`Backoff`]: the one way this workspace waits before trying again.

use std::time::Duration;

use crate::bus::RetryPolicy;

/// Exponential backoff with jitter, for a loop that retries until it succeeds: each wait is
/// drawn at random between half and all of a ceiling that starts at `initial` and doubles after
/// each failure up to `max`; [`reset`](Self::reset) after a success starts over.
///
/// The jitter is [`RetryPolicy::jittered_backoff`]'s, so that retries of a bus message, a
/// relay, a projection and a reconnect all spread out the same way: many workers that failed
/// together (a broker or database restart) do not come back together, and no wait shrinks to
/// nothing.
///
/// ```
/// use std::time::Duration;
/// use es_core::Backoff;
///
/// let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
/// let first = backoff.next_delay();
/// assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
/// for _ in 0..10 {
///     assert!(backoff.next_delay() <= Duration::from_secs(1)); // never past `max`
/// }
/// backoff.reset(); // after a success
/// assert!(backoff.next_delay() <= Duration::from_millis(100));
/// ```
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    /// Failures since the last reset.
    failures: u32,
}

impl Backoff {
    /// Waits from about `initial` (at least half of it), doubling up to `max`. A `max` below
    /// `initial` is taken as `initial`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            policy: RetryPolicy {
                max_attempts: u32::MAX,
                initial_backoff: initial,
                max_backoff: max.max(initial),
            },
            failures: 0,
        }
    }

    /// The waits of `policy` (its attempt bound is not used: a `Backoff` never gives up).
    pub fn from_policy(policy: RetryPolicy) -> Self {
        Backoff::new(policy.initial_backoff, policy.max_backoff)
    }

    /// The wait after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.policy.jittered_backoff(self.failures)
    }

    /// Sleeps for [`next_delay`](Self::next_delay).
    pub async fn sleep(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Starts over from `initial`, after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// How many waits were handed out since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_the_cap_with_jitter_and_start_over_after_a_reset() {
        let (initial, max) = (Duration::from_millis(10), Duration::from_millis(80));
        let mut backoff = Backoff::new(initial, max);
        let ceilings = [10, 20, 40, 80, 80, 80].map(Duration::from_millis);
        for ceiling in ceilings {
            let wait = backoff.next_delay();
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "{wait:?} for {ceiling:?}"
            );
        }
        assert_eq!(backoff.failures(), 6);
        backoff.reset();
        assert!(backoff.next_delay() <= initial);
    }

    #[test]
    fn waits_are_spread_not_equal() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
            seen.insert(backoff.next_delay());
        }
        assert!(seen.len() > 1, "twenty fresh backoffs all waited the same");
    }

    #[test]
    fn a_cap_below_the_start_is_the_start() {
        let mut backoff = Backoff::new(Duration::from_millis(40), Duration::from_millis(1));
        for _ in 0..5 {
            assert!(backoff.next_delay() <= Duration::from_millis(40));
        }
    }
}
