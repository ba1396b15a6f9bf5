//! SIGHUP: the configuration is read again from the same file and
//! environment; who may ask and how much apply to requests from then on,
//! while remembered outcomes, calls in flight and quota state are kept.

use std::sync::{Arc, Mutex};

use actix_web::web;
use serde_json::Value;

use crate::auth::Authenticator;
use crate::config::{ConfigError, Settings};
use crate::http::state::AppState;
use crate::observe::logging::LevelHandle;

/// Reads the configuration again, from wherever the running one came from.
pub type Loader = Box<dyn Fn() -> Result<Settings, ConfigError> + Send + Sync>;

/// The settings a reload applies, with everything below them.
const RELOADABLE: [&str; 8] = [
    "auth.keys",
    "auth.trusted_proxies",
    "auth.trusted_user_header",
    "auth.allow_anonymous",
    "quota.tiers",
    "quota.users",
    "upstream.max_per_minute",
    "log.level",
];

/// Applies a new configuration to a running gateway.
pub struct Reloader {
    load: Loader,
    level: Option<LevelHandle>,
    /// The settings in force: restart-only ones stay as the process started.
    running: Mutex<Settings>,
    state: web::Data<AppState>,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// Changed settings that only a restart applies, as dotted keys.
    pub restart_needed: Vec<String>,
}

impl Reloader {
    /// A reloader for the gateway serving `state` with `running` settings.
    pub fn new(
        load: Loader,
        level: Option<LevelHandle>,
        running: Settings,
        state: web::Data<AppState>,
    ) -> Self {
        Self {
            load,
            level,
            running: Mutex::new(running),
            state,
        }
    }

    /// Reads and applies the configuration; an invalid one is refused and
    /// the running one stays in force. Logged and counted either way.
    pub fn reload(&self) -> Result<Reloaded, ConfigError> {
        let result = self.apply();
        self.state.metrics.config_reloaded(result.is_ok());
        match &result {
            Ok(reloaded) if reloaded.restart_needed.is_empty() => {
                tracing::info!("configuration reloaded");
            }
            Ok(reloaded) => tracing::warn!(
                restart_needed = %reloaded.restart_needed.join(", "),
                "configuration reloaded; these changed settings take effect only after a restart"
            ),
            Err(error) => tracing::error!(
                %error,
                "configuration reload refused; the running configuration stays in force"
            ),
        }
        result
    }

    fn apply(&self) -> Result<Reloaded, ConfigError> {
        let new = (self.load)()?;
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let restart_needed = restart_needed(&running, &new);
        self.state
            .authenticator
            .store(Arc::new(Authenticator::new(&new.auth, &new.quota)));
        self.state.quotas.set_budget(new.upstream.max_per_minute);
        if let Some(level) = &self.level
            && let Err(error) = level(&new.log.level)
        {
            tracing::warn!(%error, "cannot change log.level; the old level stays");
        }
        running.auth = new.auth;
        running.quota = new.quota;
        running.upstream.max_per_minute = new.upstream.max_per_minute;
        running.log.level = new.log.level;
        Ok(Reloaded { restart_needed })
    }
}

/// The changed settings, as dotted keys, that a reload cannot apply.
fn restart_needed(running: &Settings, new: &Settings) -> Vec<String> {
    let mut changed = Vec::new();
    let as_value = |settings: &Settings| serde_json::to_value(settings).unwrap_or(Value::Null);
    changed_keys("", &as_value(running), &as_value(new), &mut changed);
    // Shown redacted, so one digest for another is compared apart.
    let token = "admin.token_sha256";
    if running.admin.token_sha256 != new.admin.token_sha256 && !changed.iter().any(|k| k == token) {
        changed.push(token.to_owned());
    }
    let url = "store.redis_url";
    if running.store.redis_url != new.store.redis_url && !changed.iter().any(|k| k == url) {
        changed.push(url.to_owned());
    }
    changed.retain(|key| {
        !RELOADABLE
            .iter()
            .any(|reloadable| key == reloadable || key.starts_with(&format!("{reloadable}.")))
    });
    changed
}

fn changed_keys(prefix: &str, old: &Value, new: &Value, changed: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                let missing = Value::Null;
                let (old, new) = (
                    old.get(key).unwrap_or(&missing),
                    new.get(key).unwrap_or(&missing),
                );
                changed_keys(&path, old, new, changed);
            }
        }
        (old, new) if old != new => changed.push(prefix.to_owned()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn defaults() -> Settings {
        Settings::load_from(None, Some(HashMap::new())).unwrap()
    }

    #[test]
    fn reloadable_changes_need_no_restart() {
        let running = defaults();
        let mut new = defaults();
        new.auth.allow_anonymous = false;
        new.upstream.max_per_minute = 7.try_into().unwrap();
        new.quota
            .users
            .insert("carol".to_owned(), "default".to_owned());
        new.log.level = "warn".to_owned().try_into().unwrap();
        assert_eq!(restart_needed(&running, &new), Vec::<String>::new());
    }

    #[test]
    fn other_changes_are_named_by_their_keys() {
        let running = defaults();
        let mut new = defaults();
        new.server.listen = "127.0.0.1:9090".parse().unwrap();
        new.server.workers = 3;
        new.upstream.timeout = std::time::Duration::from_secs(20);
        new.admin.token_sha256 = "0".repeat(64).try_into().unwrap();
        new.auth.allow_anonymous = false;
        let mut other_digest = new.clone();
        other_digest.admin.token_sha256 = "1".repeat(64).try_into().unwrap();
        assert_eq!(restart_needed(&new, &other_digest), ["admin.token_sha256"]);
        assert_eq!(
            restart_needed(&running, &new),
            [
                "admin.token_sha256",
                "server.listen",
                "server.workers",
                "upstream.timeout",
            ]
        );
    }
}
