//! The three gateways: the real binary (`run_binary`), so that each can be
//! SIGKILLed, SIGSTOPped and started again, all on one Redis, with one
//! configuration file and a User-Agent each, by which the stand-in MPC
//! tells their calls apart.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use mpc_action_gateway::auth::key_digest;

use crate::helpers::{ChildLogs, Running, run_binary};
use crate::log::{Secs, now};
use crate::stand_in::USER_AGENT_PREFIX;

/// How many gateways share the Redis.
pub const REPLICAS: usize = 3;

/// The gateways' windows and timeouts, short enough that a minute's run
/// crosses each of them.
pub struct Timing {
    pub upstream_timeout: Duration,
    pub store_timeout: Duration,
    pub sent_ttl: Duration,
    pub rejected_ttl: Duration,
    pub uncertain_ttl: Duration,
}

/// The tight tier: a burst of this many upstream calls...
pub const TIGHT_BURST: u32 = 2;
/// ...then this many per hour.
pub const TIGHT_PER_HOUR: u32 = 30;

/// A user and its API key.
#[derive(Clone)]
pub struct User {
    pub name: &'static str,
    pub key: String,
    pub tight: bool,
}

/// The users: three on a tier that never gets in the way, one on the tight
/// tier, and one for the final probes.
pub fn users() -> Vec<User> {
    ["alice", "bob", "carol", "tight", "probe"]
        .into_iter()
        .map(|name| User {
            name,
            key: format!("fault-{name}-{}", uuid::Uuid::new_v4().simple()),
            tight: name == "tight",
        })
        .collect()
}

/// A WARN or ERROR line a gateway logged.
#[derive(Clone)]
pub struct GatewayLine {
    pub at: Secs,
    pub replica: usize,
    pub text: String,
}

/// What the gateways logged at WARN and above: counts by message, and the
/// lines themselves up to a bound (for the time lines of violations).
#[derive(Default)]
pub struct GatewayLog {
    pub counts: BTreeMap<String, u64>,
    pub lines: Vec<GatewayLine>,
}

/// Lines kept for time lines; the counts go on.
const KEPT_LINES: usize = 50_000;

/// The gateways, their current public addresses (`None` while one is down)
/// and what they logged.
pub struct Replicas {
    _dir: tempfile::TempDir,
    config: PathBuf,
    running: Vec<Option<Running>>,
    addresses: Arc<RwLock<Vec<Option<String>>>>,
    pub log: Arc<Mutex<GatewayLog>>,
    client: reqwest::Client,
}

