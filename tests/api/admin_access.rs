//! Who may use the admin listener's `/admin/` routes when it faces the network.
//!
//! Tests never bind a non-loopback address: the settings name `0.0.0.0`, the
//! gateway decides its admin access from them, and the test serves that
//! gateway's admin app on `127.0.0.1:0`.

use std::io::Write;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use actix_web::HttpServer;
use actix_web::dev::ServerHandle;
use mpc_action_gateway::auth::key_digest;
use mpc_action_gateway::clock::SystemClock;
use mpc_action_gateway::config::{LogFormat, Settings};
use mpc_action_gateway::dedup::{Outcome, Remembered, Uncertainty};
use mpc_action_gateway::domain::label::Label;
use mpc_action_gateway::observe::logging;
use mpc_action_gateway::startup::Gateway;
use serde_json::Value;

use crate::helpers::{assert_problem, test_settings};

const LABEL: &str = "A10cnQO";
const TOKEN: &str = "admin-token-for-network-tests";

/// Log lines written by one test's own subscriber, not the shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// The warnings about the admin listener.
    fn admin_warnings(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| {
                line["level"] == "WARN"
                    && line["message"]
                        .as_str()
                        .is_some_and(|message| message.contains("admin.listen"))
            })
            .collect()
    }
}

/// Settings whose admin listener faces the network (never bound here).
fn network_facing(token: Option<&str>) -> Settings {
    let mut settings = test_settings("http://127.0.0.1:1");
    settings.admin.listen = "0.0.0.0:8081".parse().unwrap();
    if let Some(token) = token {
        settings.admin.token_sha256 = key_digest(token).try_into().unwrap();
    }
    settings
}

/// Builds the gateway as start-up does, with its logs captured.
fn gateway(settings: &Settings) -> (Gateway, Captured) {
    let captured = Captured::default();
    let mut log = settings.log.clone();
    log.format = LogFormat::Json;
    let writer = captured.clone();
    let subscriber = logging::subscriber(&log, move || writer.clone(), false);
    let gateway = tracing::subscriber::with_default(subscriber, || {
        Gateway::new(settings, Arc::new(SystemClock))
    })
    .expect("gateway builds");
    (gateway, captured)
}

/// Serves the gateway's admin app on a loopback port.
fn serve_admin(gateway: &Gateway) -> (String, ServerHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let gateway = gateway.clone();
    let server = HttpServer::new(move || gateway.admin_app())
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
    let handle = server.handle();
    tokio::spawn(server);
    (address, handle)
}

fn remember(gateway: &Gateway) -> Label {
    let label = Label::parse(LABEL).unwrap();
    let now = SystemTime::now();
    gateway.dedup().restore(
        label.clone(),
        Remembered::new(
            Outcome::Uncertain {
                reason: Uncertainty::Timeout,
            },
            now,
            now + Duration::from_secs(3600),
            "alice".into(),
        ),
    );
    label
}

async fn request(method: reqwest::Method, url: String, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("the admin listener answers")
}

#[tokio::test]
async fn without_a_token_a_network_facing_admin_refuses_and_changes_nothing() {
    let (gateway, _) = gateway(&network_facing(None));
    let label = remember(&gateway);
    let (admin, server) = serve_admin(&gateway);
    let url = format!("{admin}/admin/labels/{LABEL}");

    let shown = request(reqwest::Method::GET, url.clone(), None).await;
    let body = assert_problem(shown, 403, "urn:mpc-gateway:forbidden").await;
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("admin.token_sha256") && detail.contains("loopback"),
        "the detail says how to open the routes: {detail}"
    );
    // A token does not help when none is configured.
    let forgotten = request(reqwest::Method::DELETE, url, Some(TOKEN)).await;
    assert_problem(forgotten, 403, "urn:mpc-gateway:forbidden").await;
    assert!(
        gateway.dedup().get(&label).await.unwrap().is_some(),
        "the refused DELETE forgot nothing"
    );

    for path in ["/metrics", "/healthz", "/readyz"] {
        let response = request(reqwest::Method::GET, format!("{admin}{path}"), None).await;
        assert_eq!(response.status().as_u16(), 200, "{path} stays open");
    }
    server.stop(true).await;
}

#[tokio::test]
async fn with_a_token_a_network_facing_admin_serves_whoever_presents_it() {
    let (gateway, _) = gateway(&network_facing(Some(TOKEN)));
    let label = remember(&gateway);
    let (admin, server) = serve_admin(&gateway);
    let url = format!("{admin}/admin/labels/{LABEL}");

    let refused = request(reqwest::Method::DELETE, url.clone(), None).await;
    assert_problem(refused, 401, "urn:mpc-gateway:unauthenticated").await;
    assert!(gateway.dedup().get(&label).await.unwrap().is_some());

    let shown = request(reqwest::Method::GET, url.clone(), Some(TOKEN)).await;
    assert_eq!(shown.status().as_u16(), 200);
    let shown: Value = shown.json().await.unwrap();
    assert_eq!(shown["user"], "alice");
    let forgotten = request(reqwest::Method::DELETE, url, Some(TOKEN)).await;
    assert_eq!(forgotten.status().as_u16(), 200);
    assert!(gateway.dedup().get(&label).await.unwrap().is_none());

    for path in ["/metrics", "/healthz", "/readyz"] {
        let response = request(reqwest::Method::GET, format!("{admin}{path}"), None).await;
        assert_eq!(response.status().as_u16(), 200, "{path} needs no token");
    }
    server.stop(true).await;
}

#[test]
fn start_up_warns_only_when_the_admin_routes_are_closed() {
    let (_, closed) = gateway(&network_facing(None));
    let warnings = closed.admin_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["listen"], "0.0.0.0:8081");
    let message = warnings[0]["message"].as_str().unwrap();
    assert!(
        message.contains("admin.token_sha256") && message.contains("403"),
        "{message}"
    );

    let mut loopback = network_facing(None);
    loopback.admin.listen = "127.0.0.1:8081".parse().unwrap();
    for settings in [network_facing(Some(TOKEN)), loopback] {
        let (_, open) = gateway(&settings);
        let warnings = open.admin_warnings();
        assert!(warnings.is_empty(), "the routes are open: {warnings:?}");
    }
}
