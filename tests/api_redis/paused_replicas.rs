//! The MPC's pause across replicas: a 429 seen by one gateway stops every
//! gateway on the same Redis within a second, and callers waiting at other
//! replicas for the throttled call get its 503.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::matchers::body_partial_json;
use wiremock::{MockServer, ResponseTemplate};

use crate::helpers::mpc::{mpc_answering_any_request, mpc_call};
use crate::helpers::redis_server::{RedisServer, unique_prefix};
use crate::helpers::{TestApp, add_tier, assert_problem, mpc_received, on_redis, spawn_app_with};

/// Three gateways on the test run's Redis under one prefix, all calling `mpc`.
async fn three(mpc: &MockServer) -> Vec<TestApp> {
    let (url, prefix) = (RedisServer::shared().url(), unique_prefix());
    let mut gateways = Vec::new();
    for _ in 0..3 {
        let gateway = spawn_app_with(|settings| {
            settings.upstream.base_url = mpc.uri().parse().unwrap();
            add_tier(settings, "default", 100_000, 1000, 1000);
            on_redis(settings, &url, &prefix);
        })
        .await;
        gateways.push(gateway);
    }
    gateways
}

/// Asserts the 503 `upstream-throttled` problem of a pause of about a minute.
async fn assert_paused_for_a_minute(response: reqwest::Response) -> Value {
    let seconds: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((58..=60).contains(&seconds), "Retry-After: {seconds}");
    let body = assert_problem(response, 503, "urn:mpc-gateway:upstream-throttled").await;
    assert!(body["paused_until"].is_string(), "{body}");
    body
}

#[tokio::test]
async fn a_429_at_one_replica_pauses_every_replica_within_a_second() {
    let mpc = MockServer::start().await;
    mpc_call()
        .and(body_partial_json(json!({"label": "BUSY0001"})))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "60")
                .set_delay(Duration::from_millis(500)),
        )
        .expect(1)
        .named("the one call, throttled")
        .mount(&mpc)
        .await;
    mpc_answering_any_request()
        .expect(0)
        .named("no other call from any replica")
        .mount(&mpc)
        .await;
    let gateways = three(&mpc).await;

    // One replica makes the call; the others' callers wait for it.
    let leading = gateways[0].retrieve("BUSY0001");
    let waiting = async {
        mpc_received(&mpc, 1).await;
        futures_util::join!(
            gateways[1].retrieve("BUSY0001"),
            gateways[2].retrieve("BUSY0001")
        )
    };
    let (led, (first, second)) = tokio::join!(leading, waiting);
    let answered = Instant::now();
    let led = assert_paused_for_a_minute(led).await;
    for waited in [first, second] {
        let cache_status = waited.headers()["cache-status"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(cache_status.ends_with("collapsed"), "{cache_status}");
        let waited = assert_paused_for_a_minute(waited).await;
        assert!(
            waited["paused_until"] == led["paused_until"]
                || waited["paused_until"].as_str() > led["paused_until"].as_str(),
            "{waited} after {led}"
        );
    }

    // Every replica learns the pause within a second, and then forwards
    // nothing: not the throttled label, not a new one.
    for gateway in &gateways[1..] {
        loop {
            let ready: Value = gateway.admin_get("/readyz").await.json().await.unwrap();
            if ready["paused_until"].is_string() {
                break;
            }
            assert!(
                answered.elapsed() < Duration::from_secs(1),
                "not paused within 1 s: {ready}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(gateway.metric("mpc_gateway_upstream_paused").await, 1.0);
        for label in ["BUSY0001", "ABC12345"] {
            assert_paused_for_a_minute(gateway.retrieve(label).await).await;
        }
    }
    assert_paused_for_a_minute(gateways[0].retrieve("ABC12345").await).await;
}
