//! Any body at all gets 200 or a 4xx problem: never a 5xx, a panic or a hang.

use proptest::prelude::*;
use serde_json::json;

use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::spawn_app;

fn bodies() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        any::<String>().prop_map(|label| json!({ "label": label }).to_string().into_bytes()),
        "[-A-Za-z0-9_:.T ]{0,40}"
            .prop_map(|label| json!({ "label": label }).to_string().into_bytes()),
        r#"\{("label"|"x"|label)?:? ?("[^"]{0,20}"|[0-9]+|null|true|\[\]|\{\})?,?\}?"#
            .prop_map(String::into_bytes),
    ]
}

#[test]
fn any_body_gets_200_or_a_4xx_problem() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let app = runtime.block_on(async {
        let app = spawn_app().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
            .mount(&app.mpc)
            .await;
        app
    });
    let config = ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    };
    proptest!(config, |(body in bodies())| {
        let (status, content_type) = runtime.block_on(async {
            let response = app.retrieve_raw(Some("application/json"), body.clone()).await;
            let content_type = response.headers().get("content-type").cloned();
            (response.status().as_u16(), content_type)
        });
        prop_assert!(status == 200 || (400..500).contains(&status), "status {}", status);
        if status != 200 {
            prop_assert_eq!(content_type.unwrap(), "application/problem+json");
        }
    });
    runtime.block_on(async move { drop(app) });
}
