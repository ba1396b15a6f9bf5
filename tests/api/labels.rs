//! `GET /api/action-codes/labels/{label}`: validation without contacting the MPC.

use serde_json::{Value, json};

use crate::helpers::{assert_problem, mpc_never_called, spawn_app};

#[tokio::test]
async fn valid_labels_are_reported_with_their_kind() {
    let app = spawn_app().await;
    mpc_never_called(&app).await;

    for (label, kind) in [
        ("A10cnQO", "trksub"),
        ("ABC12345", "trksub_or_trkid"),
        ("00000DwbEz", "trkid"),
        ("2024-05-02T21:03:35.001_0000FzZw", "submission_id"),
        ("2024-05-02T21:03:35.001_0000FzZw_01", "submission_block_id"),
    ] {
        let response = app.label_status(label).await;
        assert_eq!(response.status().as_u16(), 200, "{label}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({
                "label": label,
                "label_kind": kind,
                "valid": true,
                "last_requested_at": null,
                "resend_available_at": null,
            })
        );
    }
}

#[tokio::test]
async fn invalid_labels_get_the_same_422_as_retrieve() {
    let app = spawn_app().await;
    mpc_never_called(&app).await;

    let response = app.label_status("2024-02-30T00:00:00.000_0000FzZw").await;

    let body = assert_problem(response, 422, "urn:mpc-gateway:invalid-label").await;
    assert_eq!(body["label"], "2024-02-30T00:00:00.000_0000FzZw");
    assert!(body["reason"].as_str().unwrap().contains("day 30"));
    assert_eq!(body["accepted_formats"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn percent_encoded_whitespace_is_trimmed() {
    let app = spawn_app().await;
    mpc_never_called(&app).await;

    let response = app.label_status("%20A10cnQO%09").await;

    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["label"], "A10cnQO");
}
