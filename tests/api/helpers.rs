//! `spawn_app()`: a running gateway in front of a mock MPC, and a client for it.

// Paths spelled out: this file is also included by `tests/api_redis`.
#[path = "helpers/mpc.rs"]
pub mod mpc;
#[path = "helpers/raw_mpc.rs"]
pub mod raw_mpc;
// Shared with the unit tests: each test binary uses its own part of it.
#[allow(dead_code)]
#[path = "../../src/store/test_server.rs"]
pub mod redis_server;

pub use mpc::{mpc_answers, mpc_never_called};

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use mpc_action_gateway::auth::key_digest;
use mpc_action_gateway::clock::{Clock, SystemClock};
use mpc_action_gateway::config::{
    ConfigError, KeyDigest, KeyEntry, KeyScope, LogFormat, Settings, StoreBackend, TierSettings,
};
use mpc_action_gateway::observe::logging;
use mpc_action_gateway::reload::Reloader;
use mpc_action_gateway::startup::{Application, RunError, Stopper};
use serde_json::{Value, json};
use wiremock::MockServer;

/// The MPC path the gateway forwards to.
pub const MPC_PATH: &str = "/api/action-codes/retrieve";

/// A gateway under test, its mock MPC and an HTTP client.
pub struct TestApp {
    pub address: String,
    pub admin_address: String,
    pub mpc: MockServer,
    pub client: reqwest::Client,
    stopper: Stopper,
    server: Option<tokio::task::JoinHandle<Result<(), RunError>>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let stopper = self.stopper.clone();
        // Stop quietly in the background; the runtime may already be ending.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { stopper.stop().await });
        }
    }
}

/// Settings for tests: embedded defaults, no environment, ephemeral ports.
pub fn test_settings(mpc_uri: &str) -> Settings {
    let mut settings = Settings::load_from(None, Some(HashMap::new())).expect("defaults load");
    settings.server.listen = "127.0.0.1:0".parse().unwrap();
    settings.admin.listen = "127.0.0.1:0".parse().unwrap();
    settings.server.workers = 2;
    settings.upstream.base_url = mpc_uri.parse().unwrap();
    settings.upstream.connect_timeout = Duration::from_secs(1);
    settings.upstream.timeout = Duration::from_secs(2);
    settings
}

/// Every JSON log line the gateways in this test process wrote.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // TEST_LOG=1 also shows the gateway's logs while debugging a test.
        if std::env::var_os("TEST_LOG").is_some() {
            std::io::stderr().write_all(buf)?;
        }
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_buffer() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = LogBuffer::default();
        let mut settings = test_settings("http://127.0.0.1:1").log;
        settings.format = LogFormat::Json;
        let writer = logs.clone();
        let subscriber = logging::subscriber(&settings, move || writer.clone(), false);
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        logs
    })
}

/// The JSON log lines written so far, as text (tests run in parallel: filter
/// by your own request id).
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&log_buffer().0.lock().unwrap()).into_owned()
}

/// The captured log lines whose request span carries `request_id`.
pub fn logs_for_request(request_id: &str) -> Vec<Value> {
    captured_logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["span"]["request_id"] == request_id)
        .collect()
}

/// Lifts this process's open-file limit to its hard limit: the crowd tests
/// hold a thousand sockets, more than some shells' default soft limit.
pub fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The real binary, running; killed when dropped.
pub struct Running {
    pub child: std::process::Child,
    pub public: String,
    pub admin: String,
    /// Its JSON log lines, as it writes them.
    pub logs: ChildLogs,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Sends SIGTERM and waits for the exit code.
    pub async fn terminate(self) -> Option<i32> {
        self.sigterm();
        self.wait().await
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        // SAFETY: kill only sends a signal to the child we started.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
    }

    /// Waits for the exit code.
    pub async fn wait(mut self) -> Option<i32> {
        let mut child = std::mem::replace(
            &mut self.child,
            std::process::Command::new("true").spawn().unwrap(),
        );
        tokio::task::spawn_blocking(move || child.wait().unwrap().code())
            .await
            .unwrap()
    }
}

/// A child's stdout, one JSON log line at a time.
pub struct ChildLogs(tokio::sync::mpsc::UnboundedReceiver<Value>);

impl ChildLogs {
    /// Reads `stdout` on a thread of its own, so the child never blocks on a full pipe.
    fn read(stdout: std::process::ChildStdout) -> Self {
        let (lines, receiver) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("{line}");
                }
                if let Ok(line) = serde_json::from_str(&line)
                    && lines.send(line).is_err()
                {
                    return;
                }
            }
        });
        Self(receiver)
    }

    /// No lines: for a child whose stdout the caller reads itself.
    pub fn none() -> Self {
        Self(tokio::sync::mpsc::unbounded_channel().1)
    }

    /// The next line, or `None` once the child's stdout has ended.
    // Only `tests/faults` drains a child's lines this way.
    #[allow(dead_code)]
    pub async fn next(&mut self) -> Option<Value> {
        self.0.recv().await
    }

    /// The next line that `wanted` picks; panics if none comes within 20 s.
    pub async fn until(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        let next = async {
            while let Some(line) = self.0.recv().await {
                if wanted(&line) {
                    return line;
                }
            }
            panic!("the child's stdout ended before the awaited line");
        };
        tokio::time::timeout(Duration::from_secs(20), next)
            .await
            .expect("the awaited log line within 20 s")
    }

    /// The next line whose message is `message`.
    pub async fn until_message(&mut self, message: &str) -> Value {
        self.until(|line| line["message"] == message).await
    }
}

