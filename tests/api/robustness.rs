//! Any body at all gets 200 or a 4xx problem: never a 5xx, a panic or a hang,
//! and never an MPC call unless the body names a valid label.

use std::cell::RefCell;
use std::collections::HashSet;

use mpc_action_gateway::domain::label::Label;
use mpc_action_gateway::http::routes::retrieve::decode_body;
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::helpers::mpc::mpc_answering_any_request;
use crate::helpers::{add_tier, spawn_app_with};

fn bodies() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        any::<String>().prop_map(|label| json!({ "label": label }).to_string().into_bytes()),
        "[-A-Za-z0-9_:.T ]{0,40}"
            .prop_map(|label| json!({ "label": label }).to_string().into_bytes()),
        // Mostly valid, padded or not: the cases that must reach the MPC once.
        "[ \t]?[A-Za-z0-9]{1,9}[ \n]?"
            .prop_map(|label| json!({ "label": label }).to_string().into_bytes()),
        r#"\{("label"|"x"|label)?:? ?("[^"]{0,20}"|[0-9]+|null|true|\[\]|\{\})?,?\}?"#
            .prop_map(String::into_bytes),
    ]
}

/// The label the handler must forward for `body`, if any (decoding and
/// parsing have their own tests; this one checks what the gateway does).
fn valid_label(body: &[u8]) -> Option<Label> {
    Label::parse(&decode_body(body).ok()?.label).ok()
}

#[test]
fn any_body_gets_200_or_a_4xx_problem() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let app = runtime.block_on(async {
        // A tier that never limits: every case reaches the body check.
        let app = spawn_app_with(|settings| {
            add_tier(settings, "default", 1_000_000, 1_000_000, 1_000_000);
            settings.upstream.max_per_minute = 1_000_000.try_into().unwrap();
        })
        .await;
        // No expectation: each case counts the calls it caused.
        mpc_answering_any_request().mount(&app.mpc).await;
        app
    });
    let config = ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    };
    let sent = RefCell::new(HashSet::new());
    proptest!(config, |(body in bodies())| {
        let (status, content_type, calls) = runtime.block_on(async {
            let before = app.mpc.received_requests().await.unwrap().len();
            let response = app.retrieve_raw(Some("application/json"), body.clone()).await;
            let content_type = response.headers().get("content-type").cloned();
            let status = response.status().as_u16();
            let calls: Vec<Value> = app.mpc.received_requests().await.unwrap()[before..]
                .iter()
                .map(|request| serde_json::from_slice(&request.body).unwrap())
                .collect();
            (status, content_type, calls)
        });
        match valid_label(&body) {
            Some(label) => {
                prop_assert_eq!(status, 200);
                // A label already sent is answered from memory.
                let expected = if sent.borrow_mut().insert(label.clone()) {
                    vec![json!({ "label": label.as_str() })]
                } else {
                    vec![]
                };
                prop_assert_eq!(calls, expected);
            }
            None => {
                // Malformed, too large or an invalid label; a 429 would mean
                // the body was never looked at.
                prop_assert!([400, 413, 422].contains(&status), "status {}", status);
                prop_assert_eq!(content_type.unwrap(), "application/problem+json");
                prop_assert!(calls.is_empty(), "the MPC was called for {:?}", calls);
            }
        }
    });
    runtime.block_on(async move { drop(app) });
}
