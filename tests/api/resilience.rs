//! A misbehaving MPC: the breaker, failures of every kind, and a clean stop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mpc_action_gateway::clock::FakeClock;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::ResponseTemplate;

use crate::helpers::mpc::{mpc_accepting_after, mpc_replying};
use crate::helpers::raw_mpc::raw_mpc;
use crate::helpers::{
    TestApp, add_tier, assert_problem, mpc_answers, spawn_app_with, spawn_app_with_clock,
};

async fn mpc_fails(app: &TestApp, times: u64) {
    mpc_replying(ResponseTemplate::new(500))
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
async fn a_slow_dripping_answer_ends_within_the_timeout() {
    let mpc = raw_mpc(|mut stream| async move {
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
    let app = app_against(&mpc.address).await;

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
    assert_eq!(mpc.requests(), 1);
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
async fn a_reconnect_that_would_overrun_the_timeout_is_not_attempted() {
    let closed = crate::helpers::refusing_port();
    let address = format!("http://127.0.0.1:{}", closed.port);
    let app = spawn_app_with(move |settings| {
        settings.upstream.base_url = address.parse().unwrap();
        // The second pause (100 to 150 ms) no longer fits.
        settings.upstream.timeout = Duration::from_millis(120);
        settings.upstream.connect_timeout = Duration::from_millis(100);
    })
    .await;

    assert_problem(
        app.retrieve("A10cnQO").await,
        502,
        "urn:mpc-gateway:upstream-error",
    )
    .await;
    assert_eq!(
        app.metric("mpc_gateway_upstream_requests_total{result=\"timeout\"}")
            .await,
        0.0,
        "no attempt begun past the deadline, to be taken for a call the MPC may have acted on"
    );
    let attempts = app
        .metric("mpc_gateway_upstream_requests_total{result=\"connect_error\"}")
        .await;
    assert!((1.0..=2.0).contains(&attempts), "{attempts} attempts");
}

#[tokio::test]
async fn calls_beyond_max_concurrent_wait_for_a_slot() {
    let app = spawn_app_with(|settings| {
        settings.upstream.max_concurrent = 1.try_into().unwrap();
        add_tier(settings, "default", 1000, 1000, 1000);
    })
    .await;
    mpc_replying(ResponseTemplate::new(200).set_delay(Duration::from_millis(300)))
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
async fn a_call_refused_for_want_of_a_slot_gives_its_budget_unit_back() {
    let app = spawn_app_with_clock(
        |settings| {
            settings.upstream.max_concurrent = 1.try_into().unwrap();
            settings.upstream.timeout = Duration::from_secs(1);
            settings.upstream.connect_timeout = Duration::from_millis(500);
            settings.upstream.max_per_minute = 3.try_into().unwrap();
            add_tier(settings, "default", 1000, 1000, 1000);
        },
        // The budget never refills by itself during the test.
        Arc::new(FakeClock::default()),
    )
    .await;
    mpc_replying(ResponseTemplate::new(200).set_delay(Duration::from_secs(10)))
        .expect(3)
        .mount(&app.mpc)
        .await;

    // One slot, calls of 1 s (they time out): the first holds it, the second
    // takes it after, the third's wait of 1 s ends before it is free. The
    // others ask only once the first call has reached the MPC, so that their
    // waits end after its timeout.
    let first = app.retrieve("A10cnQO");
    let others = async {
        crate::helpers::mpc_received(&app.mpc, 1).await;
        tokio::join!(app.retrieve("A10cnQP"), app.retrieve("A10cnQQ"))
    };
    let (a, (b, c)) = tokio::join!(first, others);
    let mut statuses: Vec<u16> = [a, b, c].iter().map(|r| r.status().as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [503, 504, 504], "one found no slot");

    assert_eq!(
        app.retrieve("A10cnQR").await.status().as_u16(),
        504,
        "the budget unit of the call that found no slot was given back"
    );
    assert_problem(
        app.retrieve("A10cnQS").await,
        503,
        "urn:mpc-gateway:gateway-busy",
    )
    .await;
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
    mpc_accepting_after(Duration::from_secs(3))
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
