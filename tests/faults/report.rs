//! What a run prints: one summary line, and for each violation the time
//! line of its label (calls, answers, faults, the gateways' warnings), so a
//! reader can see what happened.

use std::collections::{BTreeMap, BTreeSet};

use crate::checker::{Kind, Run, Violation};
use crate::injector::describe;
use crate::log::{Answer, Reply, Route, Secs};
use crate::replicas::GatewayLine;

/// How far before a violation its time line starts: past the longest window.
const BEFORE: Secs = 50.0;

/// How far after it the time line goes on.
const AFTER: Secs = 5.0;

/// The most lines one time line shows (the ones nearest the violation).
const LINES: usize = 120;

/// The one summary line of a run.
pub fn summary(
    seed: u64,
    seconds: u64,
    requests: &[u64; 5],
    run: &Run,
    violations: &[Violation],
) -> String {
    let routes: Vec<String> = Route::ALL
        .iter()
        .map(|route| format!("{} {}", route.name(), requests[*route as usize]))
        .collect();
    let mut faults: BTreeMap<String, usize> = BTreeMap::new();
    for fault in run.faults {
        let aimed = if fault.aimed_at.is_some() {
            " aimed"
        } else {
            ""
        };
        *faults
            .entry(format!("{}{aimed}", fault.kind.name()))
            .or_default() += 1;
    }
    let mut calls: BTreeMap<&str, usize> = BTreeMap::new();
    for call in run.calls {
        *calls.entry(call.reply.name()).or_default() += 1;
    }
    let transport = run
        .answers
        .iter()
        .filter(|answer| answer.reply == Reply::Transport)
        .count();
    let mut kinds: BTreeMap<Kind, usize> = BTreeMap::new();
    for violation in violations {
        *kinds.entry(violation.kind).or_default() += 1;
    }
    format!(
        "fault test summary: seed {seed}, {seconds} s, requests {} ({}), answers {} (no HTTP \
         answer {transport}), faults {} ({}), MPC calls {} ({}), violations {} in {} episodes \
         ({})",
        requests.iter().sum::<u64>(),
        routes.join(", "),
        run.answers.len(),
        run.faults.len(),
        counts(&faults),
        run.calls.len(),
        counts(&calls),
        violations.len(),
        episodes(violations).len(),
        counts(&kinds),
    )
}

fn counts<K: std::fmt::Debug>(counts: &BTreeMap<K, usize>) -> String {
    counts
        .iter()
        .map(|(key, count)| format!("{} {count}", format!("{key:?}").trim_matches('"')))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Violations of one kind for one label, each within [`BEFORE`] of the
/// first: one episode, explained once.
pub struct Episode<'a> {
    pub first: &'a Violation,
    pub more: usize,
    pub last: Secs,
}

/// The violations, earliest first, grouped into episodes.
pub fn episodes(violations: &[Violation]) -> Vec<Episode<'_>> {
    let mut episodes: Vec<Episode> = Vec::new();
    for violation in violations {
        let same = episodes.iter_mut().rev().find(|episode| {
            episode.first.kind == violation.kind
                && episode.first.label == violation.label
                && violation.at - episode.first.at <= BEFORE
        });
        match same {
            Some(episode) => {
                episode.more += 1;
                episode.last = violation.at;
            }
            None => episodes.push(Episode {
                first: violation,
                more: 0,
                last: violation.at,
            }),
        }
    }
    episodes
}

/// The episode's first violation and the time line of its label.
pub fn explain(run: &Run, gateway: &[GatewayLine], episode: &Episode) -> String {
    let violation = episode.first;
    let more = if episode.more == 0 {
        String::new()
    } else {
        format!(
            " (and {} more like it until {:.2} s)",
            episode.more, episode.last
        )
    };
    format!(
        "{:?} at {:.2} s{}{more}: {}\n{}",
        violation.kind,
        violation.at,
        violation
            .label
            .as_ref()
            .map_or(String::new(), |label| format!(" for {label}")),
        violation.detail,
        timeline(run, gateway, violation.label.as_deref(), violation.at)
    )
}

