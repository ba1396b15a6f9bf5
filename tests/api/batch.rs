//! The batch routes: each item is what the single route would have answered,
//! with the same coalescing, quotas, scopes, metrics and audit lines.

use std::time::Duration;

use futures_util::future::join_all;
use mpc_action_gateway::config::KeyScope;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use wiremock::ResponseTemplate;
use wiremock::matchers::body_partial_json;

use crate::helpers::mpc::{mpc_accepting_after, mpc_answering, mpc_call};
use crate::helpers::{
    TestApp, add_key, add_scoped_key, add_tier, assert_problem, metric_value, mpc_answers,
    mpc_never_called, spawn_app_with,
};

const SUBMISSION: &str = "2024-05-02T21:03:35.001_0000FzZw";
const ALICE: &str = "mpcgw_alice_key";
const DASHBOARD: &str = "mpcgw_dashboard_key";

/// The items of a 200 batch answer.
async fn items(response: reqwest::Response) -> Vec<Value> {
    assert_eq!(response.status().as_u16(), 200, "the batch is accepted");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    body["items"].as_array().expect("an items list").clone()
}

/// The status and JSON body of a single route's answer.
async fn single(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A gateway whose default tier does not get in the way.
async fn roomy_app(customise: impl FnOnce(&mut mpc_action_gateway::config::Settings)) -> TestApp {
    spawn_app_with(|settings| {
        add_tier(settings, "default", 100_000, 1000, 1000);
        customise(settings);
    })
    .await
}

#[tokio::test]
async fn batch_status_items_are_the_label_routes_answers_in_order() {
    let app = roomy_app(|_| {}).await;
    mpc_answers(&app, 200, json!({"message": "queued"}), 1).await;
    assert_eq!(app.retrieve("A10cnQO").await.status().as_u16(), 200);
    let labels = ["A10cnQO", "ABC 1", SUBMISSION, "A10cnQO"];

    let items = items(app.batch("status", &labels, &[]).await).await;

    assert_eq!(items.len(), labels.len());
    for (item, label) in items.iter().zip(labels) {
        assert_eq!(item["label"], label, "label as given, in order");
        let (status, body) = single(app.label_status(&label.replace(' ', "%20")).await).await;
        assert_eq!(item["status"], status, "{label}");
        assert_eq!(item["body"], body, "{label}");
    }
    assert_eq!(items[0]["body"]["valid"], true);
    assert!(items[0]["body"]["last_requested_at"].is_string());
    assert_eq!(items[1]["status"], 422);
    assert_eq!(items[1]["body"]["type"], "urn:mpc-gateway:invalid-label");
    assert!(items[2]["body"]["last_requested_at"].is_null());
}

#[tokio::test]
async fn batch_retrieve_items_are_the_retrieve_routes_answers_in_order() {
    let app = roomy_app(|_| {}).await;
    mpc_answers(&app, 200, json!({"message": "queued"}), 2).await;
    let labels = [" A10cnQO ", "ABC 1", SUBMISSION];

    let first = items(app.batch("retrieve", &labels, &[]).await).await;

    assert_eq!(first.len(), 3);
    for (item, label) in first.iter().zip(labels) {
        assert_eq!(item["label"], label, "label as given, in order");
    }
    assert_eq!(first[0]["status"], 200);
    assert_eq!(first[0]["body"]["status"], "sent");
    assert_eq!(
        first[0]["body"]["label"], "A10cnQO",
        "the body has it trimmed"
    );
    assert_eq!(first[0]["body"]["upstream"]["body"]["message"], "queued");
    assert_eq!(first[1]["status"], 422);
    assert_eq!(first[1]["body"]["type"], "urn:mpc-gateway:invalid-label");
    assert_eq!(
        first[2]["body"]["label_kind"], "submission_id",
        "{}",
        first[2]
    );

    // Asked again, every item is what the single route answers now.
    let again = items(app.batch("retrieve", &labels, &[]).await).await;
    for (item, label) in again.iter().zip(labels) {
        let (status, body) = single(app.retrieve(label).await).await;
        assert_eq!(item["status"], status, "{label}");
        assert_eq!(item["body"], body, "{label}");
    }
    assert_eq!(again[0]["body"]["status"], "already_requested");
}

#[tokio::test]
async fn a_label_given_twice_makes_one_mpc_call() {
    let app = roomy_app(|_| {}).await;
    mpc_accepting_after(Duration::from_millis(200))
        .expect(1)
        .mount(&app.mpc)
        .await;

    let items = items(
        app.batch("retrieve", &[SUBMISSION, SUBMISSION, SUBMISSION], &[])
            .await,
    )
    .await;

    for item in &items {
        assert_eq!(item["status"], 200, "{item}");
        assert_eq!(item["body"]["status"], "sent", "the copies share the call");
    }
}

#[tokio::test]
async fn a_batch_and_single_requests_for_the_same_labels_share_one_call_per_label() {
    let app = roomy_app(|_| {}).await;
    let labels = ["A10cnQO", "A10cnQP", "A10cnQQ"];
    for label in labels {
        mpc_call()
            .and(body_partial_json(json!({ "label": label })))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({}))
                    .set_delay(Duration::from_millis(300)),
            )
            .expect(1)
            .mount(&app.mpc)
            .await;
    }

    let singles = join_all(labels.iter().chain(labels.iter()).map(|l| app.retrieve(l)));
    let (batch, singles) = tokio::join!(app.batch("retrieve", &labels, &[]), singles);

    for response in singles {
        assert_eq!(response.status().as_u16(), 200);
    }
    for item in items(batch).await {
        assert_eq!(item["status"], 200, "{item}");
    }
}