/// Starts the binary with `args`, listening on ports the kernel picks, and
/// returns once it has logged the addresses it bound.
pub async fn run_binary(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mpc-action-gateway"));
    command
        .args(args)
        .env("MPC_GATEWAY__SERVER__LISTEN", "127.0.0.1:0")
        .env("MPC_GATEWAY__ADMIN__LISTEN", "127.0.0.1:0")
        .env("MPC_GATEWAY__LOG__FORMAT", "json")
        .stdout(std::process::Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let logs = ChildLogs::read(child.stdout.take().unwrap());
    // Built first, so that the child is killed if it never comes up.
    let mut running = Running {
        child,
        public: String::new(),
        admin: String::new(),
        logs,
    };
    // The serving line (`serve` and `demo` alike) names both bound addresses.
    let serving = running
        .logs
        .until(|line| line["public"].is_string() && line["admin"].is_string())
        .await;
    running.public = format!("http://{}", serving["public"].as_str().unwrap());
    running.admin = format!("http://{}", serving["admin"].as_str().unwrap());
    running
}

/// A loopback port that refuses connections: bound, never listening, and
/// held until dropped, so no other test can take it meanwhile.
pub struct RefusingPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

/// Reserves a [`RefusingPort`].
pub fn refusing_port() -> RefusingPort {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    RefusingPort {
        _socket: socket,
        port,
    }
}

/// Waits until `mpc` has received at least `count` requests (at most 20 s).
pub async fn mpc_received(mpc: &MockServer, count: usize) {
    let seen = async {
        while mpc.received_requests().await.unwrap().len() < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), seen)
        .await
        .unwrap_or_else(|_| panic!("the MPC did not receive {count} requests within 20 s"));
}

/// Makes dropping the socket send a TCP reset rather than a clean close.
pub fn reset_on_drop(socket: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `linger` for the duration of the call only.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_LINGER is set");
}

/// The value of the series written exactly as `series` (name and labels)
/// in a Prometheus exposition, if it is there.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().unwrap())
}

/// Admits `key` as `user` in `tier`.
pub fn add_key(settings: &mut Settings, user: &str, key: &str, tier: &str) {
    settings.auth.keys.push(KeyEntry {
        user: user.to_owned(),
        sha256: KeyDigest::try_from(key_digest(key)).unwrap(),
        tier: tier.to_owned(),
        scopes: mpc_action_gateway::config::all_scopes(),
    });
}

/// Admits `key` as `user` in the default tier, holding only `scopes`.
pub fn add_scoped_key(settings: &mut Settings, user: &str, key: &str, scopes: &[KeyScope]) {
    settings.auth.keys.push(KeyEntry {
        user: user.to_owned(),
        sha256: KeyDigest::try_from(key_digest(key)).unwrap(),
        tier: "default".to_owned(),
        scopes: scopes.to_vec(),
    });
}

/// Adds a tier with the given limits.
pub fn add_tier(settings: &mut Settings, name: &str, per_minute: u32, per_hour: u32, burst: u32) {
    settings.quota.tiers.insert(
        name.to_owned(),
        TierSettings {
            requests_per_minute: per_minute.try_into().unwrap(),
            upstream_per_hour: per_hour.try_into().unwrap(),
            upstream_burst: burst.try_into().unwrap(),
        },
    );
}

/// Keeps the gateway's shared state in the test run's Redis server under
/// `prefix`: gateways given the same prefix act as one.
pub fn on_shared_redis(settings: &mut Settings, prefix: &str) {
    on_redis(settings, &redis_server::RedisServer::shared().url(), prefix);
}

/// Keeps the gateway's shared state in the Redis server at `url` under `prefix`.
pub fn on_redis(settings: &mut Settings, url: &str, prefix: &str) {
    settings.store.backend = StoreBackend::Redis;
    settings.store.redis_url = url.to_owned().try_into().expect("a Redis URL");
    settings.store.key_prefix = prefix.to_owned();
}

fn init_test_logging() {
    log_buffer();
}

/// A gateway with default test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A gateway whose settings `customise` adjusts (the MPC URI is already set).
pub async fn spawn_app_with(customise: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with_clock(customise, Arc::new(SystemClock)).await
}

/// Like [`spawn_app_with`], with limits and breaker on `clock`.
pub async fn spawn_app_with_clock(
    customise: impl FnOnce(&mut Settings),
    clock: Arc<dyn Clock>,
) -> TestApp {
    spawn(customise, clock, None).await.0
}

