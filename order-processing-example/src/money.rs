//! Money: exact decimals inside, JSON numbers with at most two decimals outside.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserializer, Serializer};

/// Rounds an amount to cents (half away from zero) with exactly two decimals.
pub fn to_cents(amount: Decimal) -> Decimal {
    let mut rounded = amount.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(2);
    rounded
}

/// Serializes an amount as a JSON number with two decimals (`999.99`, `10.50`).
pub fn serialize<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
    rust_decimal::serde::arbitrary_precision::serialize(&to_cents(*value), serializer)
}

/// Reads an amount from a JSON number (or a numeric string) without going through `f64`.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    rust_decimal::serde::arbitrary_precision::deserialize(deserializer)
}

/// Parses a JSON number exactly: `Some` when it is a finite decimal.
pub fn from_json_number(number: &serde_json::Number) -> Option<Decimal> {
    let text = number.to_string();
    if text.contains(['e', 'E']) {
        Decimal::from_scientific(&text).ok()
    } else {
        text.parse::<Decimal>().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_round_to_cents() {
        assert_eq!(to_cents(Decimal::new(99999, 2)).to_string(), "999.99");
        assert_eq!(to_cents(Decimal::new(105, 1)).to_string(), "10.50");
        assert_eq!(to_cents(Decimal::new(1005, 3)).to_string(), "1.01");
    }

    #[test]
    fn json_numbers_parse_exactly() {
        let n: serde_json::Number = serde_json::from_str("999.99").unwrap();
        assert_eq!(from_json_number(&n), Some(Decimal::new(99999, 2)));
        let n: serde_json::Number = serde_json::from_str("1e3").unwrap();
        assert_eq!(from_json_number(&n), Some(Decimal::new(1000, 0)));
    }
}