/// What happened to `label` (or, without one, to the tight user's labels)
/// in the seconds before `at`.
pub fn timeline(run: &Run, gateway: &[GatewayLine], label: Option<&str>, at: Secs) -> String {
    let mut text = String::new();
    let (from, to) = (at - BEFORE, at + AFTER);
    let mut events: Vec<(Secs, String)> = Vec::new();
    for fault in run.faults {
        if fault.end >= from && fault.start <= to {
            events.push((
                fault.start,
                format!(
                    "FAULT {}{} until {:.2}{}",
                    describe(fault.kind),
                    fault
                        .aimed_at
                        .as_ref()
                        .map_or(String::new(), |at| format!(" aimed at {at}")),
                    fault.end,
                    fault.down.map_or(String::new(), |(a, b)| format!(
                        " (Redis down {a:.2}–{b:.2})"
                    ))
                ),
            ));
        }
    }
    let wanted = |asked: &str| match label {
        Some(label) => asked == label,
        // The quota's violations: the tight user's calls.
        None => asked.starts_with(run.limits.tight_prefix),
    };
    for call in run.calls {
        if wanted(&call.label) && (from..=to).contains(&call.read) {
            events.push((
                call.read,
                format!(
                    "MPC   {} call by r{} answered {} at {:.2}{}",
                    call.label,
                    call.replica.map_or("?".into(), |r| r.to_string()),
                    call.reply.name(),
                    call.ended,
                    if call.delivered {
                        ""
                    } else {
                        " (not delivered)"
                    }
                ),
            ));
        }
    }
    if let Some(label) = label {
        for line in gateway {
            if (from..=to).contains(&line.at) && line.text.contains(label) {
                events.push((line.at, format!("LOG   r{} {}", line.replica, line.text)));
            }
        }
    }
    let answers: Vec<&Answer> = run
        .answers
        .iter()
        .filter(|answer| wanted(&answer.label) && (from..=to).contains(&answer.received))
        .collect();
    // Every call, fault and log line; the answers nearest `at` that fit.
    let mut answered = runs_of_answers(&answers);
    let room = LINES.saturating_sub(events.len());
    if answered.len() > room {
        text.push_str(&format!(
            "  ({} runs of answers farthest from {at:.2} s left out)\n",
            answered.len() - room
        ));
        answered.sort_by(|a, b| (a.0 - at).abs().total_cmp(&(b.0 - at).abs()));
        answered.truncate(room);
    }
    events.extend(answered);
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (at, line) in events {
        text.push_str(&format!("  {at:8.2}  {line}\n"));
    }
    text
}

/// Answers, consecutive ones saying the same thing written once, with
/// their count, replicas and routes.
fn runs_of_answers(answers: &[&Answer]) -> Vec<(Secs, String)> {
    struct Run {
        what: String,
        status: bool,
        first: Secs,
        asked: Secs,
        last: Secs,
        count: usize,
        replicas: BTreeSet<usize>,
        routes: BTreeSet<&'static str>,
    }
    let line = |run: &Run| {
        let replicas: Vec<String> = run.replicas.iter().map(|r| format!("r{r}")).collect();
        let routes: Vec<&str> = run.routes.iter().copied().collect();
        let times = if run.count == 1 {
            format!("(asked at {:.2})", run.asked)
        } else {
            format!("×{} until {:.2}", run.count, run.last)
        };
        (
            run.first,
            format!(
                "ASKED {} {}: {} {times}",
                replicas.join(","),
                routes.join(","),
                run.what
            ),
        )
    };
    let mut lines = Vec::new();
    let mut current: Option<Run> = None;
    for answer in answers {
        let what = format!(
            "{}{}",
            answer.reply.describe(),
            if answer.tight { " (tight user)" } else { "" }
        );
        let status = answer.route.is_status();
        match &mut current {
            Some(run) if run.what == what && run.status == status => {
                run.last = answer.received;
                run.count += 1;
                run.replicas.insert(answer.replica);
                run.routes.insert(answer.route.name());
            }
            _ => {
                if let Some(run) = current.take() {
                    lines.push(line(&run));
                }
                current = Some(Run {
                    what,
                    status,
                    first: answer.received,
                    asked: answer.sent,
                    last: answer.received,
                    count: 1,
                    replicas: BTreeSet::from([answer.replica]),
                    routes: BTreeSet::from([answer.route.name()]),
                });
            }
        }
    }
    if let Some(run) = current {
        lines.push(line(&run));
    }
    lines
}

