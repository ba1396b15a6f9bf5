//! Several gateways on one Redis act as one gateway: one MPC call per
//! label, one quota per user and one courtesy budget across them, a forget
//! at one honoured by all; and what a replica killed mid-call, or Redis
//! stopped, emptied, flushed of its scripts or slow, leaves behind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use mpc_action_gateway::clock::FakeClock;
use mpc_action_gateway::config::Settings;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use wiremock::MockServer;

use crate::helpers::mpc::{mpc_accepting_after, mpc_answering};
use crate::helpers::raw_mpc::raw_mpc;
use crate::helpers::redis_server::{RedisServer, unique_prefix};
use crate::helpers::{
    TestApp, add_tier, assert_problem, mpc_received, on_redis, raise_open_files_limit, run_binary,
    spawn_app_with, spawn_app_with_clock,
};

const LABEL: &str = "2024-05-02T21:03:35.001_0000FzZw";

/// `count` gateways sharing the Redis at `url` under `prefix`, all calling
/// `mpc`, each adjusted by `customise`.
async fn replicas(
    count: usize,
    mpc: &MockServer,
    url: &str,
    prefix: &str,
    customise: impl Fn(&mut Settings),
) -> Vec<TestApp> {
    let mut gateways = Vec::new();
    for _ in 0..count {
        let gateway = spawn_app_with(|settings| {
            settings.upstream.base_url = mpc.uri().parse().unwrap();
            add_tier(settings, "default", 100_000, 1000, 1000);
            on_redis(settings, url, prefix);
            customise(settings);
        })
        .await;
        gateways.push(gateway);
    }
    gateways
}

/// Three gateways on the test run's shared Redis, under a prefix of their own.
async fn three(mpc: &MockServer, customise: impl Fn(&mut Settings)) -> Vec<TestApp> {
    let url = RedisServer::shared().url();
    replicas(3, mpc, &url, &unique_prefix(), customise).await
}

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.unwrap()
}

