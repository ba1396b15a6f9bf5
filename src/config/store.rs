//! `[store]`: where shared state lives, and the Redis address, whose
//! password is a secret.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use url::Url;

use super::human_duration;
use super::secret::REDACTED;

/// `[store]`: where remembered outcomes, claims and shared quotas live.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// `memory` (this process) or `redis` (shared by replicas).
    pub backend: StoreBackend,
    /// The Redis server, when `backend = "redis"`.
    pub redis_url: RedisUrl,
    /// Prefix of every key the gateway writes in Redis.
    pub key_prefix: String,
    /// Longest wait for one Redis command.
    #[serde(with = "human_duration")]
    pub timeout: Duration,
}

/// Where shared state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// In this process: one gateway.
    Memory,
    /// In a Redis (or Valkey) server shared by every replica.
    Redis,
}

/// A `redis://`, `rediss://` or `redis+unix://` URL; its password is never shown.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct RedisUrl(Url);

impl RedisUrl {
    /// The URL as configured, password included: for connecting only.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// The URL with its password (if any) replaced, for logs and output.
    pub fn redacted(&self) -> String {
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some(REDACTED));
        }
        shown.to_string()
    }
}

impl TryFrom<String> for RedisUrl {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        // The value may hold a password: say what is wrong, never what it is.
        let url = Url::parse(value.trim()).map_err(|error| format!("not a URL ({error})"))?;
        match url.scheme() {
            "redis" | "rediss" if url.host().is_some() => Ok(Self(url)),
            "redis" | "rediss" => Err("a host is required".to_owned()),
            "redis+unix" | "unix" if !url.path().is_empty() => Ok(Self(url)),
            "redis+unix" | "unix" => Err("a socket path is required".to_owned()),
            _ => Err("the scheme must be redis, rediss or redis+unix".to_owned()),
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.redacted())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Result<RedisUrl, String> {
        RedisUrl::try_from(text.to_owned())
    }

    #[test]
    fn the_three_schemes_are_accepted_and_others_refused() {
        for good in [
            "redis://127.0.0.1:6379",
            "rediss://redis.example:6380/0",
            "redis+unix:///run/redis/redis.sock",
        ] {
            assert!(url(good).is_ok(), "{good}");
        }
        assert_eq!(
            url("http://127.0.0.1:6379").unwrap_err(),
            "the scheme must be redis, rediss or redis+unix"
        );
        assert_eq!(url("redis://").unwrap_err(), "a host is required");
        assert!(url("not a url").unwrap_err().starts_with("not a URL"));
    }

    #[test]
    fn a_password_never_shows() {
        let secret = url("redis://gateway:hunter2@redis:6379/0").unwrap();
        for shown in [
            format!("{secret:?}"),
            secret.to_string(),
            serde_json::to_string(&secret).unwrap(),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(
                shown.contains("gateway:%3Credacted%3E@redis:6379"),
                "{shown}"
            );
        }
        assert!(secret.expose().contains("hunter2"));
        let error = url("redis://:hunter2@").unwrap_err();
        assert!(!error.contains("hunter2"), "{error}");
    }
}
