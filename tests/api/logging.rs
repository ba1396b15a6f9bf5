//! One JSON log line per request, tied to the response by its request id.

use serde_json::json;

use crate::helpers::{logs_for_request, mpc_answers, spawn_app};

#[tokio::test]
async fn each_request_logs_one_line_with_its_context() {
    let app = spawn_app().await;
    mpc_answers(&app, 200, json!({}), 1).await;

    let response = app
        .retrieve_with("A10cnQO", &[("x-request-id", "log-test-sent")])
        .await;
    assert_eq!(response.status().as_u16(), 200);

    let lines = logs_for_request("log-test-sent");
    let finished: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "request finished")
        .collect();
    assert_eq!(finished.len(), 1, "{lines:#?}");
    let line = finished[0];
    assert_eq!(line["status"], 200);
    assert!(line["latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(line["span"]["route"], "/api/action-codes/retrieve");
    assert_eq!(line["span"]["method"], "POST");
    assert_eq!(line["label_kind"], "trksub");
    assert!(
        lines.iter().any(|l| l["message"] == "MPC call finished"),
        "the MPC call is logged in the request's span: {lines:#?}"
    );
}

#[tokio::test]
async fn refused_requests_are_logged_too() {
    let app = spawn_app().await;

    let response = app
        .label_status_with("not%20valid", &[("x-request-id", "log-test-invalid")])
        .await;
    assert_eq!(response.status().as_u16(), 422);

    let lines = logs_for_request("log-test-invalid");
    let line = lines
        .iter()
        .find(|l| l["message"] == "request finished")
        .expect("a request line");
    assert_eq!(line["status"], 422);
    assert_eq!(line["span"]["route"], "/api/action-codes/labels/{label}");
    assert!(line.get("label_kind").is_none());
    assert!(line.get("outcome").is_none());
}

#[tokio::test]
async fn a_label_check_logs_the_label_kind() {
    let app = spawn_app().await;

    let response = app
        .label_status_with("A10cnQO", &[("x-request-id", "log-test-check")])
        .await;
    assert_eq!(response.status().as_u16(), 200);

    let line = logs_for_request("log-test-check")
        .into_iter()
        .find(|l| l["message"] == "request finished")
        .expect("a request line");
    assert_eq!(line["label_kind"], "trksub");
    assert_eq!(line["user"], "anonymous:127.0.0.1");
}
