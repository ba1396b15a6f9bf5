//! One quota step against a real Redis: the GCRA script on the server's
//! clock, as every forwarded request runs it twice (the user's upstream
//! quota, the courtesy budget); and the peek for the RateLimit fields, which
//! goes to Redis only when this replica has not stepped the key for 500 ms
//! (`peek_redis`, a new key each time) and is worked out here otherwise
//! (`peek_here`). The server is started here, without persistence,
//! listening on a unix socket and on a loopback port, and stopped at the end.
//!
//! After criterion's groups it times 20 000 sequential steps one by one and
//! prints p50 and p99 per step for each transport and cost.

use std::hint::black_box;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use mpc_action_gateway::config::{RedisUrl, StoreBackend, StoreSettings};
use mpc_action_gateway::quota::redis::RedisStore;
use mpc_action_gateway::quota::{Cost, Limit, RateStore};
use mpc_action_gateway::store::redis::{Health, Redis};
use prometheus::{IntCounterVec, IntGauge, Opts};
use tokio::runtime::Runtime;

/// Steps timed one by one for the percentiles.
const TIMED_STEPS: usize = 20_000;
const USER: &str = "bench";

/// A `redis-server` of this run, killed (by its PID) when dropped.
struct Server {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Server {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("quota-redis-bench-")
            .tempdir()
            .unwrap();
        // A port free a moment ago; the server fails to start if it was taken since.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let socket = dir.path().join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--unixsocket")
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start redis-server (apt-get install redis-server): {error}")
            });
        let server = Self { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    fn answers(&self) -> bool {
        self.socket().exists()
            && Command::new("redis-cli")
                .args(["-p", &self.port.to_string(), "PING"])
                .output()
                .is_ok_and(|output| output.stdout.starts_with(b"PONG"))
    }

    /// The two ways to reach it: (name, `store.redis_url`).
    fn urls(&self) -> [(&'static str, String); 2] {
        [
            ("tcp", format!("redis://127.0.0.1:{}", self.port)),
            ("unix", format!("redis+unix://{}", self.socket().display())),
        ]
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The upstream quota's store over `url`, as the gateway builds it.
fn store(runtime: &Runtime, url: &str) -> RedisStore {
    let settings = StoreSettings {
        backend: StoreBackend::Redis,
        redis_url: RedisUrl::try_from(url.to_owned()).unwrap(),
        key_prefix: "mpcgw-bench:".to_owned(),
        timeout: Duration::from_secs(2),
    };
    let health = Health {
        up: IntGauge::new("store_up", "store up").unwrap(),
        errors: IntCounterVec::new(Opts::new("store_errors", "store errors"), &["operation"])
            .unwrap(),
    };
    let redis: Arc<Redis> = runtime
        .block_on(async { Redis::open(&settings, health) })
        .unwrap();
    let store = RedisStore::new(redis, "upstream");
    // Connects, and loads the script.
    let decision = runtime
        .block_on(store.step(USER, &limit(), Cost::Peek))
        .unwrap();
    assert!(decision.allowed);
    store
}

/// A limit never reached: every charge is admitted and written.
fn limit() -> Limit {
    Limit::new(
        1_000_000_000.try_into().unwrap(),
        Duration::from_secs(3600),
        1_000_000_000.try_into().unwrap(),
    )
}

/// What is measured: a name, the step, and whether each step takes a key
/// of its own (so that a peek cannot be answered from the last step's state).
const COSTS: [(&str, Cost, bool); 3] = [
    ("charge", Cost::Charge, false),
    ("peek_redis", Cost::Peek, true),
    ("peek_here", Cost::Peek, false),
];

/// The key of step `index`.
fn key(fresh: bool, index: u64) -> String {
    if fresh {
        format!("{USER}-{index}")
    } else {
        USER.to_owned()
    }
}

fn steps(c: &mut Criterion, runtime: &Runtime, stores: &[(&'static str, RedisStore)]) {
    let limit = limit();
    for (transport, store) in stores {
        let mut group = c.benchmark_group(format!("quota_step_{transport}"));
        let mut steps = 0;
        for (name, cost, fresh) in COSTS {
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    runtime.block_on(async {
                        let keys: Vec<String> = (0..iters).map(|i| key(fresh, steps + i)).collect();
                        steps += iters;
                        let started = Instant::now();
                        for key in &keys {
                            black_box(store.step(key, &limit, cost).await.unwrap());
                        }
                        started.elapsed()
                    })
                });
            });
        }
        group.finish();
    }
}

/// The `per_mille`th of the sorted `times`, in microseconds.
fn quantile(times: &[Duration], per_mille: usize) -> f64 {
    let index = (times.len() * per_mille / 1000).min(times.len() - 1);
    times[index].as_secs_f64() * 1e6
}

fn percentiles(runtime: &Runtime, stores: &[(&'static str, RedisStore)]) {
    let limit = limit();
    println!("\nquota step against Redis, {TIMED_STEPS} sequential steps each, timed one by one:");
    for (transport, store) in stores {
        for (name, cost, fresh) in COSTS {
            let mut times = runtime.block_on(async {
                let mut times = Vec::with_capacity(TIMED_STEPS);
                for index in 0..TIMED_STEPS {
                    let key = key(fresh, u64::MAX / 2 + index as u64);
                    let started = Instant::now();
                    black_box(store.step(&key, &limit, cost).await.unwrap());
                    times.push(started.elapsed());
                }
                times
            });
            times.sort_unstable();
            println!(
                "  {transport:4} {name:10}  p50 {:7.1} us   p99 {:7.1} us   p99.9 {:7.1} us   max {:8.1} us",
                quantile(&times, 500),
                quantile(&times, 990),
                quantile(&times, 999),
                quantile(&times, 1000),
            );
        }
    }
}

fn main() {
    let server = Server::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stores: Vec<_> = server
        .urls()
        .into_iter()
        .map(|(transport, url)| (transport, store(&runtime, &url)))
        .collect();
    let mut criterion = Criterion::default().configure_from_args();
    steps(&mut criterion, &runtime, &stores);
    criterion.final_summary();
    // Not when cargo test or --list runs the bench only to check it.
    let checking = std::env::args().any(|arg| arg == "--test" || arg == "--list");
    if !checking {
        percentiles(&runtime, &stores);
    }
}
