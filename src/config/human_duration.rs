//! Durations as human strings (`"15s"`), with errors that say how to write one.

use std::fmt;
use std::time::Duration;

use serde::{Deserializer, Serializer, de};

const HOW: &str = "write a number with a unit, as a string such as \"15s\", \"500ms\" or \"2m\"";

/// Writes `duration` as a human string that reads back the same (`"1m 30s"`).
pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_duration(*duration))
}

/// Reads a duration from a string with a unit; a bare number is refused with advice.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct Human;

    impl de::Visitor<'_> for Human {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a duration: {HOW}")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            humantime::parse_duration(text.trim())
                .map_err(|_| E::custom(format!("{text:?} is not a duration: {HOW}")))
        }

        fn visit_i64<E: de::Error>(self, number: i64) -> Result<Duration, E> {
            Err(E::custom(format!("{number} has no unit: {HOW}")))
        }

        fn visit_u64<E: de::Error>(self, number: u64) -> Result<Duration, E> {
            Err(E::custom(format!("{number} has no unit: {HOW}")))
        }

        fn visit_f64<E: de::Error>(self, number: f64) -> Result<Duration, E> {
            Err(E::custom(format!("{number} has no unit: {HOW}")))
        }
    }

    deserializer.deserialize_any(Human)
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;
    use crate::config::test_support::{env, invalid_key};

    #[test]
    fn bad_duration_names_its_key() {
        let err = Settings::load_from(None, env(&[("MPC_GATEWAY__UPSTREAM__TIMEOUT", "ten")]))
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("upstream.timeout"), "{message}");
        assert_eq!(invalid_key(err), "upstream.timeout");
    }

    #[test]
    fn durations_from_the_environment_get_the_same_advice() {
        let message = Settings::load_from(None, env(&[("MPC_GATEWAY__UPSTREAM__TIMEOUT", "15")]))
            .unwrap_err()
            .to_string();
        assert!(message.contains("`upstream.timeout`"), "{message}");
        assert!(message.contains("such as \"15s\""), "{message}");
    }
}