/// Like [`spawn_app_with`], with a reloader whose `reload` stands for the
/// configuration read again: it adjusts a copy of the settings the gateway
/// started with, or refuses with its error.
pub async fn spawn_app_reloadable(
    customise: impl FnOnce(&mut Settings),
    clock: Arc<dyn Clock>,
    reload: impl Fn(&mut Settings) -> Result<(), ConfigError> + Send + Sync + 'static,
) -> (TestApp, Arc<Reloader>) {
    let (app, reloader) = spawn(customise, clock, Some(Box::new(reload))).await;
    (app, reloader.expect("a reloader was asked for"))
}

type Reload = Box<dyn Fn(&mut Settings) -> Result<(), ConfigError> + Send + Sync>;

async fn spawn(
    customise: impl FnOnce(&mut Settings),
    clock: Arc<dyn Clock>,
    reload: Option<Reload>,
) -> (TestApp, Option<Arc<Reloader>>) {
    init_test_logging();
    let mpc = MockServer::start().await;
    let mut settings = test_settings(&mpc.uri());
    if crate::ON_REDIS {
        on_shared_redis(&mut settings, &redis_server::unique_prefix());
    }
    customise(&mut settings);
    let application =
        Application::build_with_clock(settings.clone(), clock).expect("gateway starts");
    let address = format!("http://{}", application.public_addr());
    let admin_address = format!("http://{}", application.admin_addr());
    let stopper = application.stopper();
    let reloader = reload.map(|reload| {
        let started = settings.clone();
        let load = move || {
            let mut new = started.clone();
            reload(&mut new).map(|()| new)
        };
        application.reloader(settings, Box::new(load), None)
    });
    let server = tokio::spawn(application.run_until_stopped());
    let app = TestApp {
        address,
        admin_address,
        mpc,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap(),
        stopper,
        server: Some(server),
    };
    (app, reloader)
}

impl TestApp {
    /// Stops the gateway as SIGTERM would and waits until it has finished.
    pub async fn shutdown(mut self) {
        self.stopper.stop().await;
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    /// POSTs `{"label": label}` as JSON to the retrieve endpoint.
    pub async fn retrieve(&self, label: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/api/action-codes/retrieve", self.address))
            .json(&json!({ "label": label }))
            .send()
            .await
            .expect("request reaches the gateway")
    }

    /// POSTs `{"label": label}` with extra request headers.
    pub async fn retrieve_with(&self, label: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/api/action-codes/retrieve", self.address))
            .json(&json!({ "label": label }));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request reaches the gateway")
    }

    /// POSTs a raw body with the given Content-Type to the retrieve endpoint.
    pub async fn retrieve_raw(
        &self,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/api/action-codes/retrieve", self.address))
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send().await.expect("request reaches the gateway")
    }

    /// POSTs `{"labels": labels}` to `/api/action-codes/batch/{route}`
    /// (`status` or `retrieve`) with extra request headers.
    pub async fn batch(
        &self,
        route: &str,
        labels: &[&str],
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/api/action-codes/batch/{route}", self.address))
            .json(&json!({ "labels": labels }));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request reaches the gateway")
    }

    /// POSTs a raw body with the given Content-Type to `/api/action-codes/batch/{route}`.
    pub async fn batch_raw(
        &self,
        route: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/api/action-codes/batch/{route}", self.address))
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send().await.expect("request reaches the gateway")
    }

    /// GETs the label status endpoint.
    pub async fn label_status(&self, label: &str) -> reqwest::Response {
        self.label_status_with(label, &[]).await
    }

    /// GETs the label status endpoint with extra request headers.
    pub async fn label_status_with(
        &self,
        label: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .client
            .get(format!("{}/api/action-codes/labels/{label}", self.address));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request reaches the gateway")
    }

    /// The current value of a metric series, as `/metrics` shows it.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.admin_get("/metrics").await.text().await.unwrap();
        metric_value(&text, series).unwrap_or_else(|| panic!("no series {series}"))
    }

    /// GETs a path on the public listener, without credentials.
    pub async fn public_get(&self, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::GET, &self.address, path).await
    }

    /// DELETEs a path on the admin listener.
    pub async fn admin_delete(&self, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::DELETE, &self.admin_address, path)
            .await
    }

    /// GETs a path on the admin listener.
    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::GET, &self.admin_address, path)
            .await
    }

    async fn send(&self, method: reqwest::Method, base: &str, path: &str) -> reqwest::Response {
        self.client
            .request(method, format!("{base}{path}"))
            .send()
            .await
            .unwrap_or_else(|error| panic!("request reaches {base}: {error}"))
    }
}

/// Asserts a problem+json response of `status` and `type`, returning its body.
pub async fn assert_problem(response: reqwest::Response, status: u16, type_uri: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "content type"
    );
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["type"], type_uri, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    body
}
