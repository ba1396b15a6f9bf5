//! Typed settings: the embedded defaults, an optional file, then environment
//! variables, parsed and checked once at start-up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use actix_web::http::header::HeaderName;
use config::{Config, Environment, File, FileFormat};
use ipnet::IpNet;
use serde::{Deserialize, Serialize, Serializer};
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
    /// Remembered outcomes.
    pub dedup: DedupSettings,
    /// Who may ask.
    pub auth: AuthSettings,
    /// How much each user may ask.
    pub quota: QuotaSettings,
    /// Logging.
    pub log: LogSettings,
}

/// `[server]`: the public API listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the public API binds.
    #[serde(deserialize_with = "socket_address")]
    pub listen: SocketAddr,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: NonZeroUsize,
    /// Worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Most connections the public listener holds at once, all workers together.
    pub max_connections: NonZeroUsize,
}

/// `[admin]`: the operators' listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Address the admin API binds.
    #[serde(deserialize_with = "socket_address")]
    pub listen: SocketAddr,
    /// Digest of the token `/admin/` routes require; `""` for none.
    pub token_sha256: OptionalDigest,
}

/// `[dedup]`: how long outcomes are remembered, and where they are kept.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DedupSettings {
    /// Lifetime of an accepted request.
    #[serde(with = "human_duration")]
    pub sent_ttl: Duration,
    /// Lifetime of an MPC refusal.
    #[serde(with = "human_duration")]
    pub rejected_ttl: Duration,
    /// Lifetime of an outcome the MPC may or may not have acted on.
    #[serde(with = "human_duration")]
    pub uncertain_ttl: Duration,
    /// Most outcomes remembered at once.
    pub max_entries: NonZeroU64,
    /// Where outcomes survive restarts; `""` for nowhere.
    pub state_file: OptionalPath,
}

/// A file path, or none when configured as `""`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(from = "String", into = "String")]
pub struct OptionalPath(Option<PathBuf>);

impl OptionalPath {
    /// The path, when one is configured.
    pub fn get(&self) -> Option<&Path> {
        self.0.as_deref()
    }
}

impl From<String> for OptionalPath {
    fn from(value: String) -> Self {
        Self((!value.trim().is_empty()).then(|| PathBuf::from(value)))
    }
}

impl From<OptionalPath> for String {
    fn from(path: OptionalPath) -> Self {
        path.0
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// A secret's digest, or none when configured as `""`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct OptionalDigest(Option<KeyDigest>);

impl OptionalDigest {
    /// The digest, when one is configured.
    pub fn get(&self) -> Option<&KeyDigest> {
        self.0.as_ref()
    }
}

impl TryFrom<String> for OptionalDigest {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        if value.trim().is_empty() {
            return Ok(Self(None));
        }
        KeyDigest::try_from(value).map(|digest| Self(Some(digest)))
    }
}

impl Serialize for OptionalDigest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(digest) => digest.serialize(serializer),
            None => serializer.serialize_str(""),
        }
    }
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
    #[serde(with = "human_duration")]
    pub connect_timeout: Duration,
    /// Longest wait for the whole answer.
    #[serde(with = "human_duration")]
    pub timeout: Duration,
    /// User-Agent template; `{version}` is replaced by the crate version.
    pub user_agent: String,
    /// Most MPC calls under way at once.
    pub max_concurrent: NonZeroUsize,
    /// Consecutive failures that open the breaker.
    pub breaker_failures: NonZeroU32,
    /// How long the breaker stays open before a probe.
    #[serde(with = "human_duration")]
    pub breaker_open_for: Duration,
    /// Gateway-wide MPC calls per minute (GCRA, burst of the same size).
    pub max_per_minute: NonZeroU32,
    /// Set only by `demo`: `base_url` is the built-in simulated MPC (no config key).
    #[serde(skip)]
    pub simulated: bool,
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

/// `[auth]`: how callers are identified.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Whether callers without credentials are served as `anonymous:<ip>`.
    pub allow_anonymous: bool,
    /// Header a trusted SSO proxy sets to the user's name; `""` for none.
    pub trusted_user_header: OptionalHeader,
    /// Peers whose user header is believed (from env: comma-separated).
    #[serde(deserialize_with = "list_or_commas")]
    pub trusted_proxies: Vec<Network>,
    /// Known API keys.
    pub keys: Vec<KeyEntry>,
}

/// A header name, or none when configured as `""`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct OptionalHeader(Option<HeaderName>);

impl OptionalHeader {
    /// The header, when one is configured.
    pub fn get(&self) -> Option<&HeaderName> {
        self.0.as_ref()
    }
}

impl TryFrom<String> for OptionalHeader {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        if value.trim().is_empty() {
            return Ok(Self(None));
        }
        HeaderName::from_bytes(value.trim().as_bytes())
            .map(|name| Self(Some(name)))
            .map_err(|_| format!("{value:?} is not a valid header name"))
    }
}

impl From<OptionalHeader> for String {
    fn from(header: OptionalHeader) -> Self {
        header.0.map(|name| name.to_string()).unwrap_or_default()
    }
}

/// A CIDR block; a bare address means that address alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Network(IpNet);

impl Network {
    /// Whether `ip` lies inside the block.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.contains(ip)
    }
}

impl TryFrom<String> for Network {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let text = value.trim();
        text.parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map(Self)
            .map_err(|_| {
                format!("{value:?} is not a CIDR block (e.g. 10.0.0.0/8) or an IP address")
            })
    }
}

