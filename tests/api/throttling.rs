//! The MPC's own back-pressure: a 429, or a 503 with `Retry-After`, pauses
//! every call to the MPC until the time it named, blames no label and
//! charges no quota; a 408 and a plain 503 stay failures.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use mpc_action_gateway::clock::{Clock, FakeClock};
use mpc_action_gateway::config::Settings;
use serde_json::{Value, json};
use wiremock::ResponseTemplate;
use wiremock::matchers::body_partial_json;

use crate::helpers::mpc::{mpc_answering_any_request, mpc_call};
use crate::helpers::{TestApp, add_key, add_tier, assert_problem, spawn_app_with_clock};

const ALICE: &str = "mpcgw_alice_key";

/// The MPC answering `label` with `template`, exactly `calls` times (and
/// leaving later calls to the mocks mounted after).
async fn mpc_answers_label(app: &TestApp, label: &str, template: ResponseTemplate, calls: u64) {
    mpc_call()
        .and(body_partial_json(json!({ "label": label })))
        .respond_with(template)
        .up_to_n_times(calls)
        .expect(calls)
        .named(label)
        .mount(&app.mpc)
        .await;
}

/// Any other call fails the test.
async fn no_other_mpc_call(app: &TestApp) {
    mpc_answering_any_request()
        .expect(0)
        .named("no other call may reach the MPC")
        .mount(&app.mpc)
        .await;
}

fn accepted() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"message": "queued"}))
}

fn too_many(retry_after: Option<&str>) -> ResponseTemplate {
    let template = ResponseTemplate::new(429).set_body_json(json!({"error": "slow down"}));
    match retry_after {
        Some(value) => template.insert_header("retry-after", value),
        None => template,
    }
}

/// A gateway on `clock` whose user alice (key [`ALICE`]) may have 2 MPC
/// calls at once, adjusted by `customise`.
async fn gateway(clock: &Arc<FakeClock>, customise: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with_clock(
        |settings| {
            add_tier(settings, "pair", 1000, 10, 2);
            add_key(settings, "alice", ALICE, "pair");
            add_tier(settings, "default", 1000, 1000, 1000);
            customise(settings);
        },
        clock.clone(),
    )
    .await
}

/// RFC 3339 with whole seconds, as the gateway writes times.
fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().unwrap())
}

/// Asserts the 503 `upstream-throttled` problem with `Retry-After` in
/// seconds and `paused_until`; returns the body.
async fn assert_throttled(
    response: reqwest::Response,
    retry_after: u64,
    until: SystemTime,
) -> Value {
    assert_eq!(
        header(&response, "retry-after"),
        Some(retry_after.to_string().as_str())
    );
    let body = assert_problem(response, 503, "urn:mpc-gateway:upstream-throttled").await;
    assert_eq!(body["paused_until"], rfc3339(until), "{body}");
    body
}

