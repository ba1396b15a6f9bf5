//! The connection to the Redis server that replicas share: one multiplexed
//! connection that reconnects by itself, each command bounded by
//! `store.timeout`, every failure counted and the store's health kept.
//!
//! What is stored, and how, is the business of the stores built on it
//! (`dedup::redis`, `quota::redis`); this is only the wire and its health.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, Cmd, FromRedisValue, Pipeline, Script, ScriptInvocation};
use prometheus::{IntCounterVec, IntGauge};

use super::{OPERATIONS, StoreError};
use crate::config::StoreSettings;

/// How the shared store's health is shown: `store_up` and `store_errors_total`.
#[derive(Clone)]
pub struct Health {
    /// 1 while the store answers.
    pub up: IntGauge,
    /// Failed commands, by operation.
    pub errors: IntCounterVec,
}

/// The shared Redis server.
pub struct Redis {
    client: Client,
    connection: ConnectionManager,
    prefix: Box<str>,
    timeout: Duration,
    health: Health,
    answering: AtomicBool,
}

impl Redis {
    /// A connection to the server named by `store.redis_url`, made when first
    /// used (a server still down at start-up is not fatal: requests get 503
    /// until it answers).
    pub fn open(settings: &StoreSettings, health: Health) -> Result<Arc<Self>, StoreError> {
        let failed = |error: ::redis::RedisError| StoreError {
            operation: "connect",
            reason: format!("store.redis_url {}: {error}", settings.redis_url),
        };
        let client = Client::open(settings.redis_url.expose()).map_err(failed)?;
        // Reconnect quickly and keep trying: service must resume within
        // seconds of the server answering again.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(2);
        let connection =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(failed)?;
        health.up.set(0);
        for operation in OPERATIONS {
            health.errors.with_label_values(&[operation]);
        }
        Ok(Arc::new(Self {
            client,
            connection,
            prefix: settings.key_prefix.as_str().into(),
            timeout: settings.timeout,
            health,
            answering: AtomicBool::new(false),
        }))
    }

    /// The key `name` under `store.key_prefix`.
    pub fn key(&self, name: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + name.len());
        key.push_str(&self.prefix);
        key.push_str(name);
        key
    }

    /// Runs a prepared script (EVALSHA, loading it again after `NOSCRIPT`).
    pub async fn run<T: FromRedisValue>(
        &self,
        operation: &'static str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        self.bounded(operation, invocation.invoke_async(&mut connection))
            .await
    }

    /// Runs one command.
    pub async fn query<T: FromRedisValue>(
        &self,
        operation: &'static str,
        command: &Cmd,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        self.bounded(operation, command.query_async(&mut connection))
            .await
    }

    /// Runs a pipeline of commands.
    pub async fn pipeline<T: FromRedisValue>(
        &self,
        operation: &'static str,
        pipeline: &Pipeline,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        self.bounded(operation, pipeline.query_async(&mut connection))
            .await
    }

    /// A connection of its own for subscribing to channels.
    pub async fn subscriber(&self) -> Result<::redis::aio::PubSub, StoreError> {
        self.bounded("watch", self.client.get_async_pubsub()).await
    }

    /// Whether the last command was answered.
    pub fn is_up(&self) -> bool {
        self.answering.load(Ordering::Relaxed)
    }

    /// Bounds `command` by `store.timeout` and keeps the health up to date.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        command: impl Future<Output = ::redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let (answered, reason) = match tokio::time::timeout(self.timeout, command).await {
            Ok(Ok(value)) => {
                self.set_up(true);
                return Ok(value);
            }
            // The server answered with an error (a full server refusing a
            // write, say): it is up, but nothing could be decided.
            Ok(Err(error)) if matches!(error.kind(), ::redis::ErrorKind::Server(_)) => {
                (true, error.to_string())
            }
            Ok(Err(error)) => (false, error.to_string()),
            Err(_) => (
                false,
                format!(
                    "no answer within {} (store.timeout)",
                    humantime::format_duration(self.timeout)
                ),
            ),
        };
        self.health.errors.with_label_values(&[operation]).inc();
        self.set_up(answered);
        tracing::debug!(operation, %reason, "a shared-store command failed");
        Err(StoreError { operation, reason })
    }

    fn set_up(&self, up: bool) {
        if self.answering.swap(up, Ordering::Relaxed) != up {
            self.health.up.set(i64::from(up));
            if up {
                tracing::info!("the shared store answers");
            } else {
                tracing::warn!(
                    "the shared store does not answer: labels not yet claimed are not forwarded \
                     (503 store-unavailable) until it does"
                );
            }
        }
    }
}

/// A Lua script, hashed once, run by EVALSHA.
pub fn script(source: &str) -> Script {
    Script::new(source)
}

/// Warns when the server may evict the gateway's keys: every one of them has
/// a lifetime, so any policy but `noeviction` can drop a remembered outcome
/// (and send its email again) under memory pressure.
pub async fn check_eviction_policy(redis: &Redis) {
    let mut command = ::redis::cmd("CONFIG");
    command.arg("GET").arg("maxmemory-policy");
    // Not counted as a store error: managed servers may refuse CONFIG.
    let mut connection = redis.connection.clone();
    let asked = tokio::time::timeout(
        redis.timeout,
        command.query_async::<Vec<String>>(&mut connection),
    )
    .await;
    match asked.ok().and_then(Result::ok).as_deref() {
        Some([_, policy]) if policy == "noeviction" => {}
        Some([_, policy]) => tracing::warn!(
            maxmemory_policy = %policy,
            "the Redis server may evict the gateway's keys under memory pressure \
             (every one has a lifetime), and an evicted outcome can be sent again: \
             set maxmemory-policy noeviction"
        ),
        _ => tracing::info!(
            "cannot read the Redis server's maxmemory-policy (CONFIG GET refused or no \
             answer); make sure it is noeviction"
        ),
    }
}

/// A connection to the test run's shared server, under a prefix of its own.
#[cfg(test)]
pub(crate) fn for_tests() -> Arc<Redis> {
    let server = super::test_server::RedisServer::shared();
    for_tests_on(server, Duration::from_secs(2))
}

/// A connection to `server`, under a prefix of its own, each command
/// bounded by `timeout`.
#[cfg(test)]
pub(crate) fn for_tests_on(
    server: &super::test_server::RedisServer,
    timeout: Duration,
) -> Arc<Redis> {
    let settings = StoreSettings {
        backend: crate::config::StoreBackend::Redis,
        redis_url: server.url().try_into().expect("a socket URL"),
        key_prefix: super::test_server::unique_prefix(),
        timeout,
    };
    let health = Health {
        up: IntGauge::new("up", "up").unwrap(),
        errors: IntCounterVec::new(prometheus::Opts::new("errors", "errors"), &["operation"])
            .unwrap(),
    };
    Redis::open(&settings, health).expect("the test server's URL is valid")
}