/// Every call, answer and fault of the run, one a line, sorted by time:
/// seconds, what, label, and the rest.
pub fn dump(run: &Run) -> String {
    let mut lines: Vec<(Secs, String)> = Vec::new();
    for call in run.calls {
        lines.push((
            call.read,
            format!(
                "call\t{}\tr{}\t{} at {:.3}{}",
                call.label,
                call.replica.map_or("?".into(), |r| r.to_string()),
                call.reply.name(),
                call.ended,
                if call.delivered { "" } else { " not delivered" }
            ),
        ));
    }
    for answer in run.answers {
        lines.push((
            answer.received,
            format!(
                "answer\t{}\tr{}\t{} asked at {:.3}{}: {}",
                answer.label,
                answer.replica,
                answer.route.name(),
                answer.sent,
                if answer.tight { " (tight user)" } else { "" },
                answer.reply.describe()
            ),
        ));
    }
    for fault in run.faults {
        lines.push((
            fault.start,
            format!(
                "fault\t-\t{}\tuntil {:.3}{}",
                describe(fault.kind),
                fault.end,
                fault
                    .aimed_at
                    .as_ref()
                    .map_or(String::new(), |at| format!(", aimed at {at}"))
            ),
        ));
    }
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    lines
        .into_iter()
        .map(|(at, line)| format!("{at:.3}\t{line}\n"))
        .collect()
}

/// The time lines `show` asks for: `LABEL@SECONDS,...` up to then, or
/// `aimed` those of the labels that faults were aimed at, with what the
/// gateways logged as the fault struck.
pub fn shown(run: &Run, gateway: &[GatewayLine], show: &str) -> String {
    let mut text = String::new();
    let mut shown: Vec<(String, Secs)> = show
        .split(',')
        .filter_map(|shown| {
            let (label, at) = shown.split_once('@')?;
            Some((
                label.to_owned(),
                at.parse().expect("FAULT_SHOW=LABEL@SECONDS"),
            ))
        })
        .collect();
    if show == "aimed" {
        for fault in run.faults {
            let Some(label) = fault
                .aimed_at
                .as_ref()
                .and_then(|at| at.split(' ').next_back())
            else {
                continue;
            };
            shown.push((label.to_owned(), fault.start + 20.0));
            for line in gateway {
                if (fault.start - 0.05..fault.start + 0.3).contains(&line.at) {
                    text.push_str(&format!(
                        "{:8.2}  r{} {}\n",
                        line.at, line.replica, line.text
                    ));
                }
            }
        }
    }
    for (label, at) in shown {
        text.push_str(&format!(
            "\n{label} until {at:.2} s:\n{}",
            timeline(run, gateway, Some(&label), at)
        ));
    }
    text
}

/// The clients' longest pause (a stall would hide what the faults did)
/// and how soon each replica sent a new label after the last fault.
pub fn pace(run: &Run) -> String {
    let mut asked: Vec<Secs> = run.answers.iter().map(|answer| answer.sent).collect();
    asked.sort_by(Secs::total_cmp);
    asked.dedup();
    let (pause, from) = asked
        .windows(2)
        .map(|pair| (pair[1] - pair[0], pair[0]))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap_or_default();
    let resumed: Vec<String> = run
        .probes
        .iter()
        .map(|probe| match probe.sent_at {
            Some(at) => format!("r{} {:.2} s", probe.replica, at - probe.from),
            None => format!("r{} never", probe.replica),
        })
        .collect();
    format!(
        "the clients' longest pause: {pause:.2} s from {from:.2} s; a new label sent after \
         the last fault's recovery: {}",
        resumed.join(", ")
    )
}
