//! `mpc-action-gateway demo`: the whole flow, offline, against the simulated MPC.

use serde_json::{Value, json};

use crate::helpers::run_binary;

#[tokio::test]
async fn demo_serves_a_full_retrieve_duplicate_status_flow() {
    let demo = run_binary(&["demo"], &[]).await;
    let client = reqwest::Client::new();
    let retrieve = |label: &str| {
        client
            .post(format!("{}/api/action-codes/retrieve", demo.public))
            .json(&json!({ "label": label }))
            .send()
    };
    let label = "2024-05-02T21:03:35.001_0000FzZw";

    let first: Value = retrieve(label).await.unwrap().json().await.unwrap();
    assert_eq!(first["status"], "sent");
    assert!(
        first["upstream"]["body"]["message"]
            .as_str()
            .unwrap()
            .contains("no email was sent")
    );
    let second: Value = retrieve(label).await.unwrap().json().await.unwrap();
    assert_eq!(second["status"], "already_requested");
    assert_eq!(second["requested_at"], first["requested_at"]);
    let get = |url: String| async {
        let response = client.get(url).send().await.unwrap();
        response.json::<Value>().await.unwrap()
    };
    let status = get(format!("{}/api/action-codes/labels/{label}", demo.public)).await;
    assert_eq!(status["last_requested_at"], first["requested_at"]);

    let unknown = retrieve("Z99zzZ9").await.unwrap();
    assert_eq!(unknown.status().as_u16(), 404);
    let failing = retrieve("FAIL001").await.unwrap();
    assert_eq!(failing.status().as_u16(), 502);
    let admin = get(format!("{}/admin/labels/{label}", demo.admin)).await;
    assert_eq!(admin["user"], "anonymous:127.0.0.1");

    assert_eq!(demo.terminate().await, Some(0));
}
