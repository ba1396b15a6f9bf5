//! Memory per remembered outcome: fills the store with 1 000 000 distinct
//! labels through the real claim/settle path and reads the process's RSS.
//! Run with `cargo bench --bench dedup_memory`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use mpc_action_gateway::clock::SystemClock;
use mpc_action_gateway::config::DedupSettings;
use mpc_action_gateway::dedup::{Claim, Dedup};
use mpc_action_gateway::domain::label::Label;
use mpc_action_gateway::domain::mpc_reply::Reply;
use mpc_action_gateway::domain::outcome::MpcAnswer;

const ENTRIES: u64 = 1_000_000;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// Distinct submission ids, the longest common label kind.
fn label(n: u64) -> Label {
    let id = format!("2024-05-02T21:03:35.001_{n:08}");
    Label::parse(&id).expect("generated labels are valid")
}

fn fill(body: Option<serde_json::Value>) -> (u64, Duration) {
    let dedup = Dedup::new(
        &DedupSettings {
            sent_ttl: Duration::from_secs(3600),
            rejected_ttl: Duration::from_secs(600),
            uncertain_ttl: Duration::from_secs(120),
            max_entries: (ENTRIES * 2).try_into().unwrap(),
            state_file: Default::default(),
        },
        Arc::new(SystemClock),
    );
    let users: Vec<Arc<str>> = (0..100).map(|u| format!("user{u}").into()).collect();
    let before = rss_bytes();
    let started = Instant::now();
    for n in 0..ENTRIES {
        // The memory store answers at once: no runtime is needed.
        let Some(Ok(Claim::Lead(lease))) = dedup.claim(&label(n)).now_or_never() else {
            panic!("every label is new");
        };
        let answer = match &body {
            Some(json) => MpcAnswer::with_json(200, json),
            None => MpcAnswer {
                status: 200,
                body: None,
            },
        };
        let _ = lease
            .settle(
                &Ok(Reply::Accepted(answer)),
                users[(n % 100) as usize].clone(),
            )
            .now_or_never();
    }
    assert_eq!(dedup.len(), ENTRIES);
    let elapsed = started.elapsed();
    let grown = rss_bytes().saturating_sub(before);
    black_box(&dedup);
    (grown / ENTRIES, elapsed)
}

/// Each scenario runs in a fresh process: memory freed by one would hide
/// the next one's growth.
const SCENARIO_VAR: &str = "DEDUP_MEMORY_SCENARIO";

fn main() {
    // `cargo test --benches` runs bench targets without --bench: stay quick.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let scenarios = [
        ("empty MPC body", None),
        (
            "small JSON MPC body",
            Some(serde_json::json!({"message": "queued"})),
        ),
    ];
    if let Ok(index) = std::env::var(SCENARIO_VAR) {
        let (name, body) = scenarios[index.parse::<usize>().expect("scenario index")].clone();
        let (per_entry, elapsed) = fill(body);
        println!(
            "dedup memory, {name}: {ENTRIES} entries, {per_entry} bytes per entry (RSS), \
             filled in {:.2} s ({:.0} ns per claim+settle)",
            elapsed.as_secs_f64(),
            elapsed.as_nanos() as f64 / ENTRIES as f64
        );
        return;
    }
    for index in 0..scenarios.len() {
        let status = std::process::Command::new(std::env::current_exe().expect("own path"))
            .arg("--bench")
            .env(SCENARIO_VAR, index.to_string())
            .status()
            .expect("scenario runs");
        assert!(status.success());
    }
}
