//! Reading the settings: embedded defaults, then a file, then environment
//! variables, through the `config` crate; errors name the offending key.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};

use super::Settings;

/// The defaults, compiled in so the binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Prefix of the environment variables that override settings.
pub const ENV_PREFIX: &str = "MPC_GATEWAY";

/// Why the settings could not be loaded; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or is not TOML.
    #[error("cannot read configuration: {0}")]
    Source(#[from] config::ConfigError),
    /// The file named by `--config` cannot be a configuration file.
    #[error("cannot read configuration file {}: {message}", path.display())]
    File {
        /// The path given.
        path: PathBuf,
        /// Why it cannot be read.
        message: String,
    },
    /// A key holds a value of the wrong shape, or is unknown.
    #[error("invalid configuration at `{key}`: {message}")]
    Invalid {
        /// Dotted path of the offending key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    pub(super) fn invalid(key: &str, message: impl fmt::Display) -> Self {
        Self::Invalid {
            key: key.to_owned(),
            message: message.to_string(),
        }
    }
}
impl Settings {
    /// Loads defaults, then `file`, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, None)
    }

    /// Loads defaults, then `file`, then `env` (the process environment when `None`).
    pub fn load_from(
        file: Option<&Path>,
        env: Option<HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = file {
            if path.is_dir() {
                return Err(ConfigError::File {
                    path: path.to_owned(),
                    message: "it is a directory, not a TOML file".to_owned(),
                });
            }
            builder = builder.add_source(File::from(path).format(FileFormat::Toml));
        }
        let environment = Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .source(env);
        let merged = builder.add_source(environment).build()?;

        let settings: Settings = serde_path_to_error::deserialize(merged).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::invalid(&key, describe(e.into_inner()))
        })?;
        settings.check()?;
        Ok(settings)
    }
}

