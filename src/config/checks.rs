//! Rules that span keys, or that the serde types alone cannot say.

use std::collections::HashSet;

use super::{ConfigError, DEFAULT_TIER, Settings};

impl Settings {
    /// Rules that span keys or that serde types cannot say.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let upstream = &self.upstream;
        if !matches!(upstream.base_url.scheme(), "http" | "https") {
            return Err(ConfigError::invalid(
                "upstream.base_url",
                "the scheme must be http or https",
            ));
        }
        if upstream.base_url.host().is_none() {
            return Err(ConfigError::invalid(
                "upstream.base_url",
                "a host is required",
            ));
        }
        if upstream.base_url.query().is_some() || upstream.base_url.fragment().is_some() {
            return Err(ConfigError::invalid(
                "upstream.base_url",
                "must not carry a query or fragment",
            ));
        }
        if !upstream.path.starts_with('/') {
            return Err(ConfigError::invalid("upstream.path", "must start with '/'"));
        }
        if upstream.connect_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "upstream.connect_timeout",
                "must be longer than 0s",
            ));
        }
        if upstream.timeout.is_zero() {
            return Err(ConfigError::invalid(
                "upstream.timeout",
                "must be longer than 0s",
            ));
        }
        if self.store.timeout.is_zero() {
            return Err(ConfigError::invalid(
                "store.timeout",
                "must be longer than 0s",
            ));
        }
        if self.store.key_prefix.is_empty() {
            return Err(ConfigError::invalid(
                "store.key_prefix",
                "must not be empty: the gateway's keys must be told apart from others",
            ));
        }
        for (key, ttl) in [
            ("upstream.breaker_open_for", upstream.breaker_open_for),
            ("upstream.default_pause", upstream.default_pause),
            ("upstream.max_pause", upstream.max_pause),
            ("dedup.sent_ttl", self.dedup.sent_ttl),
            ("dedup.rejected_ttl", self.dedup.rejected_ttl),
            ("dedup.uncertain_ttl", self.dedup.uncertain_ttl),
        ] {
            if ttl.is_zero() {
                return Err(ConfigError::invalid(key, "must be longer than 0s"));
            }
        }
        if upstream.connect_timeout > upstream.timeout {
            return Err(ConfigError::invalid(
                "upstream.connect_timeout",
                format!(
                    "{} is longer than upstream.timeout ({}): connecting is part of the \
                     whole call, so raise upstream.timeout or lower upstream.connect_timeout",
                    humantime::format_duration(upstream.connect_timeout),
                    humantime::format_duration(upstream.timeout),
                ),
            ));
        }
        if upstream.default_pause > upstream.max_pause {
            return Err(ConfigError::invalid(
                "upstream.default_pause",
                format!(
                    "{} is longer than upstream.max_pause ({}), the longest pause",
                    humantime::format_duration(upstream.default_pause),
                    humantime::format_duration(upstream.max_pause),
                ),
            ));
        }
        let user_agent = upstream.user_agent();
        if user_agent.is_empty()
            || actix_web::http::header::HeaderValue::from_str(&user_agent).is_err()
        {
            return Err(ConfigError::invalid(
                "upstream.user_agent",
                "must be a non-empty, printable ASCII header value",
            ));
        }
        self.check_auth()
    }

    fn check_auth(&self) -> Result<(), ConfigError> {
        let tiers = &self.quota.tiers;
        if !tiers.contains_key(DEFAULT_TIER) {
            return Err(ConfigError::invalid(
                "quota.tiers",
                "a tier named \"default\" is required",
            ));
        }
        let mut digests = HashSet::new();
        for (index, key) in self.auth.keys.iter().enumerate() {
            if key.user.trim().is_empty() || key.user.chars().any(char::is_control) {
                return Err(ConfigError::invalid(
                    &format!("auth.keys[{index}].user"),
                    "must be a non-empty name without control characters",
                ));
            }
            if !tiers.contains_key(&key.tier) {
                return Err(ConfigError::invalid(
                    &format!("auth.keys[{index}].tier"),
                    format!("{:?} is not a tier in quota.tiers", key.tier),
                ));
            }
            if key.scopes.is_empty() {
                return Err(ConfigError::invalid(
                    &format!("auth.keys[{index}].scopes"),
                    "must name at least one of \"status\" and \"retrieve\" (omit it for both)",
                ));
            }
            if !digests.insert(key.sha256) {
                return Err(ConfigError::invalid(
                    &format!("auth.keys[{index}].sha256"),
                    "the same digest is configured twice",
                ));
            }
        }
        for (user, tier) in &self.quota.users {
            if !tiers.contains_key(tier) {
                return Err(ConfigError::invalid(
                    &format!("quota.users.{user}"),
                    format!("{tier:?} is not a tier in quota.tiers"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{DIGEST, env, file, invalid_key};

    #[test]
    fn auth_mistakes_name_their_keys() {
        let cases = [
            (
                format!("[[auth.keys]]\nuser = \"a\"\nsha256 = \"{DIGEST}\"\ntier = \"gold\"\n"),
                "auth.keys[0].tier",
            ),
            (
                format!(
                    "[[auth.keys]]\nuser = \"a\"\nsha256 = \"{DIGEST}\"\n\
                     [[auth.keys]]\nuser = \"b\"\nsha256 = \"{DIGEST}\"\n"
                ),
                "auth.keys[1].sha256",
            ),
            (
                format!("[[auth.keys]]\nuser = \"\"\nsha256 = \"{DIGEST}\"\n"),
                "auth.keys[0].user",
            ),
            (
                format!("[[auth.keys]]\nuser = \"a\"\nsha256 = \"{DIGEST}\"\nscopes = []\n"),
                "auth.keys[0].scopes",
            ),
            (
                format!(
                    "[[auth.keys]]\nuser = \"a\"\nsha256 = \"{DIGEST}\"\nscopes = [\"admin\"]\n"
                ),
                "auth.keys[0].scopes[0]",
            ),
            ("[quota.users]\nalice = \"gold\"\n".to_owned(), "quota.users.alice"),
            ("[auth]\ntrusted_proxies = [\"10.0.0.0/33\"]\n".to_owned(), "auth.trusted_proxies[0]"),
            ("[auth]\ntrusted_user_header = \"bad header\"\n".to_owned(), "auth.trusted_user_header"),
            (
                "[quota.tiers.ops]\nrequests_per_minute = 0\nupstream_per_hour = 1\nupstream_burst = 1\n"
                    .to_owned(),
                "quota.tiers.ops.requests_per_minute",
            ),
            (
                "[quota.tiers.ops]\nrequests_per_minute = 1\nupstream_per_hour = 1\n".to_owned(),
                "quota.tiers.ops",
            ),
        ];
        for (contents, key) in cases {
            let f = file(&contents);
            let err = Settings::load_from(Some(f.path()), env(&[])).unwrap_err();
            assert_eq!(invalid_key(err), key, "{contents}");
        }
    }

    #[test]
    fn key_scopes_default_to_both_and_load_as_named() {
        use crate::config::KeyScope;
        let f = file(&format!(
            "[[auth.keys]]\nuser = \"a\"\nsha256 = \"{DIGEST}\"\n\
             [[auth.keys]]\nuser = \"b\"\nsha256 = \"{}\"\nscopes = [\"status\"]\n",
            "0".repeat(64)
        ));
        let settings = Settings::load_from(Some(f.path()), env(&[])).unwrap();
        assert_eq!(settings.auth.keys[0].scopes, KeyScope::ALL);
        assert_eq!(settings.auth.keys[1].scopes, [KeyScope::Status]);
        let rendered = settings.to_toml();
        assert!(rendered.contains("scopes = [\"status\"]"), "{rendered}");
        assert_eq!(settings.server.max_batch_labels.get(), 100);
        assert_eq!(settings.server.max_batch_body_bytes(), 12_800);
    }
}