#[tokio::test]
async fn slow_labels_do_not_hold_up_the_others() {
    let app = roomy_app(|_| {}).await;
    mpc_accepting_after(Duration::from_millis(600))
        .expect(4)
        .mount(&app.mpc)
        .await;
    let labels = ["A10cnQO", "A10cnQP", "A10cnQQ", "A10cnQR"];

    let started = std::time::Instant::now();
    let items = items(app.batch("retrieve", &labels, &[]).await).await;

    assert!(items.iter().all(|item| item["status"] == 200));
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "four 600 ms calls ran at once: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_quota_is_charged_in_the_order_given_and_refusals_are_inline() {
    let app = spawn_app_with(|settings| {
        settings.auth.allow_anonymous = false;
        add_tier(settings, "tight", 100, 10, 2);
        add_key(settings, "alice", ALICE, "tight");
    })
    .await;
    mpc_answers(&app, 200, json!({}), 2).await;
    let labels = ["A10cnQO", "A10cnQP", "A10cnQQ", "A10cnQR"];

    let response = app
        .batch("retrieve", &labels, &[("x-api-key", ALICE)])
        .await;

    assert_eq!(
        response.headers()["ratelimit-policy"],
        "\"upstream\";q=10;w=3600"
    );
    let ratelimit = response.headers()["ratelimit"].to_str().unwrap().to_owned();
    assert!(
        ratelimit.starts_with("\"upstream\";r=0;t="),
        "after the batch: {ratelimit}"
    );
    let items = items(response).await;
    assert_eq!(items[0]["status"], 200);
    assert_eq!(items[1]["status"], 200);
    for item in &items[2..] {
        assert_eq!(item["status"], 429, "{item}");
        assert_eq!(item["body"]["type"], "urn:mpc-gateway:quota-exceeded");
        assert_eq!(item["body"]["limit"], "upstream_per_hour");
        assert!(item["body"]["retry_after_seconds"].as_u64().unwrap() > 0);
    }
}

#[tokio::test]
async fn a_batch_counts_once_towards_requests_per_minute() {
    let app = spawn_app_with(|settings| {
        add_tier(settings, "default", 2, 1000, 1000);
    })
    .await;
    mpc_answers(&app, 200, json!({}), 3).await;
    let labels = ["A10cnQO", "A10cnQP", "A10cnQQ"];

    items(app.batch("retrieve", &labels, &[]).await).await;
    items(app.batch("status", &labels, &[]).await).await;
    let third = app.batch("retrieve", &labels, &[]).await;

    let body = assert_problem(third, 429, "urn:mpc-gateway:quota-exceeded").await;
    assert_eq!(body["limit"], "requests_per_minute");
}

#[tokio::test]
async fn more_labels_than_max_batch_labels_is_refused_whole() {
    let app = roomy_app(|settings| {
        settings.server.max_batch_labels = 3.try_into().unwrap();
    })
    .await;
    mpc_never_called(&app).await;
    let labels = ["A10cnQO", "A10cnQP", "A10cnQQ", "A10cnQR"];

    for route in ["status", "retrieve"] {
        let response = app.batch(route, &labels, &[]).await;
        let body = assert_problem(response, 422, "urn:mpc-gateway:batch-too-large").await;
        assert_eq!(body["max_labels"], 3, "{route}");
    }
}