/// The error without the key the config crate appends (ours names it first),
/// but with where the value came from.
fn describe(error: config::ConfigError) -> String {
    use config::ConfigError as E;
    match error {
        E::At {
            error,
            origin: Some(origin),
            ..
        } => format!("{} (from {origin})", describe(*error)),
        E::At { error, .. } => describe(*error),
        E::Type {
            origin,
            unexpected,
            expected,
            ..
        } => {
            let text = format!("invalid type: {unexpected}, expected {expected}");
            match origin {
                Some(origin) => format!("{text} (from {origin})"),
                None => text,
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::LogFormat;
    use crate::config::test_support::{DIGEST, env, file, invalid_key};

    #[test]
    fn embedded_defaults_load() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.upstream.timeout, Duration::from_secs(15));
        assert_eq!(s.upstream.default_pause, Duration::from_secs(60));
        assert_eq!(s.upstream.max_pause, Duration::from_secs(3600));
        assert_eq!(s.log.format, LogFormat::Pretty);
        assert!(s.listens_on_loopback());
        assert_eq!(
            s.upstream.retrieve_url().as_str(),
            "https://data.minorplanetcenter.net/api/action-codes/retrieve"
        );
        assert_eq!(
            s.upstream.user_agent(),
            concat!("mpc-action-gateway/", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn env_overrides_file_which_overrides_defaults() {
        let f = file("[upstream]\ntimeout = \"3s\"\nconnect_timeout = \"2s\"\n");
        let s = Settings::load_from(
            Some(f.path()),
            env(&[("MPC_GATEWAY__UPSTREAM__TIMEOUT", "7s")]),
        )
        .unwrap();
        assert_eq!(s.upstream.timeout, Duration::from_secs(7), "env wins");
        assert_eq!(
            s.upstream.connect_timeout,
            Duration::from_secs(2),
            "file wins over defaults"
        );
        assert_eq!(
            s.server.max_body_bytes.get(),
            4096,
            "defaults fill the rest"
        );
    }

    #[test]
    fn numbers_from_env_parse() {
        let s = Settings::load_from(None, env(&[("MPC_GATEWAY__SERVER__MAX_BODY_BYTES", "512")]))
            .unwrap();
        assert_eq!(s.server.max_body_bytes.get(), 512);
    }

    #[test]
    fn bad_values_name_their_keys() {
        let cases = [
            (
                "MPC_GATEWAY__SERVER__LISTEN",
                "not-an-address",
                "server.listen",
            ),
            (
                "MPC_GATEWAY__SERVER__MAX_BODY_BYTES",
                "0",
                "server.max_body_bytes",
            ),
            (
                "MPC_GATEWAY__SERVER__MAX_CONNECTIONS",
                "0",
                "server.max_connections",
            ),
            (
                "MPC_GATEWAY__SERVER__MAX_BATCH_LABELS",
                "0",
                "server.max_batch_labels",
            ),
            (
                "MPC_GATEWAY__SERVER__MAX_BATCH_LABELS",
                "many",
                "server.max_batch_labels",
            ),
            (
                "MPC_GATEWAY__UPSTREAM__BASE_URL",
                "ftp://example.org",
                "upstream.base_url",
            ),
            (
                "MPC_GATEWAY__UPSTREAM__BASE_URL",
                "not a url",
                "upstream.base_url",
            ),
            ("MPC_GATEWAY__UPSTREAM__PATH", "api", "upstream.path"),
            ("MPC_GATEWAY__UPSTREAM__TIMEOUT", "0s", "upstream.timeout"),
            (
                "MPC_GATEWAY__UPSTREAM__CONNECT_TIMEOUT",
                "1m",
                "upstream.connect_timeout",
            ),
            ("MPC_GATEWAY__LOG__FORMAT", "xml", "log.format"),
            ("MPC_GATEWAY__DEDUP__SENT_TTL", "0s", "dedup.sent_ttl"),
            ("MPC_GATEWAY__DEDUP__MAX_ENTRIES", "0", "dedup.max_entries"),
            (
                "MPC_GATEWAY__UPSTREAM__MAX_CONCURRENT",
                "0",
                "upstream.max_concurrent",
            ),
            (
                "MPC_GATEWAY__UPSTREAM__BREAKER_FAILURES",
                "none",
                "upstream.breaker_failures",
            ),
            (
                "MPC_GATEWAY__UPSTREAM__BREAKER_OPEN_FOR",
                "0s",
                "upstream.breaker_open_for",
            ),
            (
                "MPC_GATEWAY__UPSTREAM__DEFAULT_PAUSE",
                "0s",
                "upstream.default_pause",
            ),
            (
                "MPC_GATEWAY__UPSTREAM__DEFAULT_PAUSE",
                "2h",
                "upstream.default_pause",
            ),
            (
                "MPC_GATEWAY__UPSTREAM__MAX_PAUSE",
                "0s",
                "upstream.max_pause",
            ),
            (
                "MPC_GATEWAY__UPSTREAM__MAX_PAUSE",
                "soon",
                "upstream.max_pause",
            ),
            (
                "MPC_GATEWAY__ADMIN__TOKEN_SHA256",
                "abc",
                "admin.token_sha256",
            ),
            ("MPC_GATEWAY__LOG__LEVEL", "inof", "log.level"),
        ];
        for (var, value, key) in cases {
            let err = Settings::load_from(None, env(&[(var, value)])).unwrap_err();
            assert_eq!(invalid_key(err), key, "{var}={value}");
        }
    }

    fn message_of(toml: &str) -> String {
        let f = file(toml);
        Settings::load_from(Some(f.path()), env(&[]))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_say_what_a_valid_value_looks_like() {
        let cases = [
            (
                "[log]\nformat = \"text\"\n",
                &[
                    "`log.format`",
                    "\"text\" is not a log format",
                    "\"json\" or \"pretty\"",
                ][..],
            ),
            (
                "[upstream]\ntimeout = 15\n",
                &["`upstream.timeout`", "15 has no unit", "such as \"15s\""],
            ),
            (
                "[upstream]\ntimeout = \"15\"\n",
                &[
                    "`upstream.timeout`",
                    "\"15\" is not a duration",
                    "such as \"15s\"",
                ],
            ),
            (
                "[dedup]\nsent_ttl = \"an hour\"\n",
                &["`dedup.sent_ttl`", "\"an hour\" is not a duration"],
            ),
            (
                "[server]\nlisten = \"localhost:8080\"\n",
                &[
                    "`server.listen`",
                    "\"localhost:8080\" is not an IP address and port",
                    "\"127.0.0.1:8080\"",
                ],
            ),
            (
                "[admin]\nlisten = \"8081\"\n",
                &["`admin.listen`", "is not an IP address and port"],
            ),
            (
                "[upstream]\ntimeout = \"1.5s\"\n",
                &[
                    "`upstream.connect_timeout`",
                    "5s is longer than upstream.timeout (1s 500ms)",
                    "raise upstream.timeout or lower upstream.connect_timeout",
                ],
            ),
        ];
        for (toml, expected) in cases {
            let message = message_of(toml);
            for part in expected {
                assert!(message.contains(part), "{toml:?}: {message}");
            }
        }
    }

    #[test]
    fn a_directory_given_as_the_config_file_is_named_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let message = Settings::load_from(Some(dir.path()), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        assert!(
            message.contains("is a directory, not a TOML file"),
            "{message}"
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let f = file("[server]\nlisten_addr = \"127.0.0.1:1\"\n");
        let message = Settings::load_from(Some(f.path()), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(message.contains("listen_addr"), "{message}");

        let message = Settings::load_from(None, env(&[("MPC_GATEWAY__UPSTREAM__TIMEOUTS", "1s")]))
            .unwrap_err()
            .to_string();
        assert!(message.contains("timeouts"), "{message}");

        let f = file("[servr]\nlisten = \"127.0.0.1:1\"\n");
        let message = Settings::load_from(Some(f.path()), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(message.contains("servr"), "{message}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Settings::load_from(Some(Path::new("/nonexistent/gw.toml")), env(&[]));
        assert!(matches!(err, Err(ConfigError::Source(_))));
    }

    #[test]
    fn all_digit_secrets_from_env_stay_text() {
        let zeros = "0".repeat(64);
        let s = Settings::load_from(None, env(&[("MPC_GATEWAY__ADMIN__TOKEN_SHA256", &zeros)]))
            .unwrap();
        assert!(s.admin.token_sha256.get().is_some());
    }

    #[test]
    fn keys_tiers_and_proxies_load() {
        let f = file(&format!(
            "[[auth.keys]]\nuser = \"alice\"\nsha256 = \"{DIGEST}\"\ntier = \"ops\"\n\
             [[auth.keys]]\nuser = \"bob\"\nsha256 = \"{}\"\n\
             [quota.tiers.ops]\nrequests_per_minute = 5\nupstream_per_hour = 20\nupstream_burst = 4\n\
             [quota.users]\nCarol = \"ops\"\n",
            "0".repeat(64)
        ));
        let s = Settings::load_from(
            Some(f.path()),
            env(&[
                (
                    "MPC_GATEWAY__AUTH__TRUSTED_PROXIES",
                    "10.0.0.0/8, 127.0.0.1,::1",
                ),
                ("MPC_GATEWAY__AUTH__TRUSTED_USER_HEADER", "X-Forwarded-User"),
            ]),
        )
        .unwrap();
        assert_eq!(s.auth.keys.len(), 2);
        assert_eq!(s.auth.keys[0].tier, "ops");
        assert_eq!(s.auth.keys[1].tier, "default");
        assert_eq!(s.quota.tiers.len(), 2, "file tiers add to the default tier");
        assert_eq!(s.quota.users["Carol"], "ops", "user names keep their case");
        assert_eq!(s.auth.trusted_proxies.len(), 3);
        assert!(s.auth.trusted_proxies[0].contains(&"10.1.2.3".parse().unwrap()));
        assert!(s.auth.trusted_proxies[1].contains(&"127.0.0.1".parse().unwrap()));
        assert!(!s.auth.trusted_proxies[1].contains(&"127.0.0.2".parse().unwrap()));
        assert_eq!(
            s.auth.trusted_user_header.get().map(|h| h.as_str()),
            Some("x-forwarded-user")
        );
    }
}
