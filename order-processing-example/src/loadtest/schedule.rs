//! Open-loop arrivals: when each order is due, fixed by the rate alone.
//!
//! Order `i` is due at `i / rate` seconds after the start, computed from the start every time
//! (never by adding an interval to the previous send), so rounding and late wake-ups never
//! accumulate into drift. A latency is measured from the due time, not from the moment the
//! request actually left: a system that stalls makes the requests behind it late, and that
//! lateness is part of their latency (no coordinated omission, as in wrk2 and k6's
//! constant-arrival-rate).

use std::time::Duration;

/// A constant arrival rate over a fixed duration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    rate: f64,
    total: usize,
}

impl Schedule {
    /// `rate` orders per second for `duration`; `None` for a rate that is not a positive
    /// finite number.
    pub fn new(rate: f64, duration: Duration) -> Option<Schedule> {
        if !rate.is_finite() || rate <= 0.0 {
            return None;
        }
        // Orders due strictly before the end: at 50/s for 3 s, 0 ms … 2980 ms, 150 in all.
        let exact = rate * duration.as_secs_f64();
        let total = (exact - 1e-9).ceil().max(0.0) as usize;
        Some(Schedule { rate, total })
    }

    /// How many orders the schedule places.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The arrival rate, orders per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// When order `i` (from 0) is due, counted from the start.
    pub fn due(&self, i: usize) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_are_evenly_spaced_from_the_start() {
        let schedule = Schedule::new(50.0, Duration::from_secs(3)).expect("a valid rate");
        assert_eq!(schedule.total(), 150);
        assert_eq!(schedule.due(0), Duration::ZERO);
        assert_eq!(schedule.due(1), Duration::from_millis(20));
        assert_eq!(schedule.due(149), Duration::from_millis(2980));
        for i in 1..schedule.total() {
            let gap = schedule.due(i) - schedule.due(i - 1);
            let off = gap.as_secs_f64() - 0.02;
            assert!(off.abs() < 1e-6, "gap {gap:?} between {} and {i}", i - 1);
        }
    }

    #[test]
    fn a_long_schedule_does_not_drift() {
        // 1/3 of a second has no exact binary form: adding it up a million times drifts,
        // computing each due time from the start does not.
        let schedule = Schedule::new(3.0, Duration::from_secs(400_000)).expect("a valid rate");
        assert_eq!(schedule.total(), 1_200_000);
        let last = schedule.due(1_200_000 - 1).as_secs_f64();
        assert!(
            (last - (399_999.0 + 2.0 / 3.0)).abs() < 1e-6,
            "last due at {last}"
        );
        let mut added = Duration::ZERO;
        for _ in 0..1_200_000 - 1 {
            added += Duration::from_secs_f64(1.0 / 3.0);
        }
        assert!(
            (added.as_secs_f64() - last).abs() > 1e-4,
            "adding intervals drifts ({added:?}), which is why due times are computed"
        );
        assert_eq!(schedule.due(900_000), Duration::from_secs(300_000));
    }

    #[test]
    fn a_rate_must_be_positive() {
        assert_eq!(Schedule::new(0.0, Duration::from_secs(1)), None);
        assert_eq!(Schedule::new(-1.0, Duration::from_secs(1)), None);
        assert_eq!(Schedule::new(f64::NAN, Duration::from_secs(1)), None);
        let fractional = Schedule::new(2.5, Duration::from_secs(1)).expect("a valid rate");
        assert_eq!(fractional.total(), 3, "due at 0, 400 and 800 ms");
    }
}