#[tokio::test]
async fn malformed_batches_are_refused_whole_without_an_mpc_call() {
    let app = roomy_app(|settings| {
        settings.server.max_batch_labels = 2.try_into().unwrap();
    })
    .await;
    mpc_never_called(&app).await;
    let json = Some("application/json");

    for route in ["status", "retrieve"] {
        for body in [
            "",
            "{",
            "{}",
            "[\"A10cnQO\"]",
            "{\"labels\": []}",
            "{\"labels\": \"A10cnQO\"}",
            "{\"labels\": [\"A10cnQO\", 5]}",
            "{\"labels\": [null]}",
            "{\"label\": \"A10cnQO\"}",
        ] {
            let response = app.batch_raw(route, json, body).await;
            assert_problem(response, 400, "urn:mpc-gateway:malformed-request").await;
        }
        for content_type in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
        ] {
            let response = app
                .batch_raw(route, content_type, "{\"labels\": [\"A10cnQO\"]}")
                .await;
            assert_problem(response, 415, "urn:mpc-gateway:unsupported-media-type").await;
        }
        // Two labels: 256 bytes at most.
        let padded = format!(
            "{{\"labels\": [\"A10cnQO\"], \"pad\": \"{}\"}}",
            "x".repeat(256)
        );
        let response = app.batch_raw(route, json, padded).await;
        let body = assert_problem(response, 413, "urn:mpc-gateway:payload-too-large").await;
        assert_eq!(body["max_body_bytes"], 256);
    }
}

