//! The values evidence carries: yes/no answers, coded answers and numbers.
//!
//! Numbers are fixed-point with three decimals ([`Decimal`]), so that weights such as 0.04,
//! a cut-off of 0.33 and a ratio of 2.5 persons per room compare exactly and every replica
//! computes the same sums.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A number with at most three decimals, stored in thousandths.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Decimal(i64);

impl Decimal {
    /// Zero.
    pub const ZERO: Decimal = Decimal(0);
    /// One.
    pub const ONE: Decimal = Decimal(1000);

    /// The number `n`.
    pub fn from_int(n: i64) -> Option<Decimal> {
        n.checked_mul(1000).map(Decimal)
    }

    /// The number `t` / 1000.
    pub fn from_thousandths(t: i64) -> Decimal {
        Decimal(t)
    }

    /// Thousandths.
    pub fn thousandths(self) -> i64 {
        self.0
    }

    /// A float with at most three decimals (`0.33`, `2.5`); more precision is refused rather
    /// than rounded.
    pub fn from_f64(x: f64) -> Result<Decimal, String> {
        if !x.is_finite() {
            return Err(format!("{x} is not a finite number"));
        }
        let scaled = x * 1000.0;
        let rounded = scaled.round();
        if (scaled - rounded).abs() > 1e-6 * rounded.abs().max(1.0) {
            return Err(format!("{x} has more than 3 decimals"));
        }
        if rounded.abs() > 9.0e15 {
            return Err(format!("{x} is too large"));
        }
        Ok(Decimal(rounded as i64))
    }

    /// Checked sum.
    pub fn checked_add(self, other: Decimal) -> Option<Decimal> {
        self.0.checked_add(other.0).map(Decimal)
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let (int, frac) = (abs / 1000, abs % 1000);
        if frac == 0 {
            write!(f, "{sign}{int}")
        } else {
            let frac = format!("{frac:03}");
            write!(f, "{sign}{int}.{}", frac.trim_end_matches('0'))
        }
    }
}

impl fmt::Debug for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Decimal({self})")
    }
}

impl Serialize for Decimal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 % 1000 == 0 {
            s.serialize_i64(self.0 / 1000)
        } else {
            s.serialize_f64(self.0 as f64 / 1000.0)
        }
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => Ok(n),
            other => Err(serde::de::Error::custom(format!(
                "expected a number, got {other}"
            ))),
        }
    }
}

/// A value of an evidence item: a yes/no answer, a number, or a coded answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    /// Yes or no.
    Bool(bool),
    /// A number (at most three decimals).
    Number(Decimal),
    /// A coded answer (`attends`, `earth`, `ALCANZADO`).
    Text(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Number(n) => write!(f, "{n}"),
            Value::Text(t) => write!(f, "{t:?}"),
        }
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_owned())
    }
}

impl From<Decimal> for Value {
    fn from(n: Decimal) -> Self {
        Value::Number(n)
    }
}

impl Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Number(n) => n.serialize(s),
            Value::Text(t) => s.serialize_str(t),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, a number or a string")
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Value, E> {
                Ok(Value::Bool(b))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Value, E> {
                Decimal::from_int(n)
                    .map(Value::Number)
                    .ok_or_else(|| E::custom(format!("{n} is too large")))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Value, E> {
                i64::try_from(n)
                    .ok()
                    .and_then(Decimal::from_int)
                    .map(Value::Number)
                    .ok_or_else(|| E::custom(format!("{n} is too large")))
            }
            fn visit_f64<E: serde::de::Error>(self, x: f64) -> Result<Value, E> {
                Decimal::from_f64(x).map(Value::Number).map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Value, E> {
                Ok(Value::Text(s.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_read_and_print_exactly() {
        type Case<'a> = (&'a str, Result<(i64, &'a str), &'a str>);
        let cases: &[Case<'_>] = &[
            ("0.33", Ok((330, "0.33"))),
            ("0.04", Ok((40, "0.04"))),
            ("2.5", Ok((2500, "2.5"))),
            ("227220", Ok((227_220_000, "227220"))),
            ("-1.25", Ok((-1250, "-1.25"))),
            ("2.3333", Err("2.3333 has more than 3 decimals")),
        ];
        for (text, expected) in cases {
            let got = toml::from_str::<toml::Value>(&format!("x = {text}"))
                .unwrap()
                .get("x")
                .cloned()
                .unwrap()
                .try_into::<Decimal>()
                .map(|d| (d.thousandths(), d.to_string()))
                .map_err(|e| e.to_string());
            match (got, expected) {
                (Ok(g), Ok((t, s))) => assert_eq!(g, (*t, (*s).to_owned()), "{text}"),
                (Err(g), Err(e)) => assert!(g.contains(e), "{text}: {g}"),
                (g, e) => panic!("{text}: got {g:?}, expected {e:?}"),
            }
        }
        // Weights of the IPM sum to one exactly (docs/sources.md#dnp-ipm-2011).
        let w = |x: f64| Decimal::from_f64(x).unwrap();
        let sum = [0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.1, 0.1, 0.1, 0.1]
            .into_iter()
            .chain([0.04; 5])
            .map(w)
            .try_fold(Decimal::ZERO, Decimal::checked_add);
        assert_eq!(sum, Some(Decimal::ONE));
    }

    #[test]
    fn values_round_trip_through_json() {
        for (json, value) in [
            ("true", Value::Bool(true)),
            ("3", Value::Number(Decimal::from_int(3).unwrap())),
            ("2.5", Value::Number(Decimal::from_thousandths(2500))),
            ("\"attends\"", Value::from("attends")),
        ] {
            let v: Value = serde_json::from_str(json).unwrap();
            assert_eq!(v, value, "{json}");
            assert_eq!(serde_json::to_string(&v).unwrap(), json);
        }
    }
}