async fn readyz(app: &TestApp) -> Value {
    let response = app.admin_get("/readyz").await;
    assert_eq!(response.status().as_u16(), 200, "ready during a pause");
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_429_pauses_every_label_blames_none_and_charges_nothing() {
    let clock = Arc::new(FakeClock::default());
    let app = gateway(&clock, |_| {}).await;
    mpc_answers_label(&app, "REMEMBERED", accepted(), 1).await;
    mpc_answers_label(&app, "A10cnQO", too_many(Some("3")), 1).await;
    mpc_answers_label(&app, "A10cnQO", accepted(), 1).await;
    no_other_mpc_call(&app).await;
    let alice = [("x-api-key", ALICE)];
    assert_eq!(app.retrieve("REMEMBERED").await.status().as_u16(), 200);

    let paused_at = clock.system_time();
    let until = paused_at + Duration::from_secs(3);
    let throttled = app.retrieve_with("A10cnQO", &alice).await;
    assert_eq!(
        header(&throttled, "ratelimit"),
        Some("\"upstream\";r=2;t=0"),
        "alice keeps both units of her burst"
    );
    let body = assert_throttled(throttled, 3, until).await;
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("nothing was sent"), "{detail}");
    assert!(
        body.get("upstream").is_none(),
        "not the label's refusal: {body}"
    );
    let remembered = app.admin_get("/admin/labels/A10cnQO").await;
    assert_eq!(remembered.status().as_u16(), 404, "the label is not blamed");

    // During the pause: no MPC call for the same label or a new one, from
    // any route; a label remembered before is still answered.
    clock.advance(Duration::from_secs(1));
    assert_throttled(app.retrieve_with("A10cnQO", &alice).await, 2, until).await;
    assert_throttled(app.retrieve("A10cnQP").await, 2, until).await;
    let batch: Value = app
        .batch("retrieve", &["A10cnQR", "REMEMBERED"], &[])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(batch["items"][0]["status"], 503, "{batch}");
    assert_eq!(
        batch["items"][0]["body"]["type"],
        "urn:mpc-gateway:upstream-throttled"
    );
    assert_eq!(batch["items"][0]["body"]["paused_until"], rfc3339(until));
    assert_eq!(batch["items"][1]["body"]["status"], "already_requested");
    let page = app
        .client
        .post(format!("{}/", app.address))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("labels=A10cnQS")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The time in words around it may be marked up for the page's script.
    assert!(
        page.contains("the MPC asked the gateway to wait until"),
        "{page}"
    );
    assert!(page.contains(&rfc3339(until)), "{page}");
    assert!(page.contains("nothing was sent"), "{page}");
    let remembered: Value = app.retrieve("REMEMBERED").await.json().await.unwrap();
    assert_eq!(remembered["status"], "already_requested");

    let ready = readyz(&app).await;
    assert_eq!(ready["paused_until"], rfc3339(until), "{ready}");
    assert_eq!(ready["breaker"], "closed", "not the breaker's doing");
    assert_eq!(app.metric("mpc_gateway_upstream_paused").await, 1.0);
    assert_eq!(
        app.metric("mpc_gateway_upstream_requests_total{result=\"throttled\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("mpc_gateway_upstream_requests_total{result=\"4xx\"}")
            .await,
        0.0
    );
    assert_eq!(
        app.metric(
            "mpc_gateway_retrievals_total{label_kind=\"trksub\",outcome=\"upstream_throttled\"}"
        )
        .await,
        5.0,
        "the throttled call, then four refused during the pause"
    );

    // After the pause, on the gateway's clock: forwarded again.
    clock.advance(Duration::from_secs(2));
    assert_eq!(readyz(&app).await["paused_until"], Value::Null);
    assert_eq!(app.metric("mpc_gateway_upstream_paused").await, 0.0);
    let sent = app.retrieve_with("A10cnQO", &alice).await;
    assert_eq!(header(&sent, "ratelimit"), Some("\"upstream\";r=1;t=360"));
    let sent: Value = sent.json().await.unwrap();
    assert_eq!(sent["status"], "sent", "{sent}");
}

#[tokio::test]
async fn a_503_with_retry_after_pauses_without_counting_toward_the_breaker_and_one_without_fails() {
    let clock = Arc::new(FakeClock::default());
    let app = gateway(&clock, |settings| {
        settings.upstream.breaker_failures = 2.try_into().unwrap();
    })
    .await;
    let until = clock.system_time() + Duration::from_secs(120);
    let unavailable = ResponseTemplate::new(503).set_body_json(json!({"error": "maintenance"}));
    mpc_answers_label(
        &app,
        "THROTTLED",
        unavailable
            .clone()
            .insert_header("retry-after", httpdate::fmt_http_date(until).as_str()),
        1,
    )
    .await;
    mpc_answers_label(&app, "PLAIN001", unavailable.clone(), 1).await;
    mpc_answers_label(&app, "PLAIN002", unavailable, 1).await;
    no_other_mpc_call(&app).await;

    assert_throttled(app.retrieve("THROTTLED").await, 120, until).await;
    clock.advance(Duration::from_secs(120));

    // A 503 without Retry-After is the MPC failing, as before: 502, no
    // Retry-After, counted by the breaker (the throttled one was not, or
    // this first failure would open it).
    let failed = app.retrieve("PLAIN001").await;
    assert_eq!(header(&failed, "retry-after"), None);
    assert_problem(failed, 502, "urn:mpc-gateway:upstream-error").await;
    assert_eq!(readyz(&app).await["breaker"], "closed");
    assert_problem(
        app.retrieve("PLAIN002").await,
        502,
        "urn:mpc-gateway:upstream-error",
    )
    .await;
    assert_problem(
        app.retrieve("PLAIN003").await,
        503,
        "urn:mpc-gateway:upstream-circuit-open",
    )
    .await;
    assert_eq!(
        app.metric("mpc_gateway_upstream_requests_total{result=\"5xx\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn a_missing_or_unreadable_retry_after_pauses_for_the_default_and_a_huge_one_for_the_cap() {
    let clock = Arc::new(FakeClock::default());
    let app = gateway(&clock, |settings| {
        settings.upstream.default_pause = Duration::from_secs(45);
        settings.upstream.max_pause = Duration::from_secs(600);
    })
    .await;
    let cases = [
        ("MISSING1", None, 45),
        ("GARBAGE1", Some("soon"), 45),
        ("NEGATIVE", Some("-5"), 45),
        ("HUGE0001", Some("999999999999"), 600),
    ];
    for (label, retry_after, _) in cases {
        mpc_answers_label(&app, label, too_many(retry_after), 1).await;
    }
    mpc_answers_label(
        &app,
        "BADDATE1",
        ResponseTemplate::new(503).insert_header("retry-after", "yesterday"),
        1,
    )
    .await;
    no_other_mpc_call(&app).await;

    for (label, retry_after, seconds) in cases {
        let until = clock.system_time() + Duration::from_secs(seconds);
        assert_throttled(app.retrieve(label).await, seconds, until).await;
        assert_eq!(
            app.admin_get(&format!("/admin/labels/{label}"))
                .await
                .status()
                .as_u16(),
            404,
            "{retry_after:?}"
        );
        clock.advance(Duration::from_secs(seconds));
    }
    // A 503 whose Retry-After cannot be read is a plain 503.
    assert_problem(
        app.retrieve("BADDATE1").await,
        502,
        "urn:mpc-gateway:upstream-error",
    )
    .await;
}

#[tokio::test]
async fn a_408_is_not_remembered_and_counts_toward_the_breaker() {
    let clock = Arc::new(FakeClock::default());
    let app = gateway(&clock, |settings| {
        settings.upstream.breaker_failures = 2.try_into().unwrap();
    })
    .await;
    mpc_answers_label(&app, "A10cnQO", ResponseTemplate::new(408), 2).await;
    no_other_mpc_call(&app).await;

    for _ in 0..2 {
        let failed = app.retrieve("A10cnQO").await;
        assert_eq!(header(&failed, "retry-after"), None, "nothing was sent");
        let body = assert_problem(failed, 502, "urn:mpc-gateway:upstream-error").await;
        assert!(body["detail"].as_str().unwrap().contains("408"), "{body}");
        assert_eq!(
            app.admin_get("/admin/labels/A10cnQO")
                .await
                .status()
                .as_u16(),
            404,
            "not remembered: the next request tries again"
        );
    }
    assert_problem(
        app.retrieve("A10cnQO").await,
        503,
        "urn:mpc-gateway:upstream-circuit-open",
    )
    .await;
}

#[tokio::test]
async fn callers_coalesced_on_a_throttled_call_all_get_its_503() {
    let clock = Arc::new(FakeClock::default());
    let app = gateway(&clock, |_| {}).await;
    mpc_answers_label(
        &app,
        "A10cnQO",
        too_many(Some("30")).set_delay(Duration::from_millis(300)),
        1,
    )
    .await;
    no_other_mpc_call(&app).await;
    let until = clock.system_time() + Duration::from_secs(30);

    let answers = join_all((0..20).map(|_| app.retrieve("A10cnQO"))).await;
    let mut collapsed = 0;
    for answer in answers {
        if header(&answer, "cache-status").is_some_and(|status| status.ends_with("collapsed")) {
            collapsed += 1;
        }
        assert_throttled(answer, 30, until).await;
    }
    assert!(collapsed > 0, "some waited for the one call");
    assert_eq!(
        app.metric("mpc_gateway_upstream_requests_total{result=\"throttled\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_caller_who_leaves_during_a_throttled_call_still_gets_the_units_back() {
    use tokio::io::AsyncWriteExt;
    let clock = Arc::new(FakeClock::default());
    let app = gateway(&clock, |_| {}).await;
    mpc_answers_label(
        &app,
        "A10cnQO",
        too_many(Some("3")).set_delay(Duration::from_millis(300)),
        1,
    )
    .await;
    no_other_mpc_call(&app).await;

    // Alice's request, on a connection she drops once the MPC holds the call.
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let body = json!({"label": "A10cnQO"}).to_string();
    let request = format!(
        "POST /api/action-codes/retrieve HTTP/1.1\r\nhost: {address}\r\nx-api-key: {ALICE}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    crate::helpers::mpc_received(&app.mpc, 1).await;
    let socket = stream.into_std().unwrap();
    crate::helpers::reset_on_drop(&socket);
    drop(socket);

    let settled = async {
        while app
            .metric("mpc_gateway_upstream_requests_total{result=\"throttled\"}")
            .await
            < 1.0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), settled)
        .await
        .expect("the call settles on its own task");
    let units = async {
        loop {
            let status = app
                .label_status_with("A10cnQO", &[("x-api-key", ALICE)])
                .await;
            if header(&status, "ratelimit") == Some("\"upstream\";r=2;t=0") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), units)
        .await
        .expect("both of alice's units are back, though she left");
}
