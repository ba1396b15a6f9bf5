//! `spawn_app()`: a running gateway in front of a mock MPC, and a client for it.

pub mod raw_mpc;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use mpc_action_gateway::clock::{Clock, MonotonicClock};
use mpc_action_gateway::config::{
    ConfigError, KeyDigest, KeyEntry, LogFormat, Settings, TierSettings,
};
use mpc_action_gateway::identity::key_digest;
use mpc_action_gateway::reload::Reloader;
use mpc_action_gateway::startup::{Application, RunError, Stopper};
use mpc_action_gateway::telemetry;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

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
        let subscriber = telemetry::subscriber(&settings, move || writer.clone(), false);
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
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Sends SIGTERM and waits for the exit code.
    pub async fn terminate(mut self) -> Option<i32> {
        // SAFETY: kill only sends a signal to the child we started.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let mut child = std::mem::replace(
            &mut self.child,
            std::process::Command::new("true").spawn().unwrap(),
        );
        tokio::task::spawn_blocking(move || child.wait().unwrap().code())
            .await
            .unwrap()
    }
}

/// Starts the binary with `args` on free loopback ports and waits until its
/// admin listener answers.
pub async fn run_binary(args: &[&str], env: &[(&str, &str)]) -> Running {
    let (public, admin) = (free_port(), free_port());
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mpc-action-gateway"));
    command
        .args(args)
        .env("MPC_GATEWAY__SERVER__LISTEN", format!("127.0.0.1:{public}"))
        .env("MPC_GATEWAY__ADMIN__LISTEN", format!("127.0.0.1:{admin}"))
        .stdout(std::process::Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let running = Running {
        child: command.spawn().unwrap(),
        public: format!("http://127.0.0.1:{public}"),
        admin: format!("http://127.0.0.1:{admin}"),
    };
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(response) = client
            .get(format!("{}/healthz", running.admin))
            .send()
            .await
            && response.status().is_success()
        {
            return running;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the binary did not come up");
}

/// A loopback port nobody listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Admits `key` as `user` in `tier`.
pub fn add_key(settings: &mut Settings, user: &str, key: &str, tier: &str) {
    settings.auth.keys.push(KeyEntry {
        user: user.to_owned(),
        sha256: KeyDigest::try_from(key_digest(key)).unwrap(),
        tier: tier.to_owned(),
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

fn init_test_logging() {
    log_buffer();
}

/// A gateway with default test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A gateway whose settings `customise` adjusts (the MPC URI is already set).
pub async fn spawn_app_with(customise: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with_clock(customise, Arc::new(MonotonicClock::default())).await
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

/// The MPC answering `status` with `body` to every retrieve call, expecting `calls` of them.
pub async fn mpc_answers(app: &TestApp, status: u16, body: Value, calls: u64) {
    Mock::given(method("POST"))
        .and(path(MPC_PATH))
        .respond_with(ResponseTemplate::new(status).set_body_json(body))
        .expect(calls)
        .mount(&app.mpc)
        .await;
}

/// The MPC must not be called at all.
pub async fn mpc_never_called(app: &TestApp) {
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .expect(0)
        .named("no call may reach the MPC")
        .mount(&app.mpc)
        .await;
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
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no series {series}"))
            .parse()
            .unwrap()
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