/// Sends a retrieve of `label` on a raw connection, to be dropped mid-call.
async fn send_and_hold(address: &str, label: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let address = address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let body = json!({ "label": label }).to_string();
    let request = format!(
        "POST /api/action-codes/retrieve HTTP/1.1\r\nhost: {address}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// Retries `ask` until `done` holds of the answer, for at most `within`.
async fn eventually(
    within: Duration,
    mut ask: impl AsyncFnMut() -> reqwest::Response,
    done: impl Fn(u16, &Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let response = ask().await;
        let status = response.status().as_u16();
        let body = json_of(response).await;
        if done(status, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "not within {within:?}; last answer {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn five_hundred_requests_over_three_gateways_half_leaving_make_one_mpc_call() {
    raise_open_files_limit();
    let mpc = MockServer::start().await;
    mpc_accepting_after(Duration::from_millis(500))
        .expect(1)
        .mount(&mpc)
        .await;
    let gateways = three(&mpc, |_| {}).await;

    // Half the callers give up mid-call: their sockets are reset once the
    // MPC holds the call.
    let mut leaving = Vec::new();
    for index in 0..250 {
        leaving.push(send_and_hold(&gateways[index % 3].address, LABEL).await);
    }
    let staying = join_all((0..250).map(|index| gateways[index % 3].retrieve(LABEL)));
    let leave = async {
        mpc_received(&mpc, 1).await;
        for stream in leaving {
            let socket = stream.into_std().unwrap();
            crate::helpers::reset_on_drop(&socket);
        }
    };
    let (responses, ()) = tokio::join!(staying, leave);
    let mut answers = Vec::new();
    for response in responses {
        answers.push((response.status().as_u16(), json_of(response).await));
    }
    assert_eq!(answers.len(), 250);
    let mut requested_at = None;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert!(
            body["status"] == "sent" || body["status"] == "already_requested",
            "{body}"
        );
        let at = body["requested_at"].as_str().unwrap().to_owned();
        assert_eq!(
            requested_at.get_or_insert(at.clone()),
            &at,
            "one call, one time"
        );
    }
    for gateway in &gateways {
        let body = json_of(gateway.retrieve(LABEL).await).await;
        assert_eq!(body["status"], "already_requested");
        assert_eq!(body["requested_at"].as_str(), requested_at.as_deref());
    }
    assert_eq!(mpc.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_label_sent_at_one_is_already_requested_at_the_others_with_the_same_time() {
    let mpc = MockServer::start().await;
    mpc_answering(200, json!({"message": "queued"}))
        .expect(1)
        .mount(&mpc)
        .await;
    let gateways = three(&mpc, |_| {}).await;
    let sent = json_of(gateways[0].retrieve(LABEL).await).await;
    assert_eq!(sent["status"], "sent");
    for gateway in &gateways[1..] {
        let response = gateway.retrieve(LABEL).await;
        let cache_status = response.headers()["cache-status"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(cache_status.contains("; hit; ttl="), "{cache_status}");
        let body = json_of(response).await;
        assert_eq!(body["status"], "already_requested");
        assert_eq!(body["requested_at"], sent["requested_at"]);
        let status = json_of(gateway.label_status(LABEL).await).await;
        assert_eq!(status["last_requested_at"], sent["requested_at"]);
    }
}

#[tokio::test]
async fn a_users_upstream_quota_is_shared_by_every_gateway() {
    let mpc = MockServer::start().await;
    mpc_answering(200, json!({})).expect(2).mount(&mpc).await;
    let gateways = three(&mpc, |settings| {
        add_tier(settings, "default", 1000, 10, 2);
    })
    .await;
    for (gateway, label) in gateways.iter().zip(["A10cnQ1", "A10cnQ2"]) {
        assert_eq!(gateway.retrieve(label).await.status(), 200, "{label}");
    }
    for (gateway, label) in gateways
        .iter()
        .cycle()
        .skip(2)
        .zip(["A10cnQ3", "A10cnQ4", "A10cnQ5"])
    {
        let problem = assert_problem(
            gateway.retrieve(label).await,
            429,
            "urn:mpc-gateway:quota-exceeded",
        )
        .await;
        assert_eq!(problem["limit"], "upstream_per_hour", "{problem}");
    }
}

#[tokio::test]
async fn the_courtesy_budget_is_shared_by_every_gateway() {
    let mpc = MockServer::start().await;
    mpc_answering(200, json!({})).expect(2).mount(&mpc).await;
    let gateways = three(&mpc, |settings| {
        settings.upstream.max_per_minute = 2.try_into().unwrap();
    })
    .await;
    assert_eq!(gateways[0].retrieve("A10cnQ1").await.status(), 200);
    assert_eq!(gateways[1].retrieve("A10cnQ2").await.status(), 200);
    assert_problem(
        gateways[2].retrieve("A10cnQ3").await,
        503,
        "urn:mpc-gateway:gateway-busy",
    )
    .await;
}

#[tokio::test]
async fn a_forget_at_one_gateway_is_honoured_by_the_others_within_a_second() {
    let mpc = MockServer::start().await;
    mpc_answering(200, json!({})).expect(2).mount(&mpc).await;
    let gateways = three(&mpc, |_| {}).await;
    assert_eq!(
        json_of(gateways[0].retrieve(LABEL).await).await["status"],
        "sent"
    );
    for gateway in &gateways[1..] {
        // Now held in each gateway's own memory too.
        let body = json_of(gateway.retrieve(LABEL).await).await;
        assert_eq!(body["status"], "already_requested");
    }
    let forgotten = gateways[0]
        .admin_delete(&format!("/admin/labels/{LABEL}"))
        .await;
    assert_eq!(forgotten.status(), 200);
    for gateway in &gateways[1..] {
        eventually(
            Duration::from_secs(1),
            async || gateway.label_status(LABEL).await,
            |_, body| body["last_requested_at"].is_null(),
        )
        .await;
    }
    let again = json_of(gateways[2].retrieve(LABEL).await).await;
    assert_eq!(again["status"], "sent", "forwarded again");
}

#[tokio::test]
async fn a_replica_killed_mid_call_leaves_the_label_uncertain_for_the_others() {
    let mpc = MockServer::start().await;
    mpc_accepting_after(Duration::from_secs(30))
        .up_to_n_times(1)
        .expect(1)
        .mount(&mpc)
        .await;
    mpc_answering(200, json!({})).expect(1).mount(&mpc).await;
    let redis = RedisServer::shared().url();
    let prefix = unique_prefix();
    let uri = mpc.uri();
    let victim = run_binary(
        &[],
        &[
            ("MPC_GATEWAY__UPSTREAM__BASE_URL", &uri),
            ("MPC_GATEWAY__UPSTREAM__TIMEOUT", "2s"),
            ("MPC_GATEWAY__UPSTREAM__CONNECT_TIMEOUT", "1s"),
            ("MPC_GATEWAY__STORE__BACKEND", "redis"),
            ("MPC_GATEWAY__STORE__REDIS_URL", &redis),
            ("MPC_GATEWAY__STORE__KEY_PREFIX", &prefix),
        ],
    )
    .await;
    let call = tokio::spawn(
        reqwest::Client::new()
            .post(format!("{}/api/action-codes/retrieve", victim.public))
            .json(&json!({"label": LABEL}))
            .send(),
    );
    mpc_received(&mpc, 1).await;
    drop(victim); // SIGKILL, mid-call
    assert!(
        call.await.unwrap().is_err(),
        "the killed replica never answered"
    );

    let survivors = replicas(2, &mpc, &redis, &prefix, |settings| {
        settings.upstream.timeout = Duration::from_secs(2);
    })
    .await;
    for survivor in &survivors {
        let problem = assert_problem(
            survivor.retrieve(LABEL).await,
            504,
            "urn:mpc-gateway:upstream-timeout",
        )
        .await;
        assert!(problem["detail"].is_string());
    }
    let again = survivors[0].retrieve(LABEL).await;
    let cache_status = again.headers()["cache-status"].to_str().unwrap();
    assert!(
        cache_status.contains("; hit; ttl="),
        "a call past its deadline is answered at once, as remembered: {cache_status}"
    );
    let retry_after: u64 = again.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=120).contains(&retry_after),
        "until dedup.uncertain_ttl after the call began: {retry_after}"
    );
    assert_problem(again, 504, "urn:mpc-gateway:upstream-timeout").await;
    assert_eq!(
        mpc.received_requests().await.unwrap().len(),
        1,
        "no second call inside uncertain_ttl"
    );

    // An operator who checked the mailbox lets it be sent again.
    let forgotten = survivors[1]
        .admin_delete(&format!("/admin/labels/{LABEL}"))
        .await;
    assert_eq!(forgotten.status(), 200);
    let sent = json_of(survivors[0].retrieve(LABEL).await).await;
    assert_eq!(sent["status"], "sent", "{sent}");
}

#[tokio::test]
async fn redis_stopped_mid_traffic_forwards_nothing_then_service_resumes_by_itself() {
    let mut redis = RedisServer::start();
    let mpc = MockServer::start().await;
    mpc_answering(200, json!({})).expect(2).mount(&mpc).await;
    let gateways = replicas(1, &mpc, &redis.url(), &unique_prefix(), |_| {}).await;
    let gateway = &gateways[0];
    assert_eq!(gateway.retrieve("A10cnQ1").await.status(), 200);

    redis.kill();
    for label in ["A10cnQ2", "A10cnQ3", "A10cnQ4"] {
        let response = gateway.retrieve(label).await;
        assert_eq!(response.headers()["retry-after"], "1");
        assert_problem(response, 503, "urn:mpc-gateway:store-unavailable").await;
    }
    let remembered = json_of(gateway.retrieve("A10cnQ1").await).await;
    assert_eq!(
        remembered["status"], "already_requested",
        "what this replica holds still answers"
    );
    let ready = gateway.admin_get("/readyz").await;
    assert_eq!(ready.status(), 200);
    assert_eq!(json_of(ready).await["store"], "down");
    assert_eq!(gateway.metric("mpc_gateway_store_up").await, 0.0);
    assert!(
        gateway
            .metric("mpc_gateway_store_errors_total{operation=\"claim\"}")
            .await
            >= 3.0
    );
    assert_eq!(mpc.received_requests().await.unwrap().len(), 1);

    redis.restart();
    let resumed = Instant::now();
    eventually(
        Duration::from_secs(5),
        async || gateway.retrieve("A10cnQ5").await,
        |status, _| status == 200,
    )
    .await;
    println!(
        "service resumed {:?} after Redis answered again",
        resumed.elapsed()
    );
    assert_eq!(gateway.metric("mpc_gateway_store_up").await, 1.0);
    assert_eq!(
        json_of(gateway.admin_get("/readyz").await).await["store"],
        "up"
    );
}

#[tokio::test]
async fn redis_restarted_empty_sends_nothing_a_live_replica_remembers() {
    let mut redis = RedisServer::start();
    let mpc = MockServer::start().await;
    mpc_answering(200, json!({"message": "queued"}))
        .expect(1)
        .mount(&mpc)
        .await;
    let gateways = replicas(2, &mpc, &redis.url(), &unique_prefix(), |_| {}).await;
    let sent = json_of(gateways[0].retrieve(LABEL).await).await;
    assert_eq!(sent["status"], "sent");

    redis.restart();
    // The other replica never saw the label: only the one that did can tell.
    let answer = eventually(
        Duration::from_secs(5),
        async || gateways[1].retrieve(LABEL).await,
        |status, _| status != 503,
    )
    .await;
    assert_eq!(answer["status"], "already_requested", "{answer}");
    assert_eq!(answer["requested_at"], sent["requested_at"]);
    assert_eq!(mpc.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn scripts_flushed_from_redis_are_loaded_again() {
    let redis = RedisServer::start();
    let mpc = MockServer::start().await;
    mpc_answering(200, json!({})).expect(2).mount(&mpc).await;
    let gateways = replicas(2, &mpc, &redis.url(), &unique_prefix(), |settings| {
        add_tier(settings, "default", 1000, 10, 2);
    })
    .await;
    assert_eq!(gateways[0].retrieve("A10cnQ1").await.status(), 200);
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]), "OK");
    let remembered = json_of(gateways[1].retrieve("A10cnQ1").await).await;
    assert_eq!(remembered["status"], "already_requested");
    assert_eq!(gateways[1].retrieve("A10cnQ2").await.status(), 200);
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]), "OK");
    assert_problem(
        gateways[0].retrieve("A10cnQ3").await,
        429,
        "urn:mpc-gateway:quota-exceeded",
    )
    .await;
}

