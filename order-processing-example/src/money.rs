//! Money: exact decimals inside, JSON numbers with at most two decimals outside.
//!
//! Amounts are written as the exact text of the decimal (`999.99`, `10.50`) through
//! `serde_json`'s `RawValue`, and read back from the text of the JSON number, so neither way
//! goes through `f64` and no crate needs serde_json's `arbitrary_precision` mode (which would
//! change how every crate built beside the example parses numbers).

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{de, ser, Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// Rounds an amount to cents (half away from zero) with exactly two decimals.
pub fn to_cents(amount: Decimal) -> Decimal {
    let mut rounded = amount.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(2);
    rounded
}

/// Serializes an amount as a JSON number with two decimals (`999.99`, `10.50`), written as
/// the decimal's own text.
///
/// Into a `serde_json::Value` (as the event store's encoder makes) the number becomes an
/// `f64` whose shortest form is that same text for any amount of up to 15 digits, so it still
/// reads back exactly.
pub fn serialize<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
    let text = to_cents(*value).to_string();
    RawValue::from_string(text)
        .map_err(ser::Error::custom)?
        .serialize(serializer)
}

/// Reads an amount from the text of a JSON number (or of a numeric string), never through
/// `f64`.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    let raw = Box::<RawValue>::deserialize(deserializer)?;
    let text = raw.get();
    let parsed = if text.starts_with('"') {
        serde_json::from_str::<String>(text)
            .ok()
            .and_then(|inner| from_number_text(inner.trim()))
    } else {
        from_number_text(text)
    };
    parsed.ok_or_else(|| de::Error::custom(format!("`{text}` is not an amount of money")))
}

/// Parses the text of a JSON number exactly (`999.99`, `1e3`): `Some` when it is a decimal
/// that fits.
pub fn from_number_text(text: &str) -> Option<Decimal> {
    if text.contains(['e', 'E']) {
        Decimal::from_scientific(text).ok()
    } else {
        text.parse::<Decimal>().ok()
    }
}

/// Parses a `serde_json::Number` through its text: exact for integers and for decimals of up
/// to 15 digits (a `Number` holds other decimals as `f64`). Where client input must be exact,
/// use the number's own text ([`crate::http::ExactJson`]).
pub fn from_json_number(number: &serde_json::Number) -> Option<Decimal> {
    from_number_text(&number.to_string())
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

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Priced {
        #[serde(with = "crate::money")]
        amount: Decimal,
    }

    fn priced(text: &str) -> Priced {
        Priced {
            amount: text.parse().unwrap(),
        }
    }

    #[test]
    fn amounts_are_written_as_exact_numbers_with_two_decimals() {
        let sum = Decimal::new(1, 1) + Decimal::new(2, 1);
        let cases = [
            (Priced { amount: sum }, r#"{"amount":0.30}"#),
            (priced("999.99"), r#"{"amount":999.99}"#),
            (priced("1000000"), r#"{"amount":1000000.00}"#),
            (priced("10.5"), r#"{"amount":10.50}"#),
            (priced("0.005"), r#"{"amount":0.01}"#),
            (
                priced("12345678901234567.89"),
                r#"{"amount":12345678901234567.89}"#,
            ),
        ];
        for (value, json) in cases {
            assert_eq!(serde_json::to_string(&value).unwrap(), json);
        }
    }

    #[test]
    fn amounts_read_back_exactly_from_text_and_from_a_value() {
        for text in [
            "0.30",
            "999.99",
            "1000000.00",
            "0.1",
            "12345678901234567.89",
        ] {
            let json = format!(r#"{{"amount":{text}}}"#);
            let read: Priced = serde_json::from_str(&json).unwrap();
            assert_eq!(read, priced(text), "{text}");
            // Twice round: written, read, written again, with nothing lost.
            let again: Priced =
                serde_json::from_str(&serde_json::to_string(&read).unwrap()).unwrap();
            assert_eq!(again, priced(text), "{text}");
        }
        // Past f64's 15 to 17 digits the text still reads exactly.
        let long: Priced = serde_json::from_str(r#"{"amount":0.10000000000000000001}"#).unwrap();
        assert_eq!(long, priced("0.10000000000000000001"));
        // Through a `Value`, as the event store's encoder and upcasters go.
        let value = serde_json::to_value(priced("999.99")).unwrap();
        assert_eq!(
            serde_json::from_value::<Priced>(value).unwrap(),
            priced("999.99")
        );
        let value = serde_json::to_value(priced("1000000.00")).unwrap();
        assert_eq!(
            serde_json::from_value::<Priced>(value).unwrap(),
            priced("1000000")
        );
        // A numeric string, as before; anything else is an error, not a panic.
        let quoted: Priced = serde_json::from_str(r#"{"amount":"12.50"}"#).unwrap();
        assert_eq!(quoted, priced("12.50"));
        assert!(serde_json::from_str::<Priced>(r#"{"amount":"twelve"}"#).is_err());
        assert!(serde_json::from_str::<Priced>(r#"{"amount":true}"#).is_err());
        assert!(serde_json::from_str::<Priced>(r#"{"amount":1e400}"#).is_err());
    }

    #[test]
    fn json_numbers_parse_exactly() {
        let n: serde_json::Number = serde_json::from_str("999.99").unwrap();
        assert_eq!(from_json_number(&n), Some(Decimal::new(99999, 2)));
        let n: serde_json::Number = serde_json::from_str("1e3").unwrap();
        assert_eq!(from_json_number(&n), Some(Decimal::new(1000, 0)));
    }
}
