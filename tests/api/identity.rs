//! Who is asking: API keys, the trusted proxy's user header, anonymous callers.

use serde_json::json;

use crate::helpers::{
    TestApp, add_key, assert_problem, captured_logs, logs_for_request, mpc_answers,
    mpc_never_called, spawn_app_with,
};

const KEY: &str = "mpcgw_integration_test_key_0123456789";

async fn locked_down(customise: impl FnOnce(&mut mpc_action_gateway::config::Settings)) -> TestApp {
    spawn_app_with(|settings| {
        settings.auth.allow_anonymous = false;
        add_key(settings, "alice", KEY, "default");
        customise(settings);
    })
    .await
}

#[tokio::test]
async fn bearer_and_x_api_key_both_identify() {
    let app = locked_down(|_| {}).await;
    mpc_answers(&app, 200, json!({}), 2).await;

    let bearer = format!("Bearer {KEY}");
    let response = app
        .retrieve_with("A10cnQO", &[("authorization", &bearer)])
        .await;
    assert_eq!(response.status().as_u16(), 200);
    let response = app.retrieve_with("A10cnQP", &[("x-api-key", KEY)]).await;
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn unknown_missing_or_malformed_credentials_get_401_and_no_mpc_call() {
    let app = locked_down(|_| {}).await;
    mpc_never_called(&app).await;

    let cases: [&[(&str, &str)]; 5] = [
        &[],
        &[("authorization", "Bearer not-a-known-key")],
        &[("x-api-key", "not-a-known-key")],
        &[("authorization", "Basic YWxpY2U6c2VjcmV0")],
        &[("x-forwarded-user", "alice")],
    ];
    for headers in cases {
        let response = app.retrieve_with("A10cnQO", headers).await;
        assert_eq!(
            response.headers()["www-authenticate"].to_str().unwrap(),
            "Bearer realm=\"mpc-action-gateway\""
        );
        assert!(!response.headers().contains_key("ratelimit"));
        assert_problem(response, 401, "urn:mpc-gateway:unauthenticated").await;
    }

    // Identity comes first: even a bad body or label gets 401.
    let response = app.retrieve_raw(Some("text/plain"), "junk").await;
    assert_problem(response, 401, "urn:mpc-gateway:unauthenticated").await;
    let response = app.label_status("A10cnQO").await;
    assert_problem(response, 401, "urn:mpc-gateway:unauthenticated").await;
}

#[tokio::test]
async fn a_spoofed_user_header_from_an_untrusted_peer_is_ignored() {
    // The header is configured, but loopback is not a trusted proxy.
    let app = locked_down(|settings| {
        settings.auth.trusted_user_header = "X-Forwarded-User".to_owned().try_into().unwrap();
        settings.auth.trusted_proxies = vec!["10.0.0.0/8".to_owned().try_into().unwrap()];
    })
    .await;
    mpc_never_called(&app).await;

    let response = app
        .retrieve_with("A10cnQO", &[("x-forwarded-user", "alice")])
        .await;

    assert_problem(response, 401, "urn:mpc-gateway:unauthenticated").await;
}

#[tokio::test]
async fn a_trusted_proxys_user_header_is_honoured() {
    let app = locked_down(|settings| {
        settings.auth.trusted_user_header = "X-Forwarded-User".to_owned().try_into().unwrap();
        settings.auth.trusted_proxies = vec!["127.0.0.0/8".to_owned().try_into().unwrap()];
    })
    .await;
    mpc_answers(&app, 200, json!({}), 1).await;

    let response = app
        .retrieve_with(
            "A10cnQO",
            &[
                ("x-forwarded-user", "carol@observatory.example"),
                ("x-request-id", "identity-trusted-header"),
            ],
        )
        .await;

    assert_eq!(response.status().as_u16(), 200);
    let logged_user = crate::helpers::logs_for_request("identity-trusted-header")
        .into_iter()
        .find(|line| line["message"] == "request finished")
        .map(|line| line["user"].clone());
    assert_eq!(logged_user, Some(json!("carol@observatory.example")));
}

#[tokio::test]
async fn anonymous_callers_are_served_when_allowed() {
    let app = spawn_app_with(|_| {}).await;
    mpc_answers(&app, 200, json!({}), 1).await;

    let response = app
        .retrieve_with("A10cnQO", &[("x-request-id", "identity-anonymous")])
        .await;

    assert_eq!(response.status().as_u16(), 200);
    let line = crate::helpers::logs_for_request("identity-anonymous")
        .into_iter()
        .find(|line| line["message"] == "request finished")
        .unwrap();
    assert_eq!(line["user"], "anonymous:127.0.0.1");
}

#[tokio::test]
async fn keys_digests_and_authorization_values_never_reach_the_logs() {
    let app = locked_down(|_| {}).await;
    mpc_answers(&app, 200, json!({}), 2).await;
    let bearer = format!("Bearer {KEY}");

    // Label, credential header and value, status, and the user logged.
    let cases: [(&str, &str, &str, u16, Option<&str>); 4] = [
        ("A10cnQO", "authorization", &bearer, 200, Some("alice")),
        ("A10cnQP", "x-api-key", KEY, 200, Some("alice")),
        (
            "A10cnQQ",
            "authorization",
            "Bearer wrong-secret-value",
            401,
            None,
        ),
        ("bad label", "x-api-key", KEY, 422, Some("alice")),
    ];
    let digest = mpc_action_gateway::auth::key_digest(KEY);
    for (index, (label, header, value, status, user)) in cases.into_iter().enumerate() {
        let request_id = format!("identity-secrets-{index}");
        let response = app
            .retrieve_with(label, &[(header, value), ("x-request-id", &request_id)])
            .await;
        assert_eq!(response.status().as_u16(), status, "{label}");

        let lines = logs_for_request(&request_id);
        let finished = lines
            .iter()
            .find(|line| line["message"] == "request finished")
            .unwrap_or_else(|| panic!("no closing log line for {label}"));
        assert_eq!(finished["user"], json!(user), "{label}");
        assert_eq!(finished["status"], status, "{label}");
        let logged: String = lines.iter().map(|line| format!("{line}\n")).collect();
        for secret in [KEY, digest.as_str(), "wrong-secret-value", "Bearer"] {
            assert!(!logged.contains(secret), "{secret} logged for {label}");
        }
    }
    // Nor outside a request's span, by this test or any other.
    let everything = captured_logs();
    for secret in [KEY, digest.as_str(), "wrong-secret-value"] {
        assert!(!everything.contains(secret), "{secret} appears in the logs");
    }
}
