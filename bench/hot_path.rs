//! The per-request work beside admission: parsing a label of each kind, and
//! looking a label up in a remembered set of 100 000 outcomes.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use mpc_action_gateway::clock::SystemClock;
use mpc_action_gateway::config::DedupSettings;
use mpc_action_gateway::dedup::{Claim, Dedup};
use mpc_action_gateway::domain::label::Label;
use mpc_action_gateway::domain::mpc_reply::Reply;
use mpc_action_gateway::domain::outcome::MpcAnswer;

fn label_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("label_parse");
    for (kind, text) in [
        ("trksub", "A10cnQO"),
        ("trkid", "00000DwbEz"),
        ("submission_id", "2024-05-02T21:03:35.001_0000FzZw"),
        ("submission_block_id", "2024-05-02T21:03:35.001_0000FzZw_01"),
        ("invalid_calendar", "2024-02-30T21:03:35.001_0000FzZw"),
    ] {
        group.bench_function(kind, |b| {
            b.iter(|| black_box(Label::parse(black_box(text))))
        });
    }
    group.finish();
}

fn dedup_lookup(c: &mut Criterion) {
    let dedup = Dedup::new(
        &DedupSettings {
            sent_ttl: Duration::from_secs(3600),
            rejected_ttl: Duration::from_secs(600),
            uncertain_ttl: Duration::from_secs(120),
            max_entries: 200_000.try_into().unwrap(),
            state_file: Default::default(),
        },
        Arc::new(SystemClock),
    );
    let labels: Vec<Label> = (0..100_000)
        .map(|n| Label::parse(&format!("2024-05-02T21:03:35.001_{n:08}")).unwrap())
        .collect();
    for label in &labels {
        // The memory store answers at once: no runtime is needed.
        if let Some(Ok(Claim::Lead(lease))) = dedup.claim(label).now_or_never() {
            let answer = MpcAnswer {
                status: 200,
                body: None,
            };
            let _ = lease
                .settle(&Ok(Reply::Accepted(answer)), "bench".into())
                .now_or_never();
        }
    }
    let mut group = c.benchmark_group("dedup");
    let known = &labels[54_321];
    group.bench_function("claim_remembered", |b| {
        b.iter(|| black_box(dedup.claim(black_box(known)).now_or_never()))
    });
    let unknown = Label::parse("A10cnQO").unwrap();
    group.bench_function("get_unknown", |b| {
        b.iter(|| black_box(dedup.get(black_box(&unknown)).now_or_never()))
    });
    group.finish();
}

criterion_group!(benches, label_parse, dedup_lookup);
criterion_main!(benches);