impl From<Network> for String {
    fn from(network: Network) -> Self {
        network.0.to_string()
    }
}

/// A list from a file, or a comma-separated string from an environment
/// variable. (The config crate's own list parsing would also turn every
/// all-digit value, such as a digest, into a number.)
/// Durations as human strings (`"15s"`), with errors that say how to write one.
mod human_duration {
    use std::fmt;
    use std::time::Duration;

    use serde::{Deserializer, Serializer, de};

    const HOW: &str =
        "write a number with a unit, as a string such as \"15s\", \"500ms\" or \"2m\"";

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*duration))
    }

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
}

/// A listen address: an IP address and a port, never a host name to resolve.
fn socket_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an IP address and port, such as \"127.0.0.1:8080\" or \
             \"[::1]:8080\" (host names are not resolved)"
        ))
    })
}

fn list_or_commas<'de, D>(deserializer: D) -> Result<Vec<Network>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Networks;

    impl<'de> serde::de::Visitor<'de> for Networks {
        type Value = Vec<Network>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of CIDR blocks, or one comma-separated string of them")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            text.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| Network::try_from(item.to_owned()).map_err(E::custom))
                .collect()
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut networks = Vec::new();
            while let Some(network) = seq.next_element::<Network>()? {
                networks.push(network);
            }
            Ok(networks)
        }
    }

    deserializer.deserialize_any(Networks)
}

/// One `[[auth.keys]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// The user the key identifies.
    pub user: String,
    /// SHA-256 of the key.
    pub sha256: KeyDigest,
    /// The user's quota tier.
    #[serde(default = "default_tier")]
    pub tier: String,
}

fn default_tier() -> String {
    DEFAULT_TIER.to_owned()
}

/// The tier of users nobody assigned one.
pub const DEFAULT_TIER: &str = "default";

/// A SHA-256 digest of an API key; a secret, so never shown.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl TryFrom<String> for KeyDigest {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let mut bytes = [0_u8; 32];
        // The value is a secret: say what is wrong with it, never what it is.
        hex::decode_to_slice(value.trim(), &mut bytes)
            .map(|()| Self(bytes))
            .map_err(|_| "must be 64 hexadecimal digits (a SHA-256 digest)".to_owned())
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyDigest(<redacted>)")
    }
}

impl Serialize for KeyDigest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// What secrets are shown as.
pub const REDACTED: &str = "<redacted>";

/// `[quota]`: tiers and who is in which.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSettings {
    /// Limits by tier name; `default` must exist.
    pub tiers: BTreeMap<String, TierSettings>,
    /// Tier of users identified by header or anonymously.
    pub users: BTreeMap<String, String>,
}

/// `[quota.tiers.<name>]`: one tier's limits.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TierSettings {
    /// Every request, anti-flood (burst of the same size).
    pub requests_per_minute: NonZeroU32,
    /// Requests forwarded to the MPC per hour...
    pub upstream_per_hour: NonZeroU32,
    /// ...of which this many at once.
    pub upstream_burst: NonZeroU32,
}

/// `[log]`: what is logged and how.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Line format on stdout.
    pub format: LogFormat,
    /// Level and per-module filter directives.
    pub level: LogLevel,
    /// Where the audit trail is appended; `""` for nowhere.
    pub audit_file: OptionalPath,
}

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
        for (key, ttl) in [
            ("upstream.breaker_open_for", upstream.breaker_open_for),
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
                "MPC_GATEWAY__SERVER__MAX_CONNECTIONS",
                "0",
                "server.max_connections",
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
    fn durations_from_the_environment_get_the_same_advice() {
        let message = Settings::load_from(None, env(&[("MPC_GATEWAY__UPSTREAM__TIMEOUT", "15")]))
            .unwrap_err()
            .to_string();
        assert!(message.contains("`upstream.timeout`"), "{message}");
        assert!(message.contains("such as \"15s\""), "{message}");
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
    fn proxies_from_env_may_be_empty_or_single() {
        let s =
            Settings::load_from(None, env(&[("MPC_GATEWAY__AUTH__TRUSTED_PROXIES", "")])).unwrap();
        assert!(s.auth.trusted_proxies.is_empty());
        let s = Settings::load_from(
            None,
            env(&[("MPC_GATEWAY__AUTH__TRUSTED_PROXIES", "192.0.2.7")]),
        )
        .unwrap();
        assert_eq!(s.auth.trusted_proxies.len(), 1);
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

    const DIGEST: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

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

    #[test]
    fn digests_never_appear_in_output_or_errors() {
        let f = file(&format!(
            "[[auth.keys]]\nuser = \"alice\"\nsha256 = \"{DIGEST}\"\n"
        ));
        let s = Settings::load_from(Some(f.path()), env(&[])).unwrap();
        let mut s = s;
        s.admin.token_sha256 = DIGEST.to_owned().try_into().unwrap();
        let rendered = s.to_toml();
        assert!(!rendered.contains(DIGEST), "{rendered}");
        assert!(
            rendered.contains("token_sha256 = \"<redacted>\""),
            "{rendered}"
        );
        assert!(rendered.contains(REDACTED));
        assert!(!format!("{s:?}").contains(DIGEST));

        let bad = format!("{}zz", &DIGEST[..62]);
        let f = file(&format!(
            "[[auth.keys]]\nuser = \"alice\"\nsha256 = \"{bad}\"\n"
        ));
        let message = Settings::load_from(Some(f.path()), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(message.contains("auth.keys[0].sha256"), "{message}");
        assert!(!message.contains(&bad), "{message}");
    }

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
