//! The `[log]` section's values: the line format and the level filter.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Human-readable lines.
    Pretty,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "json" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            other => Err(format!(
                "{other:?} is not a log format: use \"json\" or \"pretty\""
            )),
        }
    }
}

/// A tracing filter whose bare words are all real level names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LogLevel(String);

impl LogLevel {
    /// The filter directives, ready for `EnvFilter`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for LogLevel {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        for directive in value.split(',').map(str::trim) {
            // A bare word that is no level would silently become a module name.
            if !directive.contains('=')
                && tracing_subscriber::filter::LevelFilter::from_str(directive).is_err()
            {
                return Err(format!(
                    "{directive:?} is not a level (trace, debug, info, warn, error, off) \
                     or a `module=level` directive"
                ));
            }
        }
        tracing_subscriber::EnvFilter::builder()
            .parse(&value)
            .map_err(|e| format!("{value:?} is not a valid filter: {e}"))?;
        Ok(Self(value))
    }
}

impl From<LogLevel> for String {
    fn from(level: LogLevel) -> Self {
        level.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_level_accepts_directives() {
        assert!(LogLevel::try_from("debug".to_owned()).is_ok());
        assert!(LogLevel::try_from("info,awc=warn".to_owned()).is_ok());
        assert!(LogLevel::try_from("loud".to_owned()).is_err());
    }
}
