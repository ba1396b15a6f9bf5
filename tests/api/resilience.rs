//! A misbehaving MPC: the breaker, failures of every kind, and a clean stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mpc_action_gateway::clock::FakeClock;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{
    MPC_PATH, TestApp, add_tier, assert_problem, mpc_answers, spawn_app_with, spawn_app_with_clock,
};

async fn mpc_fails(app: &TestApp, times: u64) {
    Mock::given(method("POST"))
        .and(path(MPC_PATH))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(times)
        .expect(times)
        .mount(&app.mpc)
        .await;
}

async fn breaker_app(clock: Arc<FakeClock>) -> TestApp {
    spawn_app_with_clock(
        |settings| {
            settings.upstream.breaker_failures = 2.try_into().unwrap();
            settings.upstream.breaker_open_for = Duration::from_secs(30);
            add_tier(settings, "default", 1000, 1000, 1000);
        },
        clock,
    )
    .await
}

async fn readyz(app: &TestApp) -> Value {
    let response = app.admin_get("/readyz").await;
    assert_eq!(
        response.status().as_u16(),
        200,
        "ready even with the breaker open"
    );
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_breaker_opens_after_n_failures_and_refuses_at_once() {
    let clock = Arc::new(FakeClock::default());
    let app = breaker_app(clock.clone()).await;
    mpc_answers(&app, 200, json!({}), 1).await;
    // A label sent while the MPC was well is still answered from memory later.
    assert_eq!(app.retrieve("REMEMBERED").await.status().as_u16(), 200);
    // Checks the `.expect(1)` above before `reset` forgets it.
    app.mpc.verify().await;
    app.mpc.reset().await;
    mpc_fails(&app, 2).await;

    for label in ["A10cnQO", "A10cnQP"] {
        assert_problem(
            app.retrieve(label).await,
            502,
            "urn:mpc-gateway:upstream-error",
        )
        .await;
    }
    let started = Instant::now();
    let refused = app.retrieve("A10cnQQ").await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused at once"
    );
    assert_eq!(refused.headers()["retry-after"], "30");
    assert_problem(refused, 503, "urn:mpc-gateway:upstream-circuit-open").await;

    let remembered: Value = app.retrieve("REMEMBERED").await.json().await.unwrap();
    assert_eq!(remembered["status"], "already_requested");
    assert_eq!(readyz(&app).await["breaker"], "open");
    assert_eq!(app.metric("mpc_gateway_circuit_breaker_state").await, 2.0);
    assert_eq!(
        app.metric("mpc_gateway_retrievals_total{label_kind=\"trksub\",outcome=\"circuit_open\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_successful_probe_closes_the_breaker() {
    let clock = Arc::new(FakeClock::default());
    let app = breaker_app(clock.clone()).await;
    mpc_fails(&app, 2).await;
    for label in ["A10cnQO", "A10cnQP"] {
        app.retrieve(label).await;
    }
    assert_eq!(app.retrieve("A10cnQQ").await.status().as_u16(), 503);

    clock.advance(Duration::from_secs(30));
    assert_eq!(readyz(&app).await["breaker"], "half_open");
    mpc_answers(&app, 200, json!({}), 2).await;
    assert_eq!(
        app.retrieve("A10cnQQ").await.status().as_u16(),
        200,
        "the probe"
    );
    assert_eq!(readyz(&app).await["breaker"], "closed");
    assert_eq!(app.retrieve("A10cnQR").await.status().as_u16(), 200);
}

#[tokio::test]
async fn a_failed_probe_opens_the_breaker_again() {
    let clock = Arc::new(FakeClock::default());
    let app = breaker_app(clock.clone()).await;
    mpc_fails(&app, 3).await;
    for label in ["A10cnQO", "A10cnQP"] {
        app.retrieve(label).await;
    }
    clock.advance(Duration::from_secs(30));

    assert_problem(
        app.retrieve("A10cnQQ").await,
        502,
        "urn:mpc-gateway:upstream-error",
    )
    .await;
    let refused = app.retrieve("A10cnQR").await;
    assert_eq!(refused.headers()["retry-after"], "30");
    assert_problem(refused, 503, "urn:mpc-gateway:upstream-circuit-open").await;
}

/// A one-connection-at-a-time MPC that does `behave` with each request it reads.
async fn raw_mpc<F, Fut>(behave: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&requests);
    tokio::spawn(async move {
        let behave = Arc::new(behave);
        while let Ok((mut stream, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            let behave = Arc::clone(&behave);
            tokio::spawn(async move {
                let mut buffer = vec![0_u8; 4096];
                let mut seen = Vec::new();
                // Read the whole request (head and the small JSON body).
                while !seen.contains(&b'}') {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buffer[..n]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                behave(stream).await;
            });
        }
    });
    (address, requests)
}

async fn app_against(address: &str) -> TestApp {
    let address = address.to_owned();
    spawn_app_with(move |settings| {
        settings.upstream.base_url = address.parse().unwrap();
        settings.upstream.timeout = Duration::from_millis(800);
        settings.upstream.connect_timeout = Duration::from_millis(500);
    })
    .await
}

async fn assert_healthy(app: &TestApp) {
    assert_eq!(app.admin_get("/healthz").await.status().as_u16(), 200);
    assert_eq!(app.metric("mpc_gateway_upstream_in_flight").await, 0.0);
}

#[tokio::test]
async fn a_connection_reset_after_sending_is_uncertain_and_never_retried() {
    let (address, requests) = raw_mpc(|stream| async move {
        // Abort the connection: the request was sent, no answer comes.
        let socket = stream.into_std().unwrap();
        crate::helpers::reset_on_drop(&socket);
        drop(socket);
    })
    .await;
    let app = app_against(&address).await;

    let first = app.retrieve("A10cnQO").await;
    assert!(first.headers().contains_key("retry-after"));
    let body = assert_problem(first, 502, "urn:mpc-gateway:upstream-error").await;
    assert!(
        body["detail"].as_str().unwrap().contains("may still email"),
        "{body}"
    );
    let second = app.retrieve("A10cnQO").await;
    assert!(
        second.headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("hit")
    );
    assert_problem(second, 502, "urn:mpc-gateway:upstream-error").await;

    assert_eq!(requests.load(Ordering::SeqCst), 1, "never sent twice");
    assert_eq!(
        app.metric("mpc_gateway_upstream_requests_total{result=\"connection_lost\"}")
            .await,
        1.0
    );
    assert_healthy(&app).await;
}

#[tokio::test]
async fn a_slow_dripping_answer_ends_within_the_timeout() {
    let (address, requests) = raw_mpc(|mut stream| async move {
        let head =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{";
        let _ = stream.write_all(head.as_bytes()).await;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stream.write_all(b" ").await.is_err() {
                return;
            }
        }
    })
    .await;
    let app = app_against(&address).await;

    let started = Instant::now();
    let response = app.retrieve("A10cnQO").await;
    let elapsed = started.elapsed();

    assert!(
        elapsed < Duration::from_millis(800) + Duration::from_secs(1),
        "{elapsed:?}"
    );
    assert_eq!(
        response.status().as_u16(),
        200,
        "a 2xx status is acceptance"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "sent");
    assert_eq!(body["upstream"]["body"], Value::Null);
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    assert_healthy(&app).await;
}

#[tokio::test]
async fn garbage_and_huge_answers_are_handled() {
    let app = spawn_app_with(|_| {}).await;
    Mock::given(method("POST"))
        .and(path(MPC_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![b'x'; 2 * 1024 * 1024]))
        .up_to_n_times(1)
        .mount(&app.mpc)
        .await;
    Mock::given(method("POST"))
        .and(path(MPC_PATH))
        .respond_with(ResponseTemplate::new(404).set_body_bytes(b"\xff\xfe<html>".to_vec()))
        .mount(&app.mpc)
        .await;

    let huge: Value = app.retrieve("A10cnQO").await.json().await.unwrap();
    assert_eq!(huge["status"], "sent");
    assert_eq!(huge["upstream"]["body"], Value::Null);
    let garbage = app.retrieve("A10cnQP").await;
    let body = assert_problem(garbage, 404, "urn:mpc-gateway:upstream-rejected").await;
    assert_eq!(body["upstream"], json!({"status": 404, "body": null}));
    assert_healthy(&app).await;
}

#[tokio::test]
async fn a_refused_connection_is_tried_again_then_502() {
    let closed = crate::helpers::refusing_port();
    let app = app_against(&format!("http://127.0.0.1:{}", closed.port)).await;

    let started = Instant::now();
    assert_problem(
        app.retrieve("A10cnQO").await,
        502,
        "urn:mpc-gateway:upstream-error",
    )
    .await;
    assert!(started.elapsed() < Duration::from_millis(800) + Duration::from_secs(1));
    assert_eq!(
        app.metric("mpc_gateway_upstream_requests_total{result=\"connect_error\"}")
            .await,
        3.0,
        "three attempts: nothing could have been sent"
    );
    let again = app.retrieve("A10cnQO").await;
    assert_eq!(
        again.headers()["cache-status"],
        "mpc-action-gateway; fwd=miss"
    );
    assert_healthy(&app).await;
}

#[tokio::test]
async fn calls_beyond_max_concurrent_wait_for_a_slot() {
    let app = spawn_app_with(|settings| {
        settings.upstream.max_concurrent = 1.try_into().unwrap();
        add_tier(settings, "default", 1000, 1000, 1000);
    })
    .await;
    Mock::given(method("POST"))
        .and(path(MPC_PATH))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(300)))
        .expect(3)
        .mount(&app.mpc)
        .await;

    let started = Instant::now();
    let (a, b, c) = tokio::join!(
        app.retrieve("A10cnQO"),
        app.retrieve("A10cnQP"),
        app.retrieve("A10cnQQ")
    );
    for response in [a, b, c] {
        assert_eq!(response.status().as_u16(), 200);
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "one call at a time"
    );
    assert_healthy(&app).await;
}

#[tokio::test]
async fn a_slow_loris_body_gets_408_and_no_mpc_call() {
    let app = spawn_app().await;
    crate::helpers::mpc_never_called(&app).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            b"POST /api/action-codes/retrieve HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 30\r\n\r\n{\"la",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the gateway ends the request by itself");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("urn:mpc-gateway:request-timeout"), "{text}");
}

use crate::helpers::spawn_app;

#[tokio::test]
async fn oversized_or_too_many_headers_get_431_and_no_mpc_call() {
    let app = spawn_app().await;
    crate::helpers::mpc_never_called(&app).await;

    let big = "a".repeat(20 * 1024);
    let response = app
        .retrieve_with("A10cnQO", &[("x-big", big.as_str())])
        .await;
    assert_problem(response, 431, "urn:mpc-gateway:headers-too-large").await;

    let names: Vec<String> = (0..120).map(|i| format!("x-h{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let response = app.retrieve_with("A10cnQO", &many).await;
    assert_eq!(response.status().as_u16(), 431);
    assert_eq!(app.admin_get("/healthz").await.status().as_u16(), 200);
}

#[tokio::test]
async fn sigterm_during_a_slow_mpc_call_answers_the_caller_and_exits_0() {
    let mpc = wiremock::MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(MPC_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"message": "queued"}))
                .set_delay(Duration::from_secs(3)),
        )
        .expect(1)
        .mount(&mpc)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("state.json");
    let uri = mpc.uri();
    let state = state_file.to_string_lossy().into_owned();
    let mut gateway = crate::helpers::run_binary(
        &[],
        &[
            ("MPC_GATEWAY__UPSTREAM__BASE_URL", &uri),
            ("MPC_GATEWAY__UPSTREAM__TIMEOUT", "10s"),
            ("MPC_GATEWAY__DEDUP__STATE_FILE", &state),
        ],
    )
    .await;

    let request = tokio::spawn(
        reqwest::Client::new()
            .post(format!("{}/api/action-codes/retrieve", gateway.public))
            .json(&json!({"label": "A10cnQO"}))
            .send(),
    );
    // SIGTERM once the MPC holds the call, and see shutdown begin while it does.
    crate::helpers::mpc_received(&mpc, 1).await;
    gateway.sigterm();
    gateway
        .logs
        .until_message("shutting down: finishing in-flight requests")
        .await;
    assert!(
        !request.is_finished(),
        "the MPC call outlasted the start of shutdown (3 s margin)"
    );

    let response = request.await.unwrap().unwrap();
    assert_eq!(
        response.status().as_u16(),
        200,
        "the caller still gets its answer"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "sent");
    assert_eq!(gateway.wait().await, Some(0));
    let saved = std::fs::read_to_string(&state_file).unwrap();
    assert!(saved.contains("\"label\":\"A10cnQO\""), "{saved}");
}
