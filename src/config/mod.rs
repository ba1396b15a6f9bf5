//! Typed settings: the embedded defaults, an optional file, then environment
//! variables, parsed and checked once at start-up.
//!
//! This file holds the settings types, one per section; `load.rs` reads them,
//! `checks.rs` enforces the rules that span keys, and each value type parses
//! itself from text in the file named after what it holds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

mod address;
mod checks;
mod human_duration;
mod load;
mod log;
mod optional;
mod secret;
mod store;
#[cfg(test)]
mod test_support;

use address::{list_or_commas, socket_address};

pub use address::Network;
pub use load::{ConfigError, DEFAULT_TOML, ENV_PREFIX};
pub use log::{LogFormat, LogLevel};
pub use optional::{OptionalHeader, OptionalPath};
pub use secret::{KeyDigest, OptionalDigest, REDACTED};
pub use store::{RedisUrl, StoreBackend, StoreSettings};

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
    /// Where shared state lives.
    pub store: StoreSettings,
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
    /// Most labels in one batch request; its body may be 128 bytes a label.
    pub max_batch_labels: NonZeroUsize,
    /// The origin browsers reach the public listener at (e.g.
    /// `https://gateway.obs.example`), that a `POST`'s `Origin` must be;
    /// `""` for the request's own scheme and `Host`.
    pub public_origin: String,
}

/// Bytes of a batch body allowed per label it may hold.
pub const BATCH_BYTES_PER_LABEL: usize = 128;

impl ServerSettings {
    /// The cap on a batch request's body: `max_batch_labels` × 128 bytes.
    pub fn max_batch_body_bytes(&self) -> usize {
        self.max_batch_labels
            .get()
            .saturating_mul(BATCH_BYTES_PER_LABEL)
    }
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
    /// How long nothing is forwarded after an MPC 429 that named no time
    /// the gateway could read.
    #[serde(with = "human_duration")]
    pub default_pause: Duration,
    /// The longest the gateway pauses at the MPC's request, whatever it named.
    #[serde(with = "human_duration")]
    pub max_pause: Duration,
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
    /// The routes the key may use; both scopes when omitted.
    #[serde(default = "all_scopes")]
    pub scopes: Vec<KeyScope>,
}

/// A scope an API key may hold, as `[[auth.keys]] scopes` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyScope {
    /// The label and `batch/status` routes.
    Status,
    /// The `retrieve` and `batch/retrieve` routes.
    Retrieve,
}

impl KeyScope {
    /// Every scope, the default of a key.
    pub const ALL: [Self; 2] = [Self::Status, Self::Retrieve];
}

fn default_tier() -> String {
    DEFAULT_TIER.to_owned()
}

/// The scopes of a key that names none: all of them.
pub fn all_scopes() -> Vec<KeyScope> {
    KeyScope::ALL.to_vec()
}

/// The tier of users nobody assigned one.
pub const DEFAULT_TIER: &str = "default";

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

impl Settings {
    /// The effective settings as a TOML config file, secrets redacted.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }

    /// Whether the public listener is reachable only from this host.
    pub fn listens_on_loopback(&self) -> bool {
        self.server.listen.ip().is_loopback()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{env, file};
    use super::*;

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
