//! Reloading the configuration: what a reload applies, what it keeps, and
//! an invalid file refused, in-process and through SIGHUP to the binary.

use std::sync::Arc;
use std::time::Duration;

use mpc_action_gateway::auth::key_digest;
use mpc_action_gateway::clock::FakeClock;
use mpc_action_gateway::config::{ConfigError, Settings};
use serde_json::{Value, json};

use crate::helpers::{
    add_key, add_tier, assert_problem, metric_value, mpc_answers, run_binary, spawn_app_reloadable,
};

const ALICE: &str = "alice-key-0123456789";
const BOB: &str = "bob-key-0123456789";

fn bearer(key: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {key}"))
}

#[tokio::test]
async fn a_reload_applies_keys_and_anonymous_access_and_keeps_what_is_remembered() {
    let (app, reloader) = spawn_app_reloadable(
        |settings| add_key(settings, "alice", ALICE, "default"),
        Arc::new(FakeClock::default()),
        |settings| {
            settings.auth.allow_anonymous = false;
            settings.auth.keys.clear();
            add_key(settings, "bob", BOB, "default");
            Ok(())
        },
    )
    .await;
    mpc_answers(&app, 200, json!({}), 1).await;
    let sent: Value = app.retrieve("A10cnQO").await.json().await.unwrap();
    assert_eq!(sent["status"], "sent");
    let (name, alice) = bearer(ALICE);
    assert_eq!(
        app.label_status_with("A10cnQO", &[(name, &alice)])
            .await
            .status(),
        200
    );

    let reloaded = reloader.reload().expect("the new configuration is valid");
    assert!(reloaded.restart_needed.is_empty(), "{reloaded:?}");

    assert_problem(
        app.retrieve("A10cnQO").await,
        401,
        "urn:mpc-gateway:unauthenticated",
    )
    .await;
    assert_problem(
        app.label_status_with("A10cnQO", &[(name, &alice)]).await,
        401,
        "urn:mpc-gateway:unauthenticated",
    )
    .await;
    let (name, bob) = bearer(BOB);
    let remembered: Value = app
        .retrieve_with("A10cnQO", &[(name, &bob)])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        remembered["status"], "already_requested",
        "remembered outcomes survive a reload: no second MPC call"
    );
    assert_eq!(remembered["requested_at"], sent["requested_at"]);
    assert_eq!(
        app.metric("mpc_gateway_config_reloads_total{result=\"applied\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("mpc_gateway_config_reloads_total{result=\"rejected\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_reload_applies_new_tier_limits_to_the_quota_already_spent() {
    let (app, reloader) = spawn_app_reloadable(
        |settings| add_tier(settings, "default", 1000, 10, 1),
        Arc::new(FakeClock::default()),
        |settings| {
            add_tier(settings, "default", 1000, 10, 3);
            Ok(())
        },
    )
    .await;
    mpc_answers(&app, 200, json!({}), 3).await;
    assert_eq!(app.retrieve("A10cnQ1").await.status(), 200);
    assert_problem(
        app.retrieve("A10cnQ2").await,
        429,
        "urn:mpc-gateway:quota-exceeded",
    )
    .await;

    reloader.reload().unwrap();

    let response = app.retrieve("A10cnQ2").await;
    assert_eq!(response.status(), 200, "the new burst applies");
    assert_eq!(
        response.headers()["ratelimit"],
        "\"upstream\";r=1;t=720",
        "the unit spent before the reload is still spent"
    );
    assert_eq!(app.retrieve("A10cnQ3").await.status(), 200);
    assert_problem(
        app.retrieve("A10cnQ4").await,
        429,
        "urn:mpc-gateway:quota-exceeded",
    )
    .await;
}

#[tokio::test]
async fn a_reload_applies_a_new_courtesy_budget() {
    let clock = Arc::new(FakeClock::default());
    let (app, reloader) = spawn_app_reloadable(
        |settings| {
            add_tier(settings, "default", 1000, 1000, 1000);
            settings.upstream.max_per_minute = 1.try_into().unwrap();
        },
        clock.clone(),
        |settings| {
            settings.upstream.max_per_minute = 60.try_into().unwrap();
            Ok(())
        },
    )
    .await;
    mpc_answers(&app, 200, json!({}), 2).await;
    assert_eq!(app.retrieve("A10cnQ1").await.status(), 200);
    assert_problem(
        app.retrieve("A10cnQ2").await,
        503,
        "urn:mpc-gateway:gateway-busy",
    )
    .await;

    reloader.reload().unwrap();
    // At 60 a minute one more fits every second; at 1 a minute, not for 60 s.
    clock.advance(Duration::from_secs(2));
    assert_eq!(app.retrieve("A10cnQ2").await.status(), 200);
}

#[tokio::test]
async fn an_invalid_configuration_is_refused_and_the_running_one_stays() {
    let (app, reloader) = spawn_app_reloadable(
        |settings| {
            settings.auth.allow_anonymous = false;
            add_key(settings, "alice", ALICE, "default");
        },
        Arc::new(FakeClock::default()),
        |_| {
            Settings::load_from(
                None,
                Some(
                    [("MPC_GATEWAY__AUTH__ALLOW_ANONYMOUS", "maybe")]
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .into(),
                ),
            )
            .map(|_| ())
        },
    )
    .await;

    let error = reloader.reload().unwrap_err();
    assert!(
        matches!(&error, ConfigError::Invalid { key, .. } if key == "auth.allow_anonymous"),
        "{error}"
    );
    let (name, alice) = bearer(ALICE);
    assert_eq!(
        app.label_status_with("A10cnQO", &[(name, &alice)])
            .await
            .status(),
        200,
        "the running keys stay in force"
    );
    assert_eq!(app.label_status("A10cnQO").await.status(), 401);
    assert_eq!(
        app.metric("mpc_gateway_config_reloads_total{result=\"rejected\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("mpc_gateway_config_reloads_total{result=\"applied\"}")
            .await,
        0.0
    );
}

/// Polls `series` on the binary's admin listener until it reads `value`.
async fn await_metric(admin: &str, series: &str, value: f64) {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = client
            .get(format!("{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let read = metric_value(&text, series);
        if read == Some(value) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} is {read:?}, not {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn hangup(child: &std::process::Child) {
    // SAFETY: kill only sends a signal to the child we started.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGHUP);
    }
}

#[tokio::test]
async fn sighup_reloads_the_file_refuses_an_invalid_one_and_never_stops_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "[auth]\nallow_anonymous = true\n").unwrap();
    let running = run_binary(&["--config", config.to_str().unwrap()], &[]).await;
    let client = reqwest::Client::new();
    let status_of = |key: Option<&str>| {
        let mut request = client.get(format!(
            "{}/api/action-codes/labels/A10cnQO",
            running.public
        ));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status_of(None).await, 200, "anonymous at first");

    std::fs::write(
        &config,
        format!(
            "[auth]\nallow_anonymous = false\n[[auth.keys]]\nuser = \"bob\"\nsha256 = \"{}\"\ntier = \"default\"\n",
            key_digest(BOB)
        ),
    )
    .unwrap();
    hangup(&running.child);
    await_metric(
        &running.admin,
        "mpc_gateway_config_reloads_total{result=\"applied\"}",
        1.0,
    )
    .await;
    assert_eq!(status_of(None).await, 401, "anonymous access withdrawn");
    assert_eq!(status_of(Some(BOB)).await, 200, "the new key admitted");

    std::fs::write(&config, "[auth]\nallow_anonymous = \"sometimes\"\n").unwrap();
    hangup(&running.child);
    await_metric(
        &running.admin,
        "mpc_gateway_config_reloads_total{result=\"rejected\"}",
        1.0,
    )
    .await;
    assert_eq!(status_of(Some(BOB)).await, 200, "the running config stays");
    assert_eq!(status_of(None).await, 401);

    assert_eq!(
        running.terminate().await,
        Some(0),
        "a clean stop after both"
    );
}

#[tokio::test]
async fn a_reload_applies_a_keys_new_scopes() {
    let (app, reloader) = spawn_app_reloadable(
        |settings| {
            settings.auth.allow_anonymous = false;
            add_key(settings, "alice", ALICE, "default");
        },
        Arc::new(FakeClock::default()),
        |settings| {
            settings.auth.keys[0].scopes = vec![mpc_action_gateway::config::KeyScope::Status];
            Ok(())
        },
    )
    .await;
    mpc_answers(&app, 200, json!({}), 1).await;
    let (name, alice) = bearer(ALICE);
    let alice = [(name, alice.as_str())];
    assert_eq!(app.retrieve_with("A10cnQO", &alice).await.status(), 200);

    reloader.reload().expect("the new configuration is valid");

    let body = assert_problem(
        app.retrieve_with("A10cnQP", &alice).await,
        403,
        "urn:mpc-gateway:forbidden",
    )
    .await;
    assert_eq!(body["required_scope"], "retrieve");
    assert_eq!(app.label_status_with("A10cnQO", &alice).await.status(), 200);
}
