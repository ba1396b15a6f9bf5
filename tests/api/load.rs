//! A bounded load test on loopback, run alone (it measures the process's
//! memory) by .ci/run for 25 s: `LOAD_SECONDS=25 cargo test --test api
//! a_minute_of_mixed_traffic -- --ignored --nocapture` (`--release` for rates).
//! Valid, duplicate, invalid and faulting labels from many users: no 5xx but
//! the upstream ones the contract names, no label sent to the MPC twice, and
//! the resident set flat once the remembered set holds every label.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::Rng;
use serde_json::{Value, json};

use crate::helpers::{add_tier, test_settings};
use mpc_action_gateway::fake_mpc::{Answer, Calls, FakeMpc};
use mpc_action_gateway::startup::Application;

/// A fake MPC that counts calls per label, fails labels that start with `F`
/// and refuses those that start with `R`. (wiremock keeps every request it
/// matched, which would swamp the memory measurement.)
fn counting_mpc(calls: Calls) -> String {
    let queued = Answer::json(200, |_| json!({"message": "queued"}));
    let (address, server) = FakeMpc::answering(queued.after(Duration::from_millis(5)))
        .when(|label| label.starts_with('F'), Answer::empty(500))
        .when(
            |label| label.starts_with('R'),
            Answer::json(404, |_| json!({"error": "unknown"})),
        )
        .counting(calls)
        .start()
        .unwrap();
    tokio::spawn(server);
    format!("http://{address}")
}

/// Distinct valid labels the MPC accepts.
const VALID_POOL: u32 = 2_000;
/// Distinct valid labels the MPC refuses (404).
const REJECTED_POOL: u32 = 500;

/// The `n`th label of the pool the MPC accepts.
fn valid_label(n: u32) -> String {
    format!("2024-05-02T21:03:35.001_{n:08}")
}

/// The `n`th label of the pool the MPC refuses.
fn rejected_label(n: u32) -> String {
    format!("R{n:07}")
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 4096
}

