//! Never the same email twice: remembered outcomes and coalescing.

use std::sync::Arc;
use std::time::Duration;

use crate::helpers::mpc::mpc_accepting_after;
use crate::helpers::{
    TestApp, add_key, add_tier, assert_problem, mpc_answers, mpc_received, raise_open_files_limit,
    spawn_app_with, spawn_app_with_clock,
};
use futures_util::future::join_all;
use mpc_action_gateway::clock::FakeClock;
use serde_json::{Value, json};

const LABEL: &str = "2024-05-02T21:03:35.001_0000FzZw";

/// The MPC accepting after `delay`, expecting exactly `calls` calls.
async fn slow_mpc(app: &TestApp, delay: Duration, calls: u64) {
    mpc_accepting_after(delay)
        .expect(calls)
        .mount(&app.mpc)
        .await;
}

fn cache_status(response: &reqwest::Response) -> String {
    response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// A gateway whose default tier would not get in the way of a crowd.
pub async fn roomy_app(
    customise: impl FnOnce(&mut mpc_action_gateway::config::Settings),
) -> TestApp {
    spawn_app_with(|settings| {
        add_tier(settings, "default", 100_000, 1000, 1000);
        customise(settings);
    })
    .await
}

#[tokio::test]
async fn five_hundred_concurrent_identical_requests_make_one_mpc_call() {
    raise_open_files_limit();
    let app = roomy_app(|_| {}).await;
    slow_mpc(&app, Duration::from_millis(300), 1).await;

    let responses = join_all((0..500).map(|_| app.retrieve(LABEL))).await;

    let mut stored = 0;
    for response in responses {
        assert_eq!(response.status().as_u16(), 200);
        let status = cache_status(&response);
        let body: Value = response.json().await.unwrap();
        if status.ends_with("fwd=miss; stored") {
            stored += 1;
            assert_eq!(body["status"], "sent");
        } else if status.ends_with("fwd=miss; collapsed") {
            assert_eq!(body["status"], "sent", "a coalesced waiter shares the call");
        } else {
            assert!(status.contains("; hit; ttl="), "{status}");
            assert_eq!(body["status"], "already_requested");
        }
        assert_eq!(body["upstream"]["body"]["message"], "queued");
    }
    assert_eq!(stored, 1, "exactly one request made the call");
}

#[tokio::test]
async fn concurrent_requests_from_different_users_share_one_call() {
    let app = roomy_app(|settings| {
        settings.auth.allow_anonymous = false;
        for user in ["alice", "bob", "carol"] {
            add_key(settings, user, &format!("key-of-{user}"), "default");
        }
    })
    .await;
    slow_mpc(&app, Duration::from_millis(300), 1).await;

    let requests = ["alice", "bob", "carol"].map(|user| {
        let key = format!("key-of-{user}");
        let app = &app;
        async move { app.retrieve_with(LABEL, &[("x-api-key", &key)]).await }
    });
    let responses = join_all(requests).await;

    for response in responses {
        assert_eq!(response.status().as_u16(), 200);
    }
    let later = app
        .retrieve_with(LABEL, &[("x-api-key", "key-of-bob")])
        .await;
    let body: Value = later.json().await.unwrap();
    assert_eq!(
        body["status"], "already_requested",
        "deduplication is across users"
    );
}

/// Sends `label` and, once the MPC has the call, aborts the connection (a
/// TCP reset, which makes the server drop the request's handler: a plain
/// close does not), as a caller that gives up mid-call would.
async fn leave_mid_call(app: &TestApp, label: &str) {
    use tokio::io::AsyncWriteExt;
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let body = json!({ "label": label }).to_string();
    let head = format!(
        "POST /api/action-codes/retrieve HTTP/1.1\r\nhost: {address}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(format!("{head}{body}").as_bytes())
        .await
        .unwrap();
    mpc_received(&app.mpc, 1).await;
    let socket = stream.into_std().unwrap();
    crate::helpers::reset_on_drop(&socket);
    drop(socket);
}

#[tokio::test]
async fn a_leader_that_disconnects_does_not_cause_a_second_call() {
    let app = roomy_app(|settings| settings.upstream.timeout = Duration::from_secs(10)).await;
    slow_mpc(&app, Duration::from_secs(2), 1).await;

    leave_mid_call(&app, LABEL).await;

    // Others arrive while the call the leader started is (almost surely)
    // still in flight; they join it, or find its outcome if it has settled.
    let responses = join_all((0..5).map(|_| app.retrieve(LABEL))).await;
    let mut requested_at = Vec::new();
    for response in responses {
        assert_eq!(response.status().as_u16(), 200);
        let status = cache_status(&response);
        let body: Value = response.json().await.unwrap();
        if status.ends_with("fwd=miss; collapsed") {
            assert_eq!(body["status"], "sent");
        } else {
            assert!(status.contains("; hit; ttl="), "{status}");
            assert_eq!(body["status"], "already_requested");
        }
        requested_at.push(body["requested_at"].clone());
    }
    let response = app.retrieve(LABEL).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "already_requested");
    requested_at.push(body["requested_at"].clone());
    assert!(
        requested_at.iter().all(|at| *at == requested_at[0]),
        "all from the leader's one call: {requested_at:?}"
    );
    app.mpc.verify().await;
}

#[tokio::test]
async fn a_leader_that_disconnects_alone_still_completes_and_remembers() {
    let app = roomy_app(|_| {}).await;
    slow_mpc(&app, Duration::from_millis(300), 1).await;

    leave_mid_call(&app, LABEL).await;
    // Settled without anyone waiting: the admin view shows the outcome.
    let settled = async {
        while app
            .admin_get(&format!("/admin/labels/{LABEL}"))
            .await
            .status()
            != 200
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), settled)
        .await
        .expect("the abandoned call settles and is remembered");

    let response = app.retrieve(LABEL).await;
    assert!(cache_status(&response).contains("hit"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "already_requested");
    app.mpc.verify().await;
}

#[tokio::test]
async fn an_accepted_label_is_answered_from_memory() {
    let app = roomy_app(|_| {}).await;
    mpc_answers(&app, 200, json!({"message": "queued"}), 1).await;

    let first = app.retrieve(LABEL).await;
    assert_eq!(cache_status(&first), "mpc-action-gateway; fwd=miss; stored");
    let first: Value = first.json().await.unwrap();
    let second = app.retrieve(&format!("  {LABEL}\n")).await;
    let status = cache_status(&second);
    let ttl: u64 = status
        .strip_prefix("mpc-action-gateway; hit; ttl=")
        .unwrap()
        .parse()
        .unwrap();
    assert!((3590..=3600).contains(&ttl), "{status}");
    let second: Value = second.json().await.unwrap();

    assert_eq!(first["status"], "sent");
    assert_eq!(second["status"], "already_requested");
    assert_eq!(second["requested_at"], first["requested_at"]);
    assert_eq!(second["resend_available_at"], first["resend_available_at"]);
    assert_eq!(second["upstream"], first["upstream"]);
    let requested = humantime::parse_rfc3339(first["requested_at"].as_str().unwrap()).unwrap();
    let resend = humantime::parse_rfc3339(first["resend_available_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        resend.duration_since(requested).unwrap(),
        Duration::from_secs(3600)
    );

    let status: Value = app.label_status(LABEL).await.json().await.unwrap();
    assert_eq!(status["last_requested_at"], first["requested_at"]);
    assert_eq!(status["resend_available_at"], first["resend_available_at"]);
}

#[tokio::test]
async fn an_mpc_rejection_is_remembered() {
    let app = roomy_app(|_| {}).await;
    mpc_answers(&app, 404, json!({"error": "unknown label"}), 1).await;

    let first = app.retrieve("A10cnQO").await;
    assert_eq!(cache_status(&first), "mpc-action-gateway; fwd=miss; stored");
    assert_problem(first, 404, "urn:mpc-gateway:upstream-rejected").await;

    let second = app.retrieve("A10cnQO").await;
    assert!(cache_status(&second).contains("; hit; ttl="));
    let body = assert_problem(second, 404, "urn:mpc-gateway:upstream-rejected").await;
    assert_eq!(body["upstream"]["body"]["error"], "unknown label");
}

#[tokio::test]
async fn an_mpc_server_error_is_not_remembered() {
    let app = roomy_app(|_| {}).await;
    mpc_answers(&app, 500, json!({"error": "boom"}), 2).await;

    for _ in 0..2 {
        let response = app.retrieve("A10cnQO").await;
        assert_eq!(cache_status(&response), "mpc-action-gateway; fwd=miss");
        assert_problem(response, 502, "urn:mpc-gateway:upstream-error").await;
    }
}

#[tokio::test]
async fn a_timeout_is_remembered_as_uncertain() {
    let app = roomy_app(|settings| {
        settings.upstream.timeout = Duration::from_millis(300);
        settings.upstream.connect_timeout = Duration::from_millis(300);
    })
    .await;
    slow_mpc(&app, Duration::from_secs(3), 1).await;

    let first = app.retrieve("A10cnQO").await;
    let first_wait: u64 = first.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((119..=120).contains(&first_wait), "{first_wait}");
    assert_problem(first, 504, "urn:mpc-gateway:upstream-timeout").await;

    let second = app.retrieve("A10cnQO").await;
    assert!(cache_status(&second).contains("; hit; ttl="));
    assert!(second.headers().contains_key("retry-after"));
    let body = assert_problem(second, 504, "urn:mpc-gateway:upstream-timeout").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("check the mailbox")
    );
}

#[tokio::test]
async fn the_next_request_after_the_lifetime_is_forwarded_again() {
    let ttl = Duration::from_secs(3600);
    let clock = Arc::new(FakeClock::default());
    let customise = |settings: &mut mpc_action_gateway::config::Settings| {
        add_tier(settings, "default", 100_000, 1000, 1000);
        settings.dedup.sent_ttl = ttl;
    };
    let app = spawn_app_with_clock(customise, clock.clone()).await;
    mpc_answers(&app, 200, json!({}), 2).await;

    let first: Value = app.retrieve("A10cnQO").await.json().await.unwrap();
    clock.advance(ttl - Duration::from_secs(1));
    let second: Value = app.retrieve("A10cnQO").await.json().await.unwrap();
    clock.advance(Duration::from_secs(1));
    let third: Value = app.retrieve("A10cnQO").await.json().await.unwrap();

    assert_eq!(first["status"], "sent");
    assert_eq!(second["status"], "already_requested");
    assert_eq!(third["status"], "sent");
}

#[tokio::test]
async fn remembered_answers_and_waiters_cost_no_upstream_quota() {
    let app = spawn_app_with(|settings| {
        settings.auth.allow_anonymous = false;
        add_tier(settings, "single", 100, 10, 1);
        add_key(settings, "alice", "alice-key", "single");
        add_key(settings, "bob", "bob-key", "single");
        settings.upstream.timeout = Duration::from_secs(10);
    })
    .await;
    slow_mpc(&app, Duration::from_secs(2), 2).await;
    let alice = [("x-api-key", "alice-key")];
    let bob = [("x-api-key", "bob-key")];

    // Alice leads; once the MPC holds her call (for 2 s), Bob asks and waits
    // on it: Bob's only unit is untouched.
    let (lead, wait) = tokio::join!(app.retrieve_with(LABEL, &alice), async {
        mpc_received(&app.mpc, 1).await;
        app.retrieve_with(LABEL, &bob).await
    });
    assert_eq!(lead.status().as_u16(), 200);
    assert_eq!(wait.status().as_u16(), 200);
    assert!(cache_status(&wait).ends_with("collapsed"));
    assert_eq!(wait.headers()["ratelimit"], "\"upstream\";r=1;t=0");
    // Remembered answers are free too, even with the quota spent.
    let again = app.retrieve_with(LABEL, &alice).await;
    assert_eq!(again.status().as_u16(), 200);
    // Bob can still send a label of his own; Alice cannot.
    assert_eq!(
        app.retrieve_with("A10cnQO", &bob).await.status().as_u16(),
        200
    );
    assert_eq!(
        app.retrieve_with("A10cnQP", &alice).await.status().as_u16(),
        429
    );
}

#[tokio::test]
async fn admin_shows_who_asked_and_can_forget() {
    let app = roomy_app(|settings| {
        settings.auth.allow_anonymous = false;
        add_key(settings, "alice", "alice-key", "default");
    })
    .await;
    mpc_answers(&app, 200, json!({"message": "queued"}), 2).await;
    let alice = [("x-api-key", "alice-key")];

    let missing = app.admin_get(&format!("/admin/labels/{LABEL}")).await;
    assert_problem(missing, 404, "urn:mpc-gateway:not-found").await;

    app.retrieve_with(LABEL, &alice).await;
    let shown = app.admin_get(&format!("/admin/labels/{LABEL}")).await;
    assert_eq!(shown.status().as_u16(), 200);
    let shown: Value = shown.json().await.unwrap();
    assert_eq!(shown["label"], LABEL);
    assert_eq!(shown["outcome"], "sent");
    assert_eq!(shown["user"], "alice");
    assert_eq!(shown["upstream"]["status"], 200);
    assert!(shown["requested_at"].is_string() && shown["expires_at"].is_string());

    let forgotten = app.admin_delete(&format!("/admin/labels/{LABEL}")).await;
    assert_eq!(forgotten.status().as_u16(), 200);
    let again = app.admin_delete(&format!("/admin/labels/{LABEL}")).await;
    assert_problem(again, 404, "urn:mpc-gateway:not-found").await;

    let response: Value = app.retrieve_with(LABEL, &alice).await.json().await.unwrap();
    assert_eq!(response["status"], "sent", "forgotten: forwarded again");
}

#[tokio::test]
async fn admin_routes_require_the_token_when_one_is_set() {
    let token = "admin-token-for-tests";
    let app = roomy_app(|settings| {
        settings.admin.token_sha256 = mpc_action_gateway::auth::key_digest(token)
            .try_into()
            .unwrap();
    })
    .await;
    let url = format!("{}/admin/labels/{LABEL}", app.admin_address);

    for auth in [None, Some("Bearer wrong"), Some("Basic x")] {
        let mut request = app.client.get(&url);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_problem(response, 401, "urn:mpc-gateway:unauthenticated").await;
    }
    let response = app
        .client
        .get(&url)
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        404,
        "authorised; nothing remembered"
    );
    assert_eq!(app.admin_get("/healthz").await.status().as_u16(), 200);
}
