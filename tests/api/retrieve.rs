//! `POST /api/action-codes/retrieve`: forwarding and the mapping of every MPC answer.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::ResponseTemplate;
use wiremock::matchers::{body_json, header};

use crate::helpers::mpc::{mpc_call, mpc_replying};
use crate::helpers::{
    add_key, add_tier, assert_problem, mpc_answers, mpc_never_called, spawn_app, spawn_app_with,
};

const SUBMISSION_ID: &str = "2024-05-02T21:03:35.001_0000FzZw";

#[tokio::test]
async fn accepted_label_is_forwarded_and_reported_sent() {
    let app = spawn_app().await;
    mpc_call()
        .and(header("content-type", "application/json"))
        .and(body_json(json!({ "label": SUBMISSION_ID })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"message": "queued"})))
        .expect(1)
        .mount(&app.mpc)
        .await;

    let response = app.retrieve(SUBMISSION_ID).await;

    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(
        response.headers()["cache-status"]
            .to_str()
            .unwrap()
            .starts_with("mpc-action-gateway; fwd=miss")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "sent");
    assert_eq!(body["label"], SUBMISSION_ID);
    assert_eq!(body["label_kind"], "submission_id");
    assert_eq!(
        body["upstream"],
        json!({"status": 200, "body": {"message": "queued"}})
    );
    assert!(body["message"].as_str().unwrap().contains(SUBMISSION_ID));
    let requested_at = body["requested_at"].as_str().unwrap();
    assert!(
        humantime::parse_rfc3339(requested_at).is_ok(),
        "{requested_at}"
    );
    assert!(requested_at.ends_with('Z'));
    assert!(humantime::parse_rfc3339(body["resend_available_at"].as_str().unwrap()).is_ok());
}

#[tokio::test]
async fn any_2xx_is_sent_whatever_the_body() {
    let cases = [
        (200, ResponseTemplate::new(200)),
        (202, ResponseTemplate::new(202).set_body_string("not json")),
        (204, ResponseTemplate::new(204)),
        (201, ResponseTemplate::new(201).set_body_json(json!(["ok"]))),
    ];
    for (status, template) in cases {
        let app = spawn_app().await;
        mpc_replying(template).expect(1).mount(&app.mpc).await;

        let response = app.retrieve("A10cnQO").await;

        assert_eq!(response.status().as_u16(), 200, "MPC {status}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "sent");
        assert_eq!(body["upstream"]["status"], status);
        let expected_body = if status == 201 {
            json!(["ok"])
        } else {
            Value::Null
        };
        assert_eq!(body["upstream"]["body"], expected_body, "MPC {status}");
    }
}

#[tokio::test]
async fn mpc_client_errors_are_passed_on_as_upstream_rejected() {
    for status in [400_u16, 404, 422] {
        let app = spawn_app().await;
        let mpc_body = json!({"error": "label not found"});
        mpc_answers(&app, status, mpc_body.clone(), 1).await;

        let response = app.retrieve("00000DwbEz").await;

        let body = assert_problem(response, status, "urn:mpc-gateway:upstream-rejected").await;
        assert_eq!(
            body["upstream"],
            json!({"status": status, "body": mpc_body})
        );
    }
}

#[tokio::test]
async fn mpc_server_errors_are_502() {
    for status in [500_u16, 502, 503] {
        let app = spawn_app().await;
        mpc_answers(&app, status, json!({"error": "boom"}), 1).await;

        let response = app.retrieve("A10cnQO").await;

        let body = assert_problem(response, 502, "urn:mpc-gateway:upstream-error").await;
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains(&status.to_string())
        );
    }
}

#[tokio::test]
async fn unreachable_mpc_is_502() {
    let closed = crate::helpers::refusing_port();
    let app = spawn_app_with(|settings| {
        settings.upstream.base_url = format!("http://127.0.0.1:{}", closed.port).parse().unwrap();
    })
    .await;

    let response = app.retrieve("A10cnQO").await;

    let body = assert_problem(response, 502, "urn:mpc-gateway:upstream-error").await;
    assert!(
        body["detail"].as_str().unwrap().contains("connect"),
        "{body}"
    );
}