#[tokio::test]
async fn redis_slower_than_the_timeout_gets_bounded_answers() {
    let redis = RedisServer::start();
    let mpc = MockServer::start().await;
    mpc_answering(200, json!({})).expect(1).mount(&mpc).await;
    let gateways = replicas(1, &mpc, &redis.url(), &unique_prefix(), |settings| {
        settings.store.timeout = Duration::from_millis(200);
    })
    .await;
    let gateway = &gateways[0];
    assert_eq!(gateway.retrieve("A10cnQ1").await.status(), 200);

    let socket = redis.socket();
    let sleeping = std::thread::spawn(move || {
        std::process::Command::new("redis-cli")
            .arg("-s")
            .arg(socket)
            .args(["DEBUG", "SLEEP", "3"])
            .output()
            .unwrap()
    });
    while redis.answers_within(Duration::from_millis(100)) {}
    let response = gateway.retrieve("A10cnQ2").await;
    assert!(!sleeping.is_finished(), "answered while Redis still sleeps");
    assert_problem(response, 503, "urn:mpc-gateway:store-unavailable").await;
    let remembered = json_of(gateway.retrieve("A10cnQ1").await).await;
    assert_eq!(remembered["status"], "already_requested");
    assert!(!sleeping.is_finished(), "answered while Redis still sleeps");
    sleeping.join().unwrap();
    assert_eq!(mpc.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_server_that_may_evict_the_gateways_keys_is_warned_about_at_start_up() {
    let redis = RedisServer::start();
    assert_eq!(
        redis.cli(&["CONFIG", "SET", "maxmemory-policy", "volatile-lru"]),
        "OK"
    );
    let url = redis.url();
    let mut gateway = run_binary(
        &[],
        &[
            ("MPC_GATEWAY__STORE__BACKEND", "redis"),
            ("MPC_GATEWAY__STORE__REDIS_URL", &url),
        ],
    )
    .await;
    let warning = gateway
        .logs
        .until(|line| line["maxmemory_policy"].is_string())
        .await;
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["maxmemory_policy"], "volatile-lru");
    assert!(warning["message"].as_str().unwrap().contains("noeviction"));
}

/// A status read right after Redis lost its data, by `read` (which answers
/// the label's `last_requested_at`), leaves the label remembered here and
/// written back: the next retrieve is answered, not sent again.
async fn a_status_read_after_lost_data_sends_nothing_again(read: impl AsyncFn(&TestApp) -> Value) {
    let redis = RedisServer::start();
    let clock = Arc::new(FakeClock::default());
    let gateway = spawn_app_with_clock(
        |settings| on_redis(settings, &redis.url(), &unique_prefix()),
        clock.clone(),
    )
    .await;
    mpc_answering(200, json!({}))
        .expect(1)
        .mount(&gateway.mpc)
        .await;
    let sent = json_of(gateway.retrieve(LABEL).await).await;
    assert_eq!(sent["status"], "sent");

    assert_eq!(redis.cli(&["FLUSHALL"]), "OK");
    // Past the time a copy is answered without asking Redis.
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        read(&gateway).await,
        sent["requested_at"],
        "Redis lost it; this replica did not"
    );
    let again = eventually(
        Duration::from_secs(10),
        async || gateway.retrieve(LABEL).await,
        |status, _| status != 503,
    )
    .await;
    assert_eq!(again["status"], "already_requested", "{again}");
    assert_eq!(again["requested_at"], sent["requested_at"]);
    assert_eq!(gateway.mpc.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_label_status_read_after_lost_data_sends_nothing_again() {
    a_status_read_after_lost_data_sends_nothing_again(async |gateway| {
        json_of(gateway.label_status(LABEL).await).await["last_requested_at"].clone()
    })
    .await;
}

#[tokio::test]
async fn a_batch_status_read_after_lost_data_sends_nothing_again() {
    a_status_read_after_lost_data_sends_nothing_again(async |gateway| {
        let batch = json_of(gateway.batch("status", &[LABEL], &[]).await).await;
        batch["items"][0]["body"]["last_requested_at"].clone()
    })
    .await;
}

#[tokio::test]
async fn a_failed_call_whose_settle_was_lost_holds_nothing() {
    let redis = RedisServer::start();
    // Answers 500 to each request once the test lets it.
    let answer = Arc::new(Semaphore::new(0));
    let mpc = raw_mpc({
        let answer = Arc::clone(&answer);
        move |mut stream| {
            let answer = Arc::clone(&answer);
            async move {
                answer.acquire().await.unwrap().forget();
                let _ = stream
                    .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        }
    })
    .await;
    let gateway = spawn_app_with(|settings| {
        settings.upstream.base_url = mpc.address.parse().unwrap();
        settings.upstream.timeout = Duration::from_secs(2);
        settings.store.timeout = Duration::from_millis(200);
        on_redis(settings, &redis.url(), &unique_prefix());
    })
    .await;
    let cut_then_answer = async {
        while mpc.requests() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The gateway's connection to Redis dies while the MPC answers:
        // the settle of the 500 is lost.
        assert_ne!(redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]), "0");
        answer.add_permits(1);
    };
    let (first, ()) = tokio::join!(gateway.retrieve(LABEL), cut_then_answer);
    assert_problem(first, 502, "urn:mpc-gateway:upstream-error").await;

    // The MPC certainly sent nothing: the label is not held as uncertain.
    answer.add_permits(1);
    assert_problem(
        gateway.retrieve(LABEL).await,
        502,
        "urn:mpc-gateway:upstream-error",
    )
    .await;
    assert_eq!(mpc.requests(), 2, "tried again");
}

#[tokio::test]
async fn a_call_lost_with_its_replica_stays_held_after_redis_loses_its_data() {
    let redis = RedisServer::start();
    let mpc = MockServer::start().await;
    mpc_accepting_after(Duration::from_secs(30))
        .expect(1)
        .mount(&mpc)
        .await;
    let (url, prefix, uri) = (redis.url(), unique_prefix(), mpc.uri());
    let victim = run_binary(
        &[],
        &[
            ("MPC_GATEWAY__UPSTREAM__BASE_URL", &uri),
            ("MPC_GATEWAY__UPSTREAM__TIMEOUT", "2s"),
            ("MPC_GATEWAY__UPSTREAM__CONNECT_TIMEOUT", "1s"),
            ("MPC_GATEWAY__STORE__BACKEND", "redis"),
            ("MPC_GATEWAY__STORE__REDIS_URL", &url),
            ("MPC_GATEWAY__STORE__KEY_PREFIX", &prefix),
        ],
    )
    .await;
    let call = tokio::spawn(
        reqwest::Client::new()
            .post(format!("{}/api/action-codes/retrieve", victim.public))
            .json(&json!({"label": LABEL}))
            .send(),
    );
    mpc_received(&mpc, 1).await;
    drop(victim); // SIGKILL, mid-call
    assert!(call.await.unwrap().is_err());

    let survivors = replicas(2, &mpc, &url, &prefix, |settings| {
        settings.upstream.timeout = Duration::from_secs(2);
    })
    .await;
    // The first survivor answers the label as held once the call is past
    // its deadline; the second has never heard of it.
    assert_problem(
        survivors[0].retrieve(LABEL).await,
        504,
        "urn:mpc-gateway:upstream-timeout",
    )
    .await;

    assert_eq!(redis.cli(&["FLUSHALL"]), "OK");
    for survivor in &survivors {
        let answer = eventually(
            Duration::from_secs(10),
            async || survivor.retrieve(LABEL).await,
            |status, _| status != 503,
        )
        .await;
        assert_eq!(
            answer["type"], "urn:mpc-gateway:upstream-timeout",
            "still held inside dedup.uncertain_ttl: {answer}"
        );
    }
    assert_eq!(mpc.received_requests().await.unwrap().len(), 1);
}
