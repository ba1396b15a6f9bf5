//! The randomized fault test: three gateways (the real binary) on one real
//! Redis, twelve clients asking random replicas on every public route, a
//! stand-in MPC whose answers are known by the label's prefix, and one
//! fault at a time (a replica killed or stopped; Redis restarted empty,
//! flushed, its scripts flushed, asleep, stopped, its clients cut). A
//! checker then reads what the MPC saw, what the clients got and when the
//! faults were, and lists every broken promise of the SPEC.
//!
//! Some faults are aimed: `CLIENT KILL` just before the stand-in writes an
//! answer (the clients held for a moment, so that the call's settle is the
//! first command on the dead connection), `FLUSHALL` just after; the
//! clients then ask often for that label, to see what the fault left.
//!
//! Seeded and bounded: `FAULT_SEED` (default random) draws the traffic and
//! the faults (timing still varies from run to run), `FAULT_SECONDS`
//! (default 60) bounds the run. It needs the machine to itself, so it is
//! a test binary of its own, which cargo runs after the others:
//! `FAULT_SECONDS=3600 cargo test --test faults -- --nocapture`.
//! `FAULT_SHOW=LABEL@SECONDS` also prints a label's time line up to then,
//! `FAULT_SHOW=aimed` those of the labels aimed at; `FAULT_DUMP=FILE`
//! writes every event, one a line, sorted by time.

/// Whether the gateways of this test binary keep their state in Redis
/// (read by the shared helpers).
pub const ON_REDIS: bool = true;

mod checker;
mod clients;
// This binary uses a few of the helpers that `tests/api` shares.
#[allow(dead_code, unused_imports)]
#[path = "../api/helpers.rs"]
mod helpers;
mod injector;
mod log;
mod replicas;
mod report;
mod stand_in;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use rand::Rng;

use crate::checker::{Kind, Limits, Run, Violation, check};
use crate::clients::{TIGHT_PREFIX, Traffic, probe};
use crate::helpers::redis_server::unique_prefix;
use crate::injector::{Injector, RedisHost};
use crate::log::now;
use crate::replicas::{REPLICAS, Replicas, TIGHT_BURST, TIGHT_PER_HOUR, Timing, users};

/// Episodes of violations printed with their time lines (the count covers
/// them all).
const EXPLAINED: usize = 20;

/// How long a final probe may try before it gives up.
const PROBE_FOR: f64 = 10.0;

#[test]
fn three_replicas_on_one_redis_keep_every_promise_through_faults() {
    let seed = std::env::var("FAULT_SEED")
        .ok()
        .map(|seed| seed.parse().expect("FAULT_SEED is a number"))
        .unwrap_or_else(|| rand::rng().random());
    let seconds = std::env::var("FAULT_SECONDS")
        .ok()
        .map(|seconds| {
            seconds
                .parse()
                .expect("FAULT_SECONDS is a number of seconds")
        })
        .unwrap_or(60);
    println!("fault test: seed {seed}, {seconds} s (FAULT_SEED={seed} draws the same again)");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(seed, seconds));
}

async fn run(seed: u64, seconds: u64) {
    helpers::raise_open_files_limit();
    let began = now();
    let timing = Timing {
        upstream_timeout: Duration::from_secs(1),
        store_timeout: Duration::from_millis(250),
        sent_ttl: Duration::from_secs(40),
        rejected_ttl: Duration::from_secs(20),
        uncertain_ttl: Duration::from_secs(15),
    };
    let redis = Arc::new(RedisHost::start());
    let mpc = stand_in::start(seed, timing.upstream_timeout);
    let users = users();
    let mut replicas = Replicas::start(
        &mpc.base_url,
        redis.url(),
        &unique_prefix(),
        &timing,
        &users,
    )
    .await;
    let traffic = Traffic::start(seed, &users, replicas.addresses());
    let mut injector = Injector::new(seed, Arc::clone(&redis), Arc::clone(&mpc.aim), &traffic);
    let recovered = injector.run(&mut replicas, began + seconds as f64).await;

    // Service resumes: a new label at each replica, sent within 5 s of the
    // last fault's recovery.
    traffic.stop();
    let addresses = replicas.addresses();
    let prober = users.iter().find(|user| user.name == "probe").unwrap();
    let tag = seed % 10_000;
    let probes = join_all((0..REPLICAS).map(|replica| {
        let label = format!("PR{tag:04}{replica:02}");
        probe(&addresses, replica, prober, label, recovered, PROBE_FOR)
    }))
    .await;
    let (answers, requests) = traffic.finish().await;
    // Late answers of the stand-in are still under way.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = mpc.calls();
    let exited = replicas.exited();

    let limits = Limits {
        sent_ttl: timing.sent_ttl.as_secs_f64(),
        rejected_ttl: timing.rejected_ttl.as_secs_f64(),
        uncertain_ttl: timing.uncertain_ttl.as_secs_f64(),
        upstream_timeout: timing.upstream_timeout.as_secs_f64(),
        tight_prefix: TIGHT_PREFIX,
        tight_burst: TIGHT_BURST,
        tight_interval: 3600.0 / f64::from(TIGHT_PER_HOUR),
    };
    let run = Run {
        limits: &limits,
        calls: &calls,
        answers: &answers,
        faults: &injector.faults,
        probes: &probes,
        end: now(),
    };
    let mut violations = check(&run);
    for (replica, status) in exited {
        violations.push(Violation {
            kind: Kind::ReplicaExited,
            label: None,
            at: run.end,
            detail: format!("r{replica} exited by itself: {status}"),
        });
    }
    let gateway = replicas.log.lock().unwrap();
    println!(
        "gateway warnings and errors: {:?}",
        gateway.counts.iter().collect::<Vec<_>>()
    );
    let episodes = report::episodes(&violations);
    for episode in episodes.iter().take(EXPLAINED) {
        println!(
            "\nseed {seed}: {}",
            report::explain(&run, &gateway.lines, episode)
        );
    }
    let show = std::env::var("FAULT_SHOW").unwrap_or_default();
    print!("{}", report::shown(&run, &gateway.lines, &show));
    println!("{}", report::pace(&run));
    // FAULT_DUMP=FILE writes every call, answer and fault, one a line.
    if let Ok(path) = std::env::var("FAULT_DUMP") {
        std::fs::write(&path, report::dump(&run)).expect("FAULT_DUMP is writable");
        println!("every event written to {path}");
    }
    let summary = report::summary(seed, seconds, &requests, &run, &violations);
    println!("\n{summary}");
    assert!(
        violations.is_empty(),
        "seed {seed}: {} violations in {} episodes (FAULT_SEED={seed} draws the same traffic \
         and faults again): {summary}",
        violations.len(),
        episodes.len()
    );
}
