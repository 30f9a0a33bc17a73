//! Statements PostgreSQL plans once per connection rather than once per call.
//!
//! The store's statements are prepared, and PostgreSQL chooses for each call between a plan
//! made for the call's values (a custom plan) and one made once for any values (the generic
//! plan): after five custom plans it keeps the generic one only while that one's estimated
//! cost is no higher than the custom plans' average. For a few hot statements the values
//! decide the estimate but not the plan: a subscription's page read near the head is estimated
//! at a row or two (its generic plan at a guessed third of the category), a batch of one or two
//! streams at one or two lateral probes (the generic plan at ten). So PostgreSQL planned those
//! on nearly every call, for the same index scans each time: about 0.25 ms a plan against
//! 0.03 ms to run the page read, and 4 ms of planning an order at a steady 50 orders/s in the
//! example (`pg_stat_statements` with `track_planning`), where PostgreSQL spent 17–18 ms. With
//! one plan per connection its CPU an order fell by a tenth.
//!
//! [`opaque`] hides a parameter from the planner: an uncorrelated scalar subquery is an
//! InitPlan, computed once when the statement runs, so a custom plan sees no more of its value
//! than the generic plan does. Their estimates are then the same, PostgreSQL keeps the generic
//! plan from the sixth call on, and the value still drives the index scan (an InitPlan's result
//! is a run-time index key).
//!
//! A limit is better written into the statement than hidden: an unknown limit is guessed at a
//! tenth of the rows, which on a large table could favour reading all of it and sorting.
//!
//! Only for statements whose best plan does not depend on the values: the index of a page read
//! is the one for any position, a probe per stream is the plan for any number of streams.
//! Never for a statement where a value changes the plan (a range that may cover the table).

/// `parameter` (`$1`, `$2::text[]`) as a value the planner does not look at: the same plan
/// for any value, and PostgreSQL keeps it (see the module's documentation).
pub(crate) fn opaque(parameter: &str) -> String {
    format!("(SELECT {parameter})")
}
