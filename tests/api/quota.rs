//! Per-user limits and the gateway-wide courtesy budget.

use serde_json::json;
use wiremock::ResponseTemplate;
use wiremock::matchers::body_partial_json;

use crate::helpers::mpc::mpc_call;
use crate::helpers::{add_key, add_tier, assert_problem, mpc_answers, spawn_app_with};

const ALICE: &str = "mpcgw_alice_key";
const BOB: &str = "mpcgw_bob_key";

#[tokio::test]
async fn upstream_burst_admits_two_labels_then_429_without_an_mpc_call() {
    let app = spawn_app_with(|settings| {
        settings.auth.allow_anonymous = false;
        add_tier(settings, "tiny", 100, 10, 2);
        add_key(settings, "alice", ALICE, "tiny");
        add_key(settings, "bob", BOB, "tiny");
    })
    .await;
    // Two for alice, one for bob: the third of alice's never reaches the MPC.
    mpc_answers(&app, 200, json!({}), 3).await;
    let alice = [("x-api-key", ALICE)];

    for label in ["A10cnQO", "A10cnQP"] {
        let response = app.retrieve_with(label, &alice).await;
        assert_eq!(response.status().as_u16(), 200, "{label}");
    }
    let response = app.retrieve_with("A10cnQQ", &alice).await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=360).contains(&retry_after), "{retry_after}");
    assert_eq!(
        response.headers()["ratelimit-policy"],
        "\"upstream\";q=10;w=3600"
    );
    assert!(
        response.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"upstream\";r=0;t=")
    );
    let body = assert_problem(response, 429, "urn:mpc-gateway:quota-exceeded").await;
    assert_eq!(body["limit"], "upstream_per_hour");
    assert_eq!(body["retry_after_seconds"], retry_after);

    let response = app.retrieve_with("A10cnQQ", &[("x-api-key", BOB)]).await;
    assert_eq!(response.status().as_u16(), 200, "bob is unaffected");
}

#[tokio::test]
async fn refused_labels_cost_no_upstream_quota() {
    let app = spawn_app_with(|settings| {
        settings.auth.allow_anonymous = false;
        add_tier(settings, "tiny", 100, 10, 1);
        add_key(settings, "alice", ALICE, "tiny");
    })
    .await;
    mpc_answers(&app, 200, json!({}), 1).await;
    let alice = [("x-api-key", ALICE)];

    for label in ["bad label", "", "2023-02-29T00:00:00.000_0000FzZw"] {
        let response = app.retrieve_with(label, &alice).await;
        assert_eq!(response.status().as_u16(), 422);
        assert_eq!(response.headers()["ratelimit"], "\"upstream\";r=1;t=0");
    }
    let response = app.retrieve_with("A10cnQO", &alice).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["ratelimit"], "\"upstream\";r=0;t=360");
}

/// The MPC answering `status` to `label`, exactly `calls` times.
async fn mpc_answers_label(app: &crate::helpers::TestApp, label: &str, status: u16, calls: u64) {
    mpc_call()
        .and(body_partial_json(json!({ "label": label })))
        .respond_with(ResponseTemplate::new(status).set_body_json(json!({})))
        .expect(calls)
        .mount(&app.mpc)
        .await;
}

/// What is left of the upstream quota, from the `RateLimit` field.
fn upstream_left(response: &reqwest::Response) -> String {
    let field = response.headers()["ratelimit"].to_str().unwrap();
    field.split(';').nth(1).unwrap().to_owned()
}

#[tokio::test]
async fn mpc_refusals_and_failures_cost_one_upstream_unit_each() {
    let app = spawn_app_with(|settings| {
        settings.auth.allow_anonymous = false;
        add_tier(settings, "tiny", 100, 10, 3);
        add_key(settings, "alice", ALICE, "tiny");
    })
    .await;
    mpc_answers_label(&app, "Z99zzZ9", 404, 1).await;
    mpc_answers_label(&app, "FAIL001", 503, 1).await;
    mpc_answers_label(&app, "A10cnQO", 200, 1).await;
    let alice = [("x-api-key", ALICE)];
    let steps = [
        ("Z99zzZ9", 404, "r=2", "an MPC 4xx costs one unit"),
        ("Z99zzZ9", 404, "r=2", "its remembered refusal costs none"),
        ("FAIL001", 502, "r=1", "an MPC 5xx costs one unit"),
        ("bad label", 422, "r=1", "a local 422 costs none"),
        ("A10cnQO", 200, "r=0", "an accepted label costs one unit"),
    ];
    for (label, status, left, why) in steps {
        let response = app.retrieve_with(label, &alice).await;
        assert_eq!(response.status().as_u16(), status, "{why}");
        assert_eq!(upstream_left(&response), left, "{why}");
    }
    let response = app.retrieve_with("A10cnQP", &alice).await;
    let body = assert_problem(response, 429, "urn:mpc-gateway:quota-exceeded").await;
    assert_eq!(body["limit"], "upstream_per_hour");
}

#[tokio::test]
async fn requests_per_minute_stops_a_flood_before_the_body_is_read() {
    let app = spawn_app_with(|settings| {
        settings.auth.allow_anonymous = false;
        add_tier(settings, "strict", 5, 10, 3);
        add_key(settings, "alice", ALICE, "strict");
        add_key(settings, "bob", BOB, "strict");
    })
    .await;
    crate::helpers::mpc_never_called(&app).await;
    let alice = [("x-api-key", ALICE)];

    for _ in 0..5 {
        let response = app.retrieve_with("bad label", &alice).await;
        assert_eq!(response.status().as_u16(), 422);
    }
    let response = app.retrieve_with("bad label", &alice).await;
    assert_eq!(response.headers()["retry-after"], "12");
    let body = assert_problem(response, 429, "urn:mpc-gateway:quota-exceeded").await;
    assert_eq!(body["limit"], "requests_per_minute");

    let response = app.label_status("A10cnQO").await;
    assert_eq!(response.status().as_u16(), 401);
    let response = app
        .label_status_with("A10cnQO", &[("x-api-key", BOB)])
        .await;
    assert_eq!(response.status().as_u16(), 200, "bob is unaffected");
}

#[tokio::test]
async fn a_spent_courtesy_budget_is_503_gateway_busy() {
    let app = spawn_app_with(|settings| {
        settings.upstream.max_per_minute = 2.try_into().unwrap();
        settings.auth.allow_anonymous = false;
        add_key(settings, "alice", ALICE, "default");
        add_key(settings, "bob", BOB, "default");
    })
    .await;
    mpc_answers(&app, 200, json!({}), 2).await;

    assert_eq!(
        app.retrieve_with("A10cnQO", &[("x-api-key", ALICE)])
            .await
            .status(),
        200
    );
    assert_eq!(
        app.retrieve_with("A10cnQP", &[("x-api-key", BOB)])
            .await
            .status(),
        200
    );
    let response = app.retrieve_with("A10cnQQ", &[("x-api-key", ALICE)]).await;

    assert_eq!(response.headers()["retry-after"], "30");
    assert_problem(response, 503, "urn:mpc-gateway:gateway-busy").await;
    // The refusal gave alice's unit back: 3 in the burst, 1 used.
    let response = app
        .label_status_with("A10cnQO", &[("x-api-key", ALICE)])
        .await;
    assert!(
        response.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"upstream\";r=2;"),
        "{:?}",
        response.headers()["ratelimit"]
    );
}