#[tokio::test]
async fn slow_mpc_is_504_within_the_timeout() {
    let app = spawn_app_with(|settings| {
        settings.upstream.timeout = Duration::from_millis(700);
        settings.upstream.connect_timeout = Duration::from_millis(500);
    })
    .await;
    mpc_replying(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .expect(1)
        .mount(&app.mpc)
        .await;

    let started = Instant::now();
    let response = app.retrieve("A10cnQO").await;
    let elapsed = started.elapsed();

    assert_problem(response, 504, "urn:mpc-gateway:upstream-timeout").await;
    assert!(
        elapsed < Duration::from_millis(700) + Duration::from_secs(1),
        "took {elapsed:?}"
    );
}

#[tokio::test]
async fn only_the_label_and_content_headers_reach_the_mpc() {
    let app =
        spawn_app_with(|settings| add_key(settings, "alice", "caller-secret", "default")).await;
    mpc_answers(&app, 200, json!({}), 1).await;

    let response = app
        .client
        .post(format!("{}/api/action-codes/retrieve", app.address))
        .header("authorization", "Bearer caller-secret")
        .header("x-api-key", "caller-key")
        .header("cookie", "session=abc")
        .header("x-forwarded-user", "alice")
        .header("x-custom", "private")
        .json(&json!({"label": "  A10cnQO\n", "email": "someone@example.org", "extra": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    let received = app.mpc.received_requests().await.unwrap();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    let forwarded: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(forwarded, json!({"label": "A10cnQO"}), "trimmed label only");
    for name in [
        "authorization",
        "x-api-key",
        "cookie",
        "x-forwarded-user",
        "x-custom",
    ] {
        assert!(!request.headers.contains_key(name), "{name} was forwarded");
    }
    assert_eq!(
        request.headers["user-agent"],
        concat!("mpc-action-gateway/", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(request.headers["content-type"], "application/json");
}

#[tokio::test]
async fn invalid_labels_are_422_and_never_reach_the_mpc() {
    let app = spawn_app().await;
    mpc_never_called(&app).await;

    for label in [
        "",
        "has space",
        "toolongtobeatrkid",
        "2023-02-29T00:00:00.000_0000FzZw",
        "2024-13-02T21:03:35.001_0000FzZw",
        "A10cnQ\u{e9}",
        "A10\u{7}cnQO",
    ] {
        let response = app.retrieve(label).await;
        let body = assert_problem(response, 422, "urn:mpc-gateway:invalid-label").await;
        assert_eq!(body["label"], label);
        assert!(!body["reason"].as_str().unwrap().is_empty());
        let kinds: Vec<&str> = body["accepted_formats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["trksub", "trkid", "submission_block_id", "submission_id"]
        );
    }
}

#[tokio::test]
async fn label_errors_say_which_rule_failed() {
    let app = spawn_app().await;
    mpc_never_called(&app).await;

    let cases = [
        ("2023-02-29T00:00:00.000_0000FzZw", "day 29"),
        ("2024-13-02T21:03:35.001_0000FzZw", "month 13"),
        ("2024-05-02T24:03:35.001_0000FzZw", "hour 24"),
        ("A10 cnQO", "whitespace"),
    ];
    for (label, expected) in cases {
        let body = app.retrieve(label).await.json::<Value>().await.unwrap();
        let reason = body["reason"].as_str().unwrap();
        assert!(reason.contains(expected), "{label}: {reason}");
    }
}

#[tokio::test]
async fn malformed_bodies_are_400_and_never_reach_the_mpc() {
    let app = spawn_app().await;
    mpc_never_called(&app).await;

    for body in [
        "",
        "not json",
        "{\"label\":",
        "[]",
        "{}",
        "{\"label\": 42}",
        "{\"label\": null}",
        "{\"label\": [\"A10cnQO\"]}",
        "{\"Label\": \"A10cnQO\"}",
        // serde would read an array as the struct's members in order.
        "[\"ARR00001\"]",
        "[\"ARR00001\", \"extra\"]",
        "\"ARR00001\"",
    ] {
        let response = app.retrieve_raw(Some("application/json"), body).await;
        let problem = assert_problem(response, 400, "urn:mpc-gateway:malformed-request").await;
        if body.starts_with('[') {
            let detail = problem["detail"].as_str().unwrap();
            assert!(detail.contains("JSON object"), "{body}: {detail}");
        }
    }
}

#[tokio::test]
async fn non_json_content_types_are_415_and_never_reach_the_mpc() {
    let app = spawn_app().await;
    mpc_never_called(&app).await;
    let body = r#"{"label": "A10cnQO"}"#;

    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/json; charset=iso-8859-1"),
    ] {
        let response = app.retrieve_raw(content_type, body).await;
        assert_problem(response, 415, "urn:mpc-gateway:unsupported-media-type").await;
    }
}

#[tokio::test]
async fn json_with_a_utf8_charset_is_accepted() {
    let app = spawn_app_with(|settings| add_tier(settings, "default", 100, 100, 100)).await;
    // RFC 9110 allows whitespace around the parameters' semicolon.
    let content_types = [
        "application/json; charset=UTF-8",
        "application/json ; charset=UTF-8",
        "application/json;charset=\"utf-8\"",
        "Application/JSON",
    ];
    mpc_answers(&app, 200, json!({}), content_types.len() as u64).await;

    for (n, content_type) in content_types.into_iter().enumerate() {
        let body = format!(r#"{{"label": "A10cnQ{n}"}}"#);
        let response = app.retrieve_raw(Some(content_type), body).await;
        assert_eq!(response.status().as_u16(), 200, "{content_type}");
    }
}

#[tokio::test]
async fn oversized_bodies_are_413_and_never_reach_the_mpc() {
    let app = spawn_app_with(|settings| {
        settings.server.max_body_bytes = 256.try_into().unwrap();
    })
    .await;
    mpc_never_called(&app).await;
    let padding = "x".repeat(300);
    let body = format!(r#"{{"label": "A10cnQO", "padding": "{padding}"}}"#);

    let response = app
        .retrieve_raw(Some("application/json"), body.clone())
        .await;
    let problem = assert_problem(response, 413, "urn:mpc-gateway:payload-too-large").await;
    assert_eq!(problem["max_body_bytes"], 256);

    // Without a Content-Length the cap holds while streaming.
    let chunks: Vec<Result<String, std::io::Error>> = body
        .as_bytes()
        .chunks(64)
        .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
        .collect();
    let stream = futures_util::stream::iter(chunks);
    let response = app
        .retrieve_raw(Some("application/json"), reqwest::Body::wrap_stream(stream))
        .await;
    assert_problem(response, 413, "urn:mpc-gateway:payload-too-large").await;
}

#[tokio::test]
async fn content_type_is_checked_before_size() {
    let app = spawn_app_with(|settings| {
        settings.server.max_body_bytes = 16.try_into().unwrap();
    })
    .await;
    mpc_never_called(&app).await;

    let response = app.retrieve_raw(Some("text/plain"), "x".repeat(100)).await;

    assert_problem(response, 415, "urn:mpc-gateway:unsupported-media-type").await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = spawn_app().await;
    mpc_never_called(&app).await;

    let response = app
        .retrieve_with("bad label", &[("x-request-id", "trace-42.a:b_c")])
        .await;
    assert_eq!(response.headers()["x-request-id"], "trace-42.a:b_c");

    let response = app
        .retrieve_with("bad label", &[("x-request-id", "not acceptable!")])
        .await;
    let generated = response.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(generated, "not acceptable!");
    assert!(!generated.is_empty());

    let first = app.retrieve("bad label").await;
    let second = app.retrieve("bad label").await;
    assert_ne!(
        first.headers()["x-request-id"],
        second.headers()["x-request-id"]
    );
}

#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let app = spawn_app().await;
    mpc_never_called(&app).await;

    let response = app.public_get("/api/action-codes/retrieve").await;

    assert_eq!(response.headers()["allow"], "POST");
    assert_problem(response, 405, "urn:mpc-gateway:method-not-allowed").await;
}

#[tokio::test]
async fn unknown_paths_are_404_problems() {
    let app = spawn_app().await;
    mpc_never_called(&app).await;

    let response = app
        .client
        .post(format!("{}/api/action-codes/retrieve/extra", app.address))
        .json(&json!({"label": "A10cnQO"}))
        .send()
        .await
        .unwrap();

    assert_problem(response, 404, "urn:mpc-gateway:not-found").await;
}