#[tokio::test]
async fn a_status_only_key_checks_labels_but_cannot_retrieve() {
    let app = roomy_app(|settings| {
        settings.auth.allow_anonymous = false;
        add_scoped_key(settings, "dashboard", DASHBOARD, &[KeyScope::Status]);
        add_scoped_key(settings, "sender", ALICE, &[KeyScope::Retrieve]);
    })
    .await;
    mpc_never_called(&app).await;
    let dashboard = [("authorization", &*format!("Bearer {DASHBOARD}"))];

    assert_eq!(
        app.label_status_with("A10cnQO", &dashboard).await.status(),
        200
    );
    let listed = items(app.batch("status", &["A10cnQO"], &dashboard).await).await;
    assert_eq!(listed[0]["status"], 200);

    let refused = [
        app.retrieve_with("A10cnQO", &dashboard).await,
        app.batch("retrieve", &["A10cnQO"], &dashboard).await,
    ];
    for response in refused {
        assert!(response.headers().contains_key("ratelimit"));
        let body = assert_problem(response, 403, "urn:mpc-gateway:forbidden").await;
        assert_eq!(body["required_scope"], "retrieve");
    }

    let sender = [("x-api-key", ALICE)];
    let refused = [
        app.label_status_with("A10cnQO", &sender).await,
        app.batch("status", &["A10cnQO"], &sender).await,
    ];
    for response in refused {
        let body = assert_problem(response, 403, "urn:mpc-gateway:forbidden").await;
        assert_eq!(body["required_scope"], "status");
    }
    // The scope is checked before the body: even a malformed one gets 403.
    let response = app
        .client
        .post(format!("{}/api/action-codes/batch/retrieve", app.address))
        .header("authorization", format!("Bearer {DASHBOARD}"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_problem(response, 403, "urn:mpc-gateway:forbidden").await;
}

#[tokio::test]
async fn a_scope_refusal_charges_nothing() {
    let app = spawn_app_with(|settings| {
        settings.auth.allow_anonymous = false;
        add_tier(settings, "default", 1, 1000, 1000);
        add_scoped_key(settings, "dashboard", DASHBOARD, &[KeyScope::Status]);
    })
    .await;
    mpc_never_called(&app).await;
    let dashboard = [("x-api-key", DASHBOARD)];

    for _ in 0..3 {
        let response = app.batch("retrieve", &["A10cnQO"], &dashboard).await;
        assert_eq!(response.status().as_u16(), 403);
    }
    let response = app.batch("status", &["A10cnQO"], &dashboard).await;
    assert_eq!(
        response.status().as_u16(),
        200,
        "refusals did not spend the one request a minute"
    );
}

#[tokio::test]
async fn every_item_counts_in_the_metrics_and_writes_its_audit_line() {
    let dir = tempfile::tempdir().unwrap();
    let audit_file = dir.path().join("audit.jsonl");
    let app = roomy_app(|settings| {
        settings.log.audit_file = audit_file.to_string_lossy().into_owned().into();
        settings.auth.allow_anonymous = false;
        add_key(settings, "alice", ALICE, "default");
    })
    .await;
    mpc_accepting_after(Duration::from_millis(100))
        .expect(1)
        .mount(&app.mpc)
        .await;
    let headers = [("x-api-key", ALICE), ("x-request-id", "batch-audit-1")];

    let listed = items(
        app.batch(
            "retrieve",
            &[SUBMISSION, "not a label", SUBMISSION],
            &headers,
        )
        .await,
    )
    .await;
    assert_eq!(listed.len(), 3);
    // batch/status is no retrieval: no audit line, no retrievals_total.
    items(
        app.batch("status", &[SUBMISSION], &[("x-api-key", ALICE)])
            .await,
    )
    .await;

    let text = std::fs::read_to_string(&audit_file).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    let mut outcomes: Vec<&str> = lines
        .iter()
        .map(|line| {
            assert_eq!(line["request_id"], "batch-audit-1", "{line}");
            assert_eq!(line["user"], "alice", "{line}");
            line["outcome"].as_str().unwrap()
        })
        .collect();
    outcomes.sort_unstable();
    assert_eq!(outcomes, ["coalesced", "invalid_label", "sent"], "{text}");

    let metrics = app.admin_get("/metrics").await.text().await.unwrap();
    let series = |series: &str| metric_value(&metrics, series).unwrap_or_default();
    for (outcome, kind) in [
        ("sent", "submission_id"),
        ("coalesced", "submission_id"),
        ("invalid_label", "none"),
    ] {
        assert_eq!(
            series(&format!(
                "mpc_gateway_retrievals_total{{label_kind=\"{kind}\",outcome=\"{outcome}\"}}"
            )),
            1.0,
            "{outcome}"
        );
    }
    for route in ["retrieve", "status"] {
        assert_eq!(
            series(&format!(
                "mpc_gateway_http_requests_total{{method=\"POST\",route=\"/api/action-codes/batch/{route}\",status=\"200\"}}"
            )),
            1.0,
            "{route}"
        );
    }
    assert_eq!(
        series("mpc_gateway_upstream_requests_total{result=\"2xx\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_refused_batch_retrieve_is_one_retrieval_decision() {
    let app = spawn_app_with(|settings| settings.auth.allow_anonymous = false).await;
    mpc_never_called(&app).await;

    let response = app.batch("retrieve", &["A10cnQO", "A10cnQP"], &[]).await;
    assert_problem(response, 401, "urn:mpc-gateway:unauthenticated").await;

    assert_eq!(
        app.metric("mpc_gateway_retrievals_total{label_kind=\"none\",outcome=\"unauthenticated\"}")
            .await,
        1.0
    );
}

/// Any JSON value, objects often with a `labels` member.
fn json_value() -> impl Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just("A10cnQO".to_owned()), ".{0,10}"].prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![Just("labels".to_owned()), "[a-z]{0,5}"],
                inner,
                0..3
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

#[tokio::test]
async fn any_json_body_gets_a_batch_or_a_4xx_problem() {
    let app = roomy_app(|_| {}).await;
    mpc_answering(200, json!({})).mount(&app.mpc).await;
    let mut runner = TestRunner::deterministic();
    let strategy = json_value();

    for _ in 0..24 {
        let value = strategy.new_tree(&mut runner).unwrap().current();
        for route in ["status", "retrieve"] {
            let response = app
                .batch_raw(route, Some("application/json"), value.to_string())
                .await;
            let status = response.status().as_u16();
            let content_type = response.headers()["content-type"]
                .to_str()
                .unwrap()
                .to_owned();
            let body: Value = response.json().await.expect("a JSON answer");
            if status == 200 {
                assert_eq!(content_type, "application/json", "{value}");
                assert!(body["items"].is_array(), "{value} -> {body}");
            } else {
                assert!(
                    (400..500).contains(&status),
                    "{route} {value} -> {status} {body}"
                );
                assert_eq!(content_type, "application/problem+json");
                assert_eq!(body["status"], status);
            }
        }
    }
}
