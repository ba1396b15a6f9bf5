//! The admin listener's liveness and readiness endpoints.

use serde_json::Value;

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

    let response = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status().as_u16(), 404);
}

#[tokio::test]
async fn public_routes_are_not_on_the_admin_listener() {
    let app = spawn_app().await;

    let response = app.admin_get("/api/action-codes/labels/A10cnQO").await;

    assert_eq!(response.status().as_u16(), 404);
}
