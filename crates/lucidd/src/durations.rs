//! Ollama's `keep_alive`: a number of seconds, or a Go duration string; negative means forever.

use serde_json::Value;
use std::time::Duration;

/// How long a model stays loaded after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Unload as soon as the request ends.
    UnloadNow,
    /// Unload after this long without use.
    For(Duration),
    /// Never unload.
    Forever,
}

/// The longest finite keep-alive; anything longer means forever (and "forever" is shown as an
/// expiry this far away).
pub const MAX_FINITE: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Ollama's default, `OLLAMA_KEEP_ALIVE` unset.
pub const DEFAULT_KEEP_ALIVE: KeepAlive = KeepAlive::For(Duration::from_secs(300));

impl KeepAlive {
    /// Parses a request's `keep_alive` value.
    pub fn from_json(value: &Value) -> Result<Self, String> {
        match value {
            Value::Number(n) => {
                let secs = n.as_f64().ok_or("keep_alive is not a number")?;
                Ok(Self::from_seconds(secs))
            }
            Value::String(s) => parse_go_duration(s).map(Self::from_seconds),
            Value::Null => Ok(DEFAULT_KEEP_ALIVE),
            _ => {
                Err("keep_alive must be a number of seconds or a duration string like \"5m\""
                    .into())
            }
        }
    }

    /// A hundred years or more (or not a number) is forever: no later arithmetic on a
    /// client's duration can overflow.
    fn from_seconds(secs: f64) -> Self {
        if secs < 0.0 || secs.is_nan() || secs >= MAX_FINITE.as_secs_f64() {
            Self::Forever
        } else if secs == 0.0 {
            Self::UnloadNow
        } else {
            Self::For(Duration::from_secs_f64(secs))
        }
    }
}

/// Parses Go's `time.ParseDuration` syntax (`"300ms"`, `"1h30m"`, `"-1m"`) into seconds.
/// A bare number other than 0 has no unit and is refused, as Go does.
pub fn parse_go_duration(text: &str) -> Result<f64, String> {
    let err = || {
        format!(
            "invalid duration {text:?}: use a number of seconds or a duration like \"5m\", \"1h30m\", \"300ms\""
        )
    };
    let (sign, mut rest) = match text.strip_prefix('-') {
        Some(r) => (-1.0, r),
        None => (1.0, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(0.0);
    }
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(err)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| err())?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Ok(sign * total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_strings_and_negatives() {
        assert_eq!(KeepAlive::from_json(&json!(0)), Ok(KeepAlive::UnloadNow));
        assert_eq!(
            KeepAlive::from_json(&json!(1800)),
            Ok(KeepAlive::For(Duration::from_secs(1800)))
        );
        assert_eq!(
            KeepAlive::from_json(&json!(1.5)),
            Ok(KeepAlive::For(Duration::from_millis(1500)))
        );
        assert_eq!(KeepAlive::from_json(&json!(-1)), Ok(KeepAlive::Forever));
        assert_eq!(
            KeepAlive::from_json(&json!("10m")),
            Ok(KeepAlive::For(Duration::from_secs(600)))
        );
        assert_eq!(
            KeepAlive::from_json(&json!("1h30m")),
            Ok(KeepAlive::For(Duration::from_secs(5400)))
        );
        assert_eq!(
            KeepAlive::from_json(&json!("300ms")),
            Ok(KeepAlive::For(Duration::from_millis(300)))
        );
        assert_eq!(KeepAlive::from_json(&json!("-1m")), Ok(KeepAlive::Forever));
        assert_eq!(KeepAlive::from_json(&json!("0")), Ok(KeepAlive::UnloadNow));
        assert_eq!(KeepAlive::from_json(&Value::Null), Ok(DEFAULT_KEEP_ALIVE));
    }

    /// Durations no clock can reach are forever, not an overflow (a panic here once poisoned
    /// the loaded-models lock and disabled inference).
    #[test]
    fn huge_durations_are_forever() {
        for huge in [json!("99999999999999h"), json!(1e12), json!(1e308), json!("1e308s")] {
            let parsed = KeepAlive::from_json(&huge);
            assert!(matches!(parsed, Ok(KeepAlive::Forever) | Err(_)), "{huge}: {parsed:?}");
        }
        assert_eq!(KeepAlive::from_json(&json!(1e12)), Ok(KeepAlive::Forever));
    }

    #[test]
    fn malformed_durations_are_refused() {
        for bad in [
            json!("abc"),
            json!("300"),
            json!("5x"),
            json!(""),
            json!("m"),
            json!(true),
            json!([1]),
        ] {
            assert!(KeepAlive::from_json(&bad).is_err(), "accepted {bad}");
        }
    }
}
