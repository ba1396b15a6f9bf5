//! Typed settings: the embedded defaults, an optional file, then environment
//! variables, parsed and checked once at start-up.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Serialize};
use url::Url;

/// The defaults, compiled in so the binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of the environment variables that override settings.
pub const ENV_PREFIX: &str = "MPC_GATEWAY";

/// Every setting of the gateway, valid by construction.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The public listener.
    pub server: ServerSettings,
    /// The admin listener.
    pub admin: AdminSettings,
    /// How the MPC is reached.
    pub upstream: UpstreamSettings,
    /// Logging.
    pub log: LogSettings,
}

/// `[server]`: the public API listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the public API binds.
    pub listen: SocketAddr,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: NonZeroUsize,
    /// Worker threads; 0 means one per CPU core.
    pub workers: usize,
}

/// `[admin]`: the operators' listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Address the admin API binds.
    pub listen: SocketAddr,
}

/// `[upstream]`: the MPC's Action Codes API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    /// Scheme, host and port of the MPC.
    pub base_url: Url,
    /// Path of the retrieve endpoint.
    pub path: String,
    /// Longest wait for a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for the whole answer.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// User-Agent template; `{version}` is replaced by the crate version.
    pub user_agent: String,
}

impl UpstreamSettings {
    /// The full URL requests are forwarded to.
    pub fn retrieve_url(&self) -> Url {
        let mut url = self.base_url.clone();
        let base_path = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base_path}{}", self.path));
        url
    }

    /// The User-Agent header value with the version filled in.
    pub fn user_agent(&self) -> String {
        self.user_agent
            .replace("{version}", env!("CARGO_PKG_VERSION"))
    }
}

/// `[log]`: what is logged and how.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Line format on stdout.
    pub format: LogFormat,
    /// Level and per-module filter directives.
    pub level: LogLevel,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Human-readable lines.
    Pretty,
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

/// Why the settings could not be loaded; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or is not TOML.
    #[error("cannot read configuration: {0}")]
    Source(#[from] config::ConfigError),
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
    fn invalid(key: &str, message: impl fmt::Display) -> Self {
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

    /// Rules that span keys or that serde types cannot say.
    fn check(&self) -> Result<(), ConfigError> {
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
        if upstream.connect_timeout > upstream.timeout {
            return Err(ConfigError::invalid(
                "upstream.connect_timeout",
                "must not be longer than upstream.timeout",
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
        Ok(())
    }

    /// The effective settings as a TOML config file, secrets redacted.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }

    /// Whether the public listener is reachable only from this host.
    pub fn listens_on_loopback(&self) -> bool {
        self.server.listen.ip().is_loopback()
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
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn file(contents: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        f
    }

    fn invalid_key(err: ConfigError) -> String {
        match err {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("expected an invalid key, got {other}"),
        }
    }

    #[test]
    fn embedded_defaults_load() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.upstream.timeout, Duration::from_secs(15));
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
    fn bad_duration_names_its_key() {
        let err = Settings::load_from(None, env(&[("MPC_GATEWAY__UPSTREAM__TIMEOUT", "ten")]))
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("upstream.timeout"), "{message}");
        assert_eq!(invalid_key(err), "upstream.timeout");
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
            ("MPC_GATEWAY__LOG__LEVEL", "inof", "log.level"),
        ];
        for (var, value, key) in cases {
            let err = Settings::load_from(None, env(&[(var, value)])).unwrap_err();
            assert_eq!(invalid_key(err), key, "{var}={value}");
        }
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
    fn log_level_accepts_directives() {
        assert!(LogLevel::try_from("debug".to_owned()).is_ok());
        assert!(LogLevel::try_from("info,awc=warn".to_owned()).is_ok());
        assert!(LogLevel::try_from("loud".to_owned()).is_err());
    }

    #[test]
    fn rendered_toml_loads_back_to_the_same_settings() {
        let s =
            Settings::load_from(None, env(&[("MPC_GATEWAY__UPSTREAM__TIMEOUT", "90s")])).unwrap();
        let rendered = s.to_toml();
        assert!(rendered.contains("timeout = \"1m 30s\""), "{rendered}");
        let f = file(&rendered);
        let again = Settings::load_from(Some(f.path()), env(&[])).unwrap();
        assert_eq!(again.to_toml(), rendered);
    }

    #[test]
    fn base_url_with_a_path_prefix_keeps_it() {
        let s = Settings::load_from(
            None,
            env(&[("MPC_GATEWAY__UPSTREAM__BASE_URL", "http://127.0.0.1:9/mpc/")]),
        )
        .unwrap();
        assert_eq!(
            s.upstream.retrieve_url().as_str(),
            "http://127.0.0.1:9/mpc/api/action-codes/retrieve"
        );
    }
}
