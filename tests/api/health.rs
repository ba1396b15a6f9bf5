//! The admin listener's liveness and readiness endpoints.

use serde_json::Value;
use utoipa::OpenApi;

use crate::helpers::spawn_app;

#[tokio::test]
async fn healthz_and_readyz_answer_200() {
    let app = spawn_app().await;

    for path in ["/healthz", "/readyz"] {
        let response = app.admin_get(path).await;
        assert_eq!(response.status().as_u16(), 200, "{path}");
        assert!(response.headers().contains_key("x-request-id"));
        let body: Value = response.json().await.unwrap();
        assert!(body["status"].is_string());
    }
}

#[tokio::test]
async fn admin_routes_are_not_on_the_public_listener() {
    let app = spawn_app().await;

    let response = app.public_get("/healthz").await;

    assert_eq!(response.status().as_u16(), 404);
}

#[tokio::test]
async fn public_routes_are_not_on_the_admin_listener() {
    let app = spawn_app().await;

    let response = app.admin_get("/api/action-codes/labels/A10cnQO").await;

    assert_eq!(response.status().as_u16(), 404);
}

#[tokio::test]
async fn the_openapi_document_needs_no_identity_and_covers_the_api() {
    let app =
        crate::helpers::spawn_app_with(|settings| settings.auth.allow_anonymous = false).await;

    let response = app.public_get("/openapi.json").await;

    assert_eq!(response.status().as_u16(), 200);
    let document: Value = response.json().await.unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let retrieve = &document["paths"]["/api/action-codes/retrieve"]["post"];
    for status in [
        "200", "400", "401", "413", "415", "422", "429", "4XX", "502", "503", "504",
    ] {
        assert!(
            retrieve["responses"].get(status).is_some(),
            "retrieve lacks {status}"
        );
    }
    assert!(document["paths"]["/api/action-codes/labels/{label}"]["get"].is_object());
    for path in [
        "/api/action-codes/batch/status",
        "/api/action-codes/batch/retrieve",
    ] {
        let batch = &document["paths"][path]["post"];
        for status in ["200", "400", "401", "403", "413", "415", "422", "429"] {
            assert!(
                batch["responses"].get(status).is_some(),
                "{path} lacks {status}"
            );
        }
    }
    let item = &document["components"]["schemas"]["BatchItem"]["properties"];
    for member in ["label", "status", "body"] {
        assert!(item.get(member).is_some(), "batch item lacks {member}");
    }
    let problem = &document["components"]["schemas"]["ProblemDocument"]["properties"];
    for member in [
        "type",
        "title",
        "status",
        "detail",
        "label",
        "reason",
        "accepted_formats",
        "upstream",
        "limit",
        "retry_after_seconds",
        "max_labels",
        "required_scope",
    ] {
        assert!(
            problem.get(member).is_some(),
            "problem schema lacks {member}"
        );
    }
}

#[test]
fn the_committed_openapi_document_is_the_generated_one() {
    let generated = mpc_action_gateway::http::openapi::ApiDoc::openapi()
        .to_pretty_json()
        .unwrap()
        + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is stale: run `cargo run --example write_openapi` and commit it"
    );
}