#[tokio::test]
#[ignore = "run alone by .ci/run: it measures the process's memory"]
async fn a_minute_of_mixed_traffic() {
    crate::helpers::raise_open_files_limit();
    let seconds: u64 = std::env::var("LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25);
    let calls = Calls::default();
    let mpc = counting_mpc(calls.clone());
    let mut settings = test_settings(&mpc);
    settings.dedup.max_entries = 20_000.try_into().unwrap();
    settings.upstream.max_per_minute = 1_000_000.try_into().unwrap();
    settings.upstream.max_concurrent = 64.try_into().unwrap();
    settings.upstream.breaker_failures = 1_000_000.try_into().unwrap();
    settings.auth.trusted_user_header = "X-Forwarded-User".to_owned().try_into().unwrap();
    settings.auth.trusted_proxies = vec!["127.0.0.1".to_owned().try_into().unwrap()];
    add_tier(&mut settings, "default", 1_000_000, 1_000_000, 1_000_000);
    let application = Application::build(settings).unwrap();
    let url = format!(
        "http://{}/api/action-codes/retrieve",
        application.public_addr()
    );
    let metrics_url = format!("http://{}/metrics", application.admin_addr());
    tokio::spawn(application.run_until_stopped());
    let client = reqwest::Client::new();

    // Every pooled label once, so that the remembered set is full before
    // the resident set is first measured.
    let pooled = (0..VALID_POOL)
        .map(valid_label)
        .chain((0..REJECTED_POOL).map(rejected_label));
    futures_util::stream::iter(pooled)
        .for_each_concurrent(32, |label| {
            let (client, url) = (&client, &url);
            async move {
                let response = client
                    .post(url)
                    .json(&json!({ "label": label }))
                    .send()
                    .await
                    .unwrap();
                let expected = if label.starts_with('R') { 404 } else { 200 };
                assert_eq!(response.status().as_u16(), expected, "{label}");
            }
        })
        .await;
    let metrics = client.get(&metrics_url).send().await.unwrap();
    let remembered = metrics
        .text()
        .await
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("mpc_gateway_dedup_entries "))
        .map(|value| value.parse::<f64>().unwrap());
    assert_eq!(
        remembered,
        Some(f64::from(VALID_POOL + REJECTED_POOL)),
        "every pooled label remembered"
    );

    let next_label = AtomicU64::new(0);
    let statuses: Mutex<HashMap<(u16, String), u64>> = Mutex::new(HashMap::new());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let warm_up = started + Duration::from_secs(seconds / 3);
    let rss_after_warm_up = Mutex::new(None);

    futures_util::stream::iter(0..)
        .take_while(|_| futures_util::future::ready(Instant::now() < deadline))
        .for_each_concurrent(32, |_| {
            let (client, url, next_label, statuses) = (&client, &url, &next_label, &statuses);
            let rss_after_warm_up = &rss_after_warm_up;
            async move {
                let roll: u32 = rand::rng().random_range(0..100);
                let user = format!("observer-{}", rand::rng().random_range(0..200));
                next_label.fetch_add(1, Ordering::Relaxed);
                // Fixed pools, all remembered already: every pooled request
                // is a duplicate the MPC must not see again.
                let label = match roll {
                    0..70 => valid_label(rand::rng().random_range(0..VALID_POOL)),
                    70..85 => "not a label".to_owned(),
                    85..95 => format!("F{:07}", rand::rng().random_range(0..1000)),
                    _ => rejected_label(rand::rng().random_range(0..REJECTED_POOL)),
                };
                let response = client
                    .post(url)
                    .header("x-forwarded-user", user)
                    .json(&json!({ "label": label }))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let problem_type = if status == 200 {
                    String::new()
                } else {
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    body["type"].as_str().unwrap_or("?").to_owned()
                };
                *statuses
                    .lock()
                    .unwrap()
                    .entry((status, problem_type))
                    .or_default() += 1;
                if Instant::now() >= warm_up {
                    rss_after_warm_up
                        .lock()
                        .unwrap()
                        .get_or_insert_with(rss_bytes);
                }
            }
        })
        .await;

    let elapsed = started.elapsed().as_secs_f64();
    let statuses = statuses.into_inner().unwrap();
    let total: u64 = statuses.values().sum();
    let rss_end = rss_bytes();
    let rss_warm = rss_after_warm_up
        .into_inner()
        .unwrap()
        .expect("the run lasted past its warm-up");
    println!(
        "load: {total} requests in {elapsed:.1} s = {:.0} requests/s",
        total as f64 / elapsed
    );
    let mut rows: Vec<_> = statuses.iter().collect();
    rows.sort();
    for ((status, problem), count) in rows {
        println!("  {status} {problem}: {count}");
    }
    println!(
        "  RSS after warm-up {:.1} MiB, at the end {:.1} MiB",
        rss_warm as f64 / 1048576.0,
        rss_end as f64 / 1048576.0
    );

    for (status, problem) in statuses.keys() {
        if *status >= 500 {
            assert!(
                [
                    "urn:mpc-gateway:upstream-error",
                    "urn:mpc-gateway:upstream-timeout",
                    "urn:mpc-gateway:upstream-circuit-open",
                    "urn:mpc-gateway:gateway-busy"
                ]
                .contains(&problem.as_str()),
                "unexpected {status} {problem}"
            );
        }
    }
    let calls = calls.per_label();
    let repeated: Vec<_> = calls
        .iter()
        .filter(|(label, count)| **count > 1 && !label.starts_with('F'))
        .collect();
    let mpc_calls: u32 = calls.values().sum();
    println!(
        "  MPC calls: {mpc_calls} for {} labels; {} accepted or refused labels called twice \
         (5xx labels are tried again by design)",
        calls.len(),
        repeated.len()
    );
    assert!(repeated.is_empty(), "labels sent twice: {repeated:?}");
    assert!(
        rss_end < rss_warm + 8 * 1048576,
        "RSS grew from {rss_warm} to {rss_end} after warm-up"
    );
}