impl Replicas {
    /// Writes the configuration and starts every replica, ready.
    pub async fn start(
        mpc: &str,
        redis_url: &str,
        prefix: &str,
        timing: &Timing,
        users: &[User],
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("faults-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("gateway.toml");
        std::fs::write(
            &config,
            configuration(mpc, redis_url, prefix, timing, users),
        )
        .unwrap();
        let mut replicas = Self {
            _dir: dir,
            config,
            running: (0..REPLICAS).map(|_| None).collect(),
            addresses: Arc::new(RwLock::new(vec![None; REPLICAS])),
            log: Arc::default(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap(),
        };
        for replica in 0..REPLICAS {
            replicas.launch(replica).await;
        }
        replicas
    }

    /// The replicas' public addresses, shared with the clients.
    pub fn addresses(&self) -> Arc<RwLock<Vec<Option<String>>>> {
        Arc::clone(&self.addresses)
    }

    /// The process id of `replica`, while it runs.
    pub fn pid(&self, replica: usize) -> Option<libc::pid_t> {
        self.running[replica]
            .as_ref()
            .map(|running| running.child.id() as libc::pid_t)
    }

    /// Sends `signal` to `replica`.
    pub fn signal(&self, replica: usize, signal: libc::c_int) {
        if let Some(pid) = self.pid(replica) {
            // SAFETY: kill only sends a signal to a child this test started.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// SIGKILLs `replica` and reaps it.
    pub fn kill(&mut self, replica: usize) {
        self.addresses.write().unwrap()[replica] = None;
        // Dropping a `Running` kills it and waits.
        self.running[replica] = None;
    }

    /// Starts `replica` and returns once its `/readyz` answers 200.
    pub async fn launch(&mut self, replica: usize) -> Secs {
        let agent = format!("{USER_AGENT_PREFIX}{replica}");
        let config = self.config.to_str().unwrap().to_owned();
        let mut running = run_binary(
            &["--config", &config],
            &[("MPC_GATEWAY__UPSTREAM__USER_AGENT", &agent)],
        )
        .await;
        // Drained on a task of its own: a pipe nobody reads would stall the gateway.
        let mut lines = std::mem::replace(&mut running.logs, ChildLogs::none());
        let log = Arc::clone(&self.log);
        tokio::spawn(async move {
            while let Some(line) = lines.next().await {
                let level = line["level"].as_str().unwrap_or("");
                if level != "WARN" && level != "ERROR" {
                    continue;
                }
                let message = line["message"].as_str().unwrap_or("").to_owned();
                let mut log = log.lock().unwrap();
                *log.counts.entry(format!("{level} {message}")).or_default() += 1;
                if log.lines.len() < KEPT_LINES {
                    let mut text = line.to_string();
                    text.truncate(600);
                    log.lines.push(GatewayLine {
                        at: now(),
                        replica,
                        text,
                    });
                }
            }
        });
        let (public, admin) = (running.public.clone(), running.admin.clone());
        self.running[replica] = Some(running);
        let ready = self.ready(&admin).await;
        self.addresses.write().unwrap()[replica] = Some(public);
        ready
    }

    /// Waits until `/readyz` at `admin` answers 200; returns when it did.
    async fn ready(&self, admin: &str) -> Secs {
        let deadline = now() + 20.0;
        loop {
            let answer = self.client.get(format!("{admin}/readyz")).send().await;
            if answer.is_ok_and(|answer| answer.status() == 200) {
                return now();
            }
            assert!(now() < deadline, "a replica not ready within 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replicas that exited though nobody killed them, with how.
    pub fn exited(&mut self) -> Vec<(usize, String)> {
        let mut exited = Vec::new();
        for (replica, running) in self.running.iter_mut().enumerate() {
            if let Some(running) = running
                && let Ok(Some(status)) = running.child.try_wait()
            {
                exited.push((replica, status.to_string()));
            }
        }
        exited
    }
}

/// The configuration file every replica reads.
fn configuration(
    mpc: &str,
    redis_url: &str,
    prefix: &str,
    timing: &Timing,
    users: &[User],
) -> String {
    let ms = |duration: Duration| format!("\"{}ms\"", duration.as_millis());
    let mut keys = String::new();
    for user in users {
        keys.push_str(&format!(
            "[[auth.keys]]\nuser = \"{}\"\nsha256 = \"{}\"\ntier = \"{}\"\n\n",
            user.name,
            key_digest(&user.key),
            if user.tight { "tight" } else { "default" },
        ));
    }
    format!(
        r#"[server]
workers = 1

[upstream]
base_url = "{mpc}"
timeout = {timeout}
connect_timeout = "500ms"
max_concurrent = 16
max_per_minute = 100000
breaker_failures = 20
breaker_open_for = "1s"

[dedup]
sent_ttl = {sent}
rejected_ttl = {rejected}
uncertain_ttl = {uncertain}

[auth]
allow_anonymous = false

{keys}
[quota.tiers.default]
requests_per_minute = 1000000
upstream_per_hour = 1000000
upstream_burst = 100000

[quota.tiers.tight]
requests_per_minute = 1000000
upstream_per_hour = {TIGHT_PER_HOUR}
upstream_burst = {TIGHT_BURST}

[log]
format = "json"
level = "warn,mpc_action_gateway::cli=info"

[store]
backend = "redis"
redis_url = "{redis_url}"
key_prefix = "{prefix}"
timeout = {store_timeout}
"#,
        timeout = ms(timing.upstream_timeout),
        sent = ms(timing.sent_ttl),
        rejected = ms(timing.rejected_ttl),
        uncertain = ms(timing.uncertain_ttl),
        store_timeout = ms(timing.store_timeout),
    )
}
