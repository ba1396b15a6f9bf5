//! The checker: a plain function over the call log, the answer log, the
//! fault log and the final probes, listing every way they break the SPEC.
//!
//! It only knows what an observer outside the gateways knows, so where the
//! SPEC allows either of two outcomes (a replica stopped while the MPC
//! answered may settle the answer or time out) it holds the gateways to the
//! weaker promise, and where timing is loose (a call's start inside the
//! gateway against its read by the stand-in, timestamps written in whole
//! seconds, a machine of two busy cores) it allows a margin, named below.

use std::collections::HashMap;

use crate::log::{Answer, Call, Fault, FaultKind, MpcReply, Probe, Refusal, Reply, Secs};

/// A window may end this much before the stand-in's read plus its TTL: the
/// gateway counts it from its own start of the call, a little earlier.
const WINDOW_MARGIN: Secs = 1.0;

/// A fault of a call's replica this close to the call may have changed its
/// outcome (the answer read late, or never).
const DISRUPTION_MARGIN: Secs = 1.0;

/// A request written by a replica just before it was killed may still be
/// read by the stand-in just after.
const KILL_BEFORE_READ: Secs = 0.05;

/// An answer written this close to `upstream.timeout` may have been too late.
const IN_TIME_MARGIN: Secs = 0.25;

/// A call begun (its claim confirmed) just before Redis stopped answering
/// may reach the stand-in a little later, later still on a loaded machine.
const DOWN_MARGIN: Secs = 0.5;

/// A call charged to the tight user just before Redis lost its data (and
/// the quota's state) may reach the stand-in a little after the loss.
const QUOTA_SHIFT: Secs = 0.5;

/// Timestamps are written in whole seconds, and taken when the call was
/// settled (or, for a call whose holder died, begun).
const TIME_TOLERANCE: Secs = 1.5;

/// A replica stopped mid-call settles only once it runs again.
const STOPPED_SETTLE: Secs = 4.0;

/// A `sent` answer may report a call that ended just before the request
/// began: it joined the call before it was settled.
const JOIN_LAG: Secs = 1.0;

/// Leeway past an outcome's own end (`resend_available_at`, whole seconds).
const STALE_MARGIN: Secs = 2.0;

/// A replica struck this soon after it was asked for a label may have
/// claimed it and begun a call that never reached the stand-in (later, it
/// would have reached it, or the replica was only waiting).
const JUST_ASKED: Secs = 1.5;

/// The SPEC's bound on catching up after a fault: service resumes, and lost
/// data is written back, within 5 s.
const FAULT_GRACE: Secs = 5.0;

/// The windows and limits the gateways were configured with.
pub struct Limits {
    pub sent_ttl: Secs,
    pub rejected_ttl: Secs,
    pub uncertain_ttl: Secs,
    pub upstream_timeout: Secs,
    /// The tight user's labels start with this, and only it retrieves them.
    pub tight_prefix: &'static str,
    pub tight_burst: u32,
    /// `period / per_period`: the GCRA's emission interval.
    pub tight_interval: Secs,
}

/// The kinds of violation, each a promise of the SPEC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A second call inside `dedup.sent_ttl` of a call the MPC accepted.
    SentWindow,
    /// A second call inside `dedup.rejected_ttl` of a call the MPC refused.
    RejectedWindow,
    /// A second call inside `dedup.uncertain_ttl` of a call that ended
    /// uncertain (late answer, connection closed, its replica killed).
    UncertainWindow,
    /// Two calls for one label under way at once.
    Overlap,
    /// A call read while Redis could not answer: forwarded unclaimed.
    CallWhileStoreDown,
    /// More calls for the tight user than its GCRA admits.
    QuotaBound,
    /// A status or problem the SPEC does not give for this request.
    NotSpecAnswer,
    /// `sent`, `upstream-rejected` or `upstream-error` with no call that
    /// answered so.
    AnswerWithoutCall,
    /// `requested_at` or `last_requested_at` matching no call.
    TimeWithoutCall,
    /// `sent` from a replica that had answered `already_requested` for the
    /// same call before the request began.
    SentAfterAlreadyRequested,
    /// An outcome answered after its own `resend_available_at`.
    StaleAnswer,
    /// A status route saying nothing is remembered of a label inside its
    /// window, which a live replica remembered.
    ForgottenInStatus,
    /// An uncertain answer with no uncertain call or fault to explain it.
    UncertainWithoutCause,
    /// A new label not `sent` within 5 s of the last fault's recovery.
    NoResume,
    /// A replica exited though nobody killed it.
    ReplicaExited,
}

/// One broken promise.
#[derive(Clone, Debug)]
pub struct Violation {
    pub kind: Kind,
    pub label: Option<String>,
    pub at: Secs,
    pub detail: String,
}

/// Everything a run recorded.
pub struct Run<'a> {
    pub limits: &'a Limits,
    pub calls: &'a [Call],
    pub answers: &'a [Answer],
    pub faults: &'a [Fault],
    pub probes: &'a [Probe],
    /// When the run ended.
    pub end: Secs,
}

/// Every violation in `run`, earliest first.
pub fn check(run: &Run) -> Vec<Violation> {
    let index = Index::new(run);
    let mut found = Vec::new();
    index.windows(&mut found);
    index.store_down(&mut found);
    index.quota(&mut found);
    index.answers(&mut found);
    index.resume(&mut found);
    found.sort_by(|a, b| a.at.total_cmp(&b.at));
    found
}

/// What happened to a call's replica around the call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Disruption {
    None,
    Stopped,
    /// Killed before the answer was written: the answer was never read.
    KilledMidCall,
    /// Killed just after it: the answer may not have been read.
    KilledAfter,
}

struct Index<'a> {
    run: &'a Run<'a>,
    calls: HashMap<&'a str, Vec<&'a Call>>,
    answers: HashMap<&'a str, Vec<&'a Answer>>,
    /// Each replica kill: the replica, and when.
    kills: Vec<(usize, Secs)>,
    /// Redis losing its data, in order.
    losses: Vec<&'a Fault>,
}

impl<'a> Index<'a> {
    fn new(run: &'a Run<'a>) -> Self {
        let mut calls: HashMap<&str, Vec<&Call>> = HashMap::new();
        for call in run.calls {
            calls.entry(&call.label).or_default().push(call);
        }
        for calls in calls.values_mut() {
            calls.sort_by(|a, b| a.read.total_cmp(&b.read));
        }
        let mut answers: HashMap<&str, Vec<&Answer>> = HashMap::new();
        for answer in run.answers {
            answers.entry(&answer.label).or_default().push(answer);
        }
        for answers in answers.values_mut() {
            answers.sort_by(|a, b| a.received.total_cmp(&b.received));
        }
        let kills = run
            .faults
            .iter()
            .filter_map(|fault| match fault.kind {
                FaultKind::ReplicaKill(replica) => Some((replica, fault.start)),
                _ => None,
            })
            .collect();
        let mut losses: Vec<&Fault> = run
            .faults
            .iter()
            .filter(|fault| fault.kind.loses_data())
            .collect();
        losses.sort_by(|a, b| a.start.total_cmp(&b.start));
        Self {
            run,
            calls,
            answers,
            kills,
            losses,
        }
    }

    fn limits(&self) -> &Limits {
        self.run.limits
    }

    fn calls_of(&self, label: &str) -> &[&'a Call] {
        self.calls.get(label).map_or(&[], Vec::as_slice)
    }

    fn answers_of(&self, label: &str) -> &[&'a Answer] {
        self.answers.get(label).map_or(&[], Vec::as_slice)
    }

    /// The last call for `label` read by `at`.
    fn latest(&self, label: &str, at: Secs) -> Option<&'a Call> {
        self.calls_of(label)
            .iter()
            .take_while(|call| call.read <= at)
            .last()
            .copied()
    }

    fn disruption(&self, call: &Call) -> Disruption {
        let Some(replica) = call.replica else {
            return Disruption::None;
        };
        let (from, to) = (
            call.read - DISRUPTION_MARGIN,
            call.ended + DISRUPTION_MARGIN,
        );
        let mut found = Disruption::None;
        for fault in self.run.faults {
            match fault.kind {
                // A kill before the read struck the process the call's
                // replica ran as before it was started again.
                FaultKind::ReplicaKill(killed) if killed == replica => {
                    if (call.read - KILL_BEFORE_READ..=call.ended).contains(&fault.start) {
                        return Disruption::KilledMidCall;
                    }
                    if (call.ended..=to).contains(&fault.start) {
                        found = Disruption::KilledAfter;
                    }
                }
                FaultKind::ReplicaStop(stopped)
                    if stopped == replica
                        && fault.start <= to
                        && fault.end >= from
                        && found == Disruption::None =>
                {
                    found = Disruption::Stopped;
                }
                _ => {}
            }
        }
        found
    }

    /// Whether the gateway that made `call` certainly read its answer as
    /// the stand-in wrote it.
    fn read_as_written(&self, call: &Call) -> bool {
        call.delivered
            && call.ended - call.read <= self.limits().upstream_timeout - IN_TIME_MARGIN
            && self.disruption(call) == Disruption::None
    }

    /// Whether the call certainly ended uncertain for its gateway.
    fn ended_uncertain(&self, call: &Call) -> bool {
        matches!(call.reply, MpcReply::Late | MpcReply::Closed)
            || !call.delivered
            || self.disruption(call) == Disruption::KilledMidCall
    }

    /// The window that `call` certainly opened, and its kind: where the
    /// gateway may have read the call either of two ways, the shorter.
    fn window(&self, call: &Call) -> Option<(Kind, Secs)> {
        let limits = self.limits();
        let uncertain = Some((Kind::UncertainWindow, limits.uncertain_ttl));
        let certain = self.read_as_written(call);
        match call.reply {
            MpcReply::Accepted if certain => Some((Kind::SentWindow, limits.sent_ttl)),
            MpcReply::Rejected if certain => Some((Kind::RejectedWindow, limits.rejected_ttl)),
            // Nothing remembered, unless the gateway never read the 500.
            MpcReply::ServerError if self.ended_uncertain(call) => uncertain,
            MpcReply::ServerError => None,
            // Sent or rejected, or uncertain: the shorter promise.
            _ => uncertain,
        }
    }

    /// Whether a replica that no kill struck in `(from, until]` was `replica`.
    fn alive(&self, replica: usize, from: Secs, until: Secs) -> bool {
        !self
            .kills
            .iter()
            .any(|(killed, at)| *killed == replica && *at > from && *at <= until)
    }

    /// The latest its gateway may have settled `call`, from which an
    /// uncertain outcome is held: at its timeout, or once its replica ran
    /// again after a stop.
    fn settled_by(&self, call: &Call) -> Secs {
        let timeout = call.read + self.limits().upstream_timeout;
        self.run
            .faults
            .iter()
            .filter(|fault| {
                fault.kind == FaultKind::ReplicaStop(call.replica.unwrap_or(usize::MAX))
                    && fault.start <= call.ended + DISRUPTION_MARGIN
                    && fault.end >= call.read - DISRUPTION_MARGIN
            })
            .map(|fault| fault.end)
            .fold(timeout, Secs::max)
    }

    /// Whether `at` is the time of `call`, as the gateway writes it.
    fn time_matches(&self, at: Secs, call: &Call) -> bool {
        let late = if self.disruption(call) == Disruption::None {
            0.0
        } else {
            STOPPED_SETTLE
        };
        (call.read - TIME_TOLERANCE..=call.ended + TIME_TOLERANCE + late).contains(&at)
    }

    /// Whether `answer` shows that its replica held what `call` came to.
    fn refers(&self, answer: &Answer, call: &Call) -> bool {
        let is_latest = || {
            self.latest(&answer.label, answer.received)
                .is_some_and(|latest| std::ptr::eq(latest, call))
        };
        match answer.reply {
            Reply::Sent {
                requested_at: Some(at),
                ..
            }
            | Reply::AlreadyRequested {
                requested_at: at, ..
            }
            | Reply::Status {
                last_requested_at: Some(at),
                ..
            } => self.time_matches(at, call),
            Reply::Sent {
                requested_at: None, ..
            }
            | Reply::Rejected { .. }
            | Reply::Uncertain => is_latest(),
            _ => false,
        }
    }

    /// Whether a live replica remembered `call` when Redis lost its data
    /// in `loss`: the replica that made it, or one that answered from it,
    /// neither killed since. (The SPEC promises write-back only of what a
    /// live replica remembers.)
    fn known(&self, call: &Call, loss: &Fault) -> bool {
        let at = loss.end;
        if let Some(replica) = call.replica
            && self.alive(replica, call.read, at)
        {
            return true;
        }
        self.answers_of(&call.label)
            .iter()
            .filter(|answer| (call.read..=at).contains(&answer.received))
            .any(|answer| {
                self.alive(answer.replica, answer.received, at) && self.refers(answer, call)
            })
    }

    /// Whether Redis lost its data after `call` and before `at` with no live
    /// replica remembering the call, or so shortly before `at` that the
    /// replicas may not have written it back yet.
    fn lost(&self, call: &Call, at: Secs) -> bool {
        self.losses.iter().any(|loss| {
            loss.start > call.read
                && loss.start < at
                && (!self.known(call, loss) || at <= loss.end + FAULT_GRACE)
        })
    }

    /// Whether Redis lost data after `call` and before `at`, no live replica
    /// remembering it.
    fn forgotten(&self, call: &Call, at: Secs) -> bool {
        self.losses
            .iter()
            .any(|loss| loss.start > call.read && loss.start < at && !self.known(call, loss))
    }

    /// Whether Redis lost its data while `call` was under way or just after
    /// its end: a replica waiting on it at the time saw it under way, not
    /// its end, and writes it back as under way, so the label is held as
    /// uncertain from the call's start, even after a 500. The SPEC allows
    /// this, on the safe side (no second call); the checker holds the
    /// gateways to it only.
    fn lost_mid_call(&self, call: &Call) -> bool {
        self.losses.iter().any(|loss| {
            loss.start >= call.read - DISRUPTION_MARGIN
                && loss.start <= call.ended + DISRUPTION_MARGIN
        })
    }

    /// A fault of the store, or of a replica, that came this close to
    /// `call` that its settle may have been lost, and before `answer` was
    /// answered, which it was asked within the grace after that fault.
    fn fault_near(&self, call: &Call, answer: &Answer) -> Option<&'a Fault> {
        self.run.faults.iter().find(|fault| {
            fault.start <= call.ended + DISRUPTION_MARGIN
                && fault.end >= call.read - DISRUPTION_MARGIN
                && fault.start <= answer.received
                && answer.sent <= fault.end + FAULT_GRACE
        })
    }

    /// Check 1: every window of the SPEC, and one call at a time per label.
    fn windows(&self, found: &mut Vec<Violation>) {
        for (label, calls) in &self.calls {
            for (index, first) in calls.iter().enumerate() {
                if let Some(next) = calls.get(index + 1)
                    && next.read < first.ended
                {
                    found.push(Violation {
                        kind: Kind::Overlap,
                        label: Some(label.to_string()),
                        at: next.read,
                        detail: format!(
                            "a call read at {:.2} while the call read at {:.2} was under way \
                             until {:.2}",
                            next.read, first.read, first.ended
                        ),
                    });
                }
                let Some((kind, ttl)) = self.window(first) else {
                    continue;
                };
                let until = first.read + ttl - WINDOW_MARGIN;
                let Some(second) = calls[index + 1..]
                    .iter()
                    .take_while(|second| second.read < until)
                    .find(|second| !self.forgotten(first, second.read))
                else {
                    continue;
                };
                found.push(Violation {
                    kind,
                    label: Some(label.to_string()),
                    at: second.read,
                    detail: format!(
                        "called again at {:.2} (by r{}), {:.2} s after the call read at {:.2} \
                         (by r{}, {}), inside its {ttl} s window",
                        second.read,
                        replica_name(second.replica),
                        second.read - first.read,
                        first.read,
                        replica_name(first.replica),
                        first.reply.name(),
                    ),
                });
            }
        }
    }

    /// Check 2: no call while Redis cannot answer.
    fn store_down(&self, found: &mut Vec<Violation>) {
        for fault in self.run.faults {
            let Some((from, to)) = fault.down else {
                continue;
            };
            for call in self.run.calls {
                if call.read > from + DOWN_MARGIN && call.read <= to {
                    found.push(Violation {
                        kind: Kind::CallWhileStoreDown,
                        label: Some(call.label.clone()),
                        at: call.read,
                        detail: format!(
                            "read at {:.2} (by r{}) while Redis could not answer ({} from \
                             {from:.2} to {to:.2})",
                            call.read,
                            replica_name(call.replica),
                            fault.kind.name()
                        ),
                    });
                }
            }
        }
    }

    /// Check 3: the tight user's calls within its GCRA bound, between
    /// losses of Redis's data (which reset it).
    fn quota(&self, found: &mut Vec<Violation>) {
        let limits = self.limits();
        let mut reads: Vec<Secs> = self
            .run
            .calls
            .iter()
            .filter(|call| call.label.starts_with(limits.tight_prefix))
            .map(|call| call.read)
            .collect();
        reads.sort_by(Secs::total_cmp);
        let mut bounds = vec![Secs::NEG_INFINITY];
        bounds.extend(self.losses.iter().map(|loss| loss.start));
        bounds.push(Secs::INFINITY);
        for pair in bounds.windows(2) {
            let (from, to) = (pair[0], pair[1]);
            let inside: Vec<Secs> = reads
                .iter()
                .copied()
                .filter(|read| (from..to).contains(&(read - QUOTA_SHIFT)))
                .collect();
            let (Some(first), Some(last)) = (inside.first(), inside.last()) else {
                continue;
            };
            // GCRA admits at most the burst and one per interval over any
            // span; one more for a charge straddling the bounds.
            let span = last - first + QUOTA_SHIFT;
            let allowed =
                limits.tight_burst as usize + (span / limits.tight_interval).floor() as usize + 1;
            if inside.len() > allowed {
                found.push(Violation {
                    kind: Kind::QuotaBound,
                    label: None,
                    at: inside[allowed],
                    detail: format!(
                        "{} calls for the tight user over {span:.1} s (from {:.2} to {:.2}); \
                         its quota admits {allowed}",
                        inside.len(),
                        inside[0],
                        last
                    ),
                });
            }
        }
    }

    /// Checks 4 and 5: every answer is one the SPEC gives, about calls that
    /// were made; uncertain answers only after an uncertain call or a fault.
    fn answers(&self, found: &mut Vec<Violation>) {
        for answer in self.run.answers {
            if let Some((kind, detail)) = self.judge(answer) {
                found.push(Violation {
                    kind,
                    label: Some(answer.label.clone()),
                    at: answer.received,
                    detail: format!(
                        "r{} {} asked at {:.2}, answered at {:.2} {}: {detail}",
                        answer.replica,
                        answer.route.name(),
                        answer.sent,
                        answer.received,
                        answer.reply.describe()
                    ),
                });
            }
        }
    }

    fn judge(&self, answer: &Answer) -> Option<(Kind, String)> {
        let label = answer.label.as_str();
        let calls = self.calls_of(label);
        let stale = |until: Option<Secs>| {
            until
                .filter(|until| answer.sent > until + STALE_MARGIN)
                .map(|until| {
                    (
                        Kind::StaleAnswer,
                        format!("asked {:.2} s after the outcome's end", answer.sent - until),
                    )
                })
        };
        match &answer.reply {
            Reply::Transport
            | Reply::Refused(
                Refusal::CircuitOpen
                | Refusal::GatewayBusy
                | Refusal::StoreUnavailable
                | Refusal::InWords,
            ) => None,
            Reply::Refused(Refusal::Quota) if answer.tight => None,
            Reply::Refused(Refusal::Quota) => Some((
                Kind::NotSpecAnswer,
                "quota-exceeded for a user whose quota cannot run out".into(),
            )),
            Reply::Refused(Refusal::Throttled) => Some((
                Kind::NotSpecAnswer,
                "upstream-throttled, though the MPC never asked to slow down".into(),
            )),
            Reply::Unexpected(what) => Some((Kind::NotSpecAnswer, what.clone())),
            Reply::Sent {
                requested_at,
                until,
            } => {
                // A request joins a call until its outcome is stored, later
                // when a fault lost the first write of it.
                let accepted = |call: &&&Call| {
                    call.reply.accepts()
                        && call.delivered
                        && call.ended <= answer.received
                        && (call.ended >= answer.sent - JOIN_LAG
                            || self.fault_near(call, answer).is_some())
                };
                if !calls.iter().any(|call| accepted(&call)) {
                    return Some((
                        Kind::AnswerWithoutCall,
                        "no call the MPC accepted while it was asked".into(),
                    ));
                }
                if let Some(at) = requested_at
                    && !calls
                        .iter()
                        .any(|call| accepted(&call) && self.time_matches(*at, call))
                {
                    return Some((
                        Kind::TimeWithoutCall,
                        "requested_at is the time of no accepted call".into(),
                    ));
                }
                // The same outcome ends at the same second.
                let said_already = self.answers_of(label).iter().find(|before| {
                    before.replica == answer.replica
                        && before.received < answer.sent
                        && until.is_some()
                        && matches!(
                            before.reply,
                            Reply::AlreadyRequested { until: said, .. } if said == *until
                        )
                });
                if let Some(before) = said_already {
                    return Some((
                        Kind::SentAfterAlreadyRequested,
                        format!(
                            "this replica answered already_requested for the same call at {:.2}",
                            before.received
                        ),
                    ));
                }
                stale(*until)
            }
            Reply::AlreadyRequested {
                requested_at,
                until,
            } => {
                let matched = calls.iter().any(|call| {
                    call.reply.accepts()
                        && call.delivered
                        && call.read <= answer.received
                        && self.time_matches(*requested_at, call)
                });
                if !matched {
                    return Some((
                        Kind::TimeWithoutCall,
                        "requested_at is the time of no call the MPC accepted".into(),
                    ));
                }
                stale(*until)
            }
            Reply::Rejected { status } => {
                if status.is_some_and(|status| status != 404) {
                    return Some((Kind::NotSpecAnswer, "the MPC refused only with 404".into()));
                }
                let rejected = calls.iter().any(|call| {
                    call.reply == MpcReply::Rejected
                        && call.delivered
                        && call.read <= answer.received
                        && answer.sent
                            <= call.ended
                                + self.limits().rejected_ttl
                                + STALE_MARGIN
                                + STOPPED_SETTLE
                });
                (!rejected).then(|| {
                    (
                        Kind::AnswerWithoutCall,
                        "no call the MPC refused within rejected_ttl".into(),
                    )
                })
            }
            Reply::UpstreamError => {
                let failed = calls.iter().any(|call| {
                    call.reply == MpcReply::ServerError
                        && call.delivered
                        && call.ended >= answer.sent - JOIN_LAG
                        && call.ended <= answer.received
                });
                // A replica stopped mid-call may find its connection timed
                // out before it was made: certainly nothing sent, no call.
                let stopped = self.run.faults.iter().any(|fault| {
                    fault.kind.replica().is_some()
                        && fault.start <= answer.received
                        && fault.end >= answer.sent - DISRUPTION_MARGIN
                });
                (!failed && !stopped).then(|| {
                    (
                        Kind::AnswerWithoutCall,
                        "no 5xx from the MPC while it was asked".into(),
                    )
                })
            }
            Reply::Uncertain => self.uncertain_cause(answer),
            Reply::Status {
                last_requested_at: Some(at),
                until,
            } => {
                // A 500 is remembered only when its gateway did not read it,
                // or when data was lost before a waiter elsewhere saw its end.
                let matched = calls.iter().any(|call| {
                    (call.reply != MpcReply::ServerError
                        || !self.read_as_written(call)
                        || self.lost_mid_call(call))
                        && call.read <= answer.received
                        && self.time_matches(*at, call)
                });
                if !matched {
                    return Some((
                        Kind::TimeWithoutCall,
                        "last_requested_at is the time of no call".into(),
                    ));
                }
                stale(*until)
            }
            Reply::Status {
                last_requested_at: None,
                ..
            } => self.forgotten_in_status(answer),
        }
    }

    /// Check 5: an uncertain answer follows a call that ended uncertain, or
    /// a fault that may have lost a settle or a holder.
    fn uncertain_cause(&self, answer: &Answer) -> Option<(Kind, String)> {
        let limits = self.limits();
        let calls = self.calls_of(&answer.label);
        let held = limits.upstream_timeout + limits.uncertain_ttl + WINDOW_MARGIN;
        let after_uncertain_call = calls.iter().any(|call| {
            call.read <= answer.received
                && answer.sent <= self.settled_by(call) + limits.uncertain_ttl + WINDOW_MARGIN
                && (self.ended_uncertain(call) || self.disruption(call) != Disruption::None)
        });
        if after_uncertain_call {
            return None;
        }
        let written_back_as_under_way = calls.iter().any(|call| {
            call.read <= answer.received
                && self.lost_mid_call(call)
                && answer.sent <= call.ended + limits.uncertain_ttl + STALE_MARGIN
        });
        if written_back_as_under_way {
            return None;
        }
        if calls
            .iter()
            .any(|call| call.read <= answer.received && self.fault_near(call, answer).is_some())
        {
            return None;
        }
        // A replica stopped or killed just after it was asked for the label,
        // while the label was free, may have begun a call the stand-in never
        // read.
        let answers = self.answers_of(&answer.label);
        let in_flight = self.run.faults.iter().any(|fault| {
            let Some(replica) = fault.kind.replica() else {
                return false;
            };
            let until = match fault.kind {
                FaultKind::ReplicaKill(_) => fault.start + held,
                _ => fault.end + FAULT_GRACE,
            };
            answer.received >= fault.start
                && answer.sent <= until
                && answers.iter().any(|asked| {
                    asked.replica == replica
                        && !asked.route.is_status()
                        && (fault.start - JUST_ASKED..=fault.start).contains(&asked.sent)
                        && asked.received >= fault.start
                        && !answers.iter().any(|held| {
                            held.reply == Reply::Uncertain
                                && (asked.sent..fault.start).contains(&held.received)
                        })
                })
        });
        if in_flight {
            return None;
        }
        let last = self.latest(&answer.label, answer.received).map_or_else(
            || "no call for it at all".to_owned(),
            |call| {
                format!(
                    "its last call read at {:.2} ended {} at {:.2}",
                    call.read,
                    call.reply.name(),
                    call.ended
                )
            },
        );
        Some((
            Kind::UncertainWithoutCause,
            format!("no uncertain call and no fault explain it: {last}"),
        ))
    }

    /// A status that says nothing is remembered, inside a window opened by
    /// a call whose outcome was surely settled and remembered.
    fn forgotten_in_status(&self, answer: &Answer) -> Option<(Kind, String)> {
        let call = self.latest(&answer.label, answer.sent)?;
        let (kind, ttl) = self.window(call)?;
        if kind == Kind::UncertainWindow
            || call.ended + JOIN_LAG > answer.sent
            || answer.received > call.read + ttl - WINDOW_MARGIN
            || self.lost(call, answer.received)
            || self.fault_near(call, answer).is_some()
        {
            return None;
        }
        Some((
            Kind::ForgottenInStatus,
            format!(
                "nothing remembered, {:.2} s into the {ttl} s window of the call read at {:.2} \
                 ({})",
                answer.sent - call.read,
                call.read,
                call.reply.name()
            ),
        ))
    }

    /// Check 6: service resumes within 5 s of the last fault.
    fn resume(&self, found: &mut Vec<Violation>) {
        for probe in self.run.probes {
            let late = probe.sent_at.is_none_or(|at| at - probe.from > FAULT_GRACE);
            if late {
                found.push(Violation {
                    kind: Kind::NoResume,
                    label: Some(probe.label.clone()),
                    at: probe.sent_at.unwrap_or(self.run.end),
                    detail: format!(
                        "r{}: a new label {} {:.2} s after the last recovery; last answer: {}",
                        probe.replica,
                        if probe.sent_at.is_some() {
                            "sent only"
                        } else {
                            "never sent, gave up"
                        },
                        probe.sent_at.unwrap_or(self.run.end) - probe.from,
                        probe.last
                    ),
                });
            }
        }
    }
}

fn replica_name(replica: Option<usize>) -> String {
    replica.map_or("?".to_owned(), |replica| replica.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Route;

    const OK: &str = "OK000001";
    const NF: &str = "NF000001";
    const ER: &str = "ER000001";
    const TO: &str = "TO000001";
    const QT: [&str; 4] = ["QT000001", "QT000002", "QT000003", "QT000004"];

    fn limits() -> Limits {
        Limits {
            sent_ttl: 40.0,
            rejected_ttl: 20.0,
            uncertain_ttl: 15.0,
            upstream_timeout: 1.0,
            tight_prefix: "QT",
            tight_burst: 2,
            tight_interval: 120.0,
        }
    }

    fn call(label: &str, replica: usize, read: Secs, ended: Secs) -> Call {
        Call {
            label: label.to_owned(),
            replica: Some(replica),
            read,
            ended,
            reply: MpcReply::of(label),
            delivered: true,
        }
    }

    fn answer(label: &str, replica: usize, sent: Secs, reply: Reply) -> Answer {
        Answer {
            route: Route::Retrieve,
            replica,
            tight: false,
            label: label.to_owned(),
            sent,
            received: sent + 0.5,
            reply,
        }
    }

    fn status(label: &str, replica: usize, sent: Secs, last: Option<Secs>) -> Answer {
        Answer {
            route: Route::LabelStatus,
            ..answer(
                label,
                replica,
                sent,
                Reply::Status {
                    last_requested_at: last,
                    until: last.map(|at| at + 40.0),
                },
            )
        }
    }

    fn sent(at: Secs) -> Reply {
        Reply::Sent {
            requested_at: Some(at),
            until: Some(at + 40.0),
        }
    }

    fn already(at: Secs) -> Reply {
        Reply::AlreadyRequested {
            requested_at: at,
            until: Some(at + 40.0),
        }
    }

    fn fault(kind: FaultKind, start: Secs, end: Secs) -> Fault {
        Fault {
            kind,
            start,
            end,
            down: None,
            aimed_at: None,
        }
    }

    #[derive(Default)]
    struct Log {
        calls: Vec<Call>,
        answers: Vec<Answer>,
        faults: Vec<Fault>,
        probes: Vec<Probe>,
    }

    impl Log {
        fn kinds(&self) -> Vec<Kind> {
            let limits = limits();
            let run = Run {
                limits: &limits,
                calls: &self.calls,
                answers: &self.answers,
                faults: &self.faults,
                probes: &self.probes,
                end: 200.0,
            };
            check(&run).into_iter().map(|found| found.kind).collect()
        }
    }

    /// Every outcome answered as the SPEC says, across a flush that a
    /// replica remembered through: nothing to report.
    #[test]
    fn a_run_that_keeps_every_promise_has_no_violation() {
        let log = Log {
            calls: vec![
                call(OK, 0, 1.0, 1.2),
                call(OK, 1, 45.0, 45.1),
                call(NF, 2, 2.0, 2.1),
                call(NF, 0, 30.0, 30.1),
                call(ER, 1, 3.0, 3.1),
                call(ER, 2, 3.2, 3.3),
                call(TO, 0, 4.0, 5.5),
                call(TO, 1, 20.0, 21.5),
            ],
            answers: vec![
                answer(OK, 0, 0.9, sent(1.0)),
                answer(OK, 1, 5.0, already(1.0)),
                status(OK, 2, 6.0, Some(1.0)),
                answer(OK, 1, 45.0, sent(45.0)),
                answer(NF, 2, 1.9, Reply::Rejected { status: Some(404) }),
                answer(NF, 1, 10.0, Reply::Rejected { status: Some(404) }),
                answer(ER, 1, 2.9, Reply::UpstreamError),
                answer(TO, 0, 3.9, Reply::Uncertain),
                answer(TO, 2, 12.0, Reply::Uncertain),
                answer(OK, 2, 13.0, Reply::Transport),
            ],
            faults: vec![fault(FaultKind::FlushAll, 10.0, 10.0)],
            probes: vec![Probe {
                replica: 0,
                label: "PR000000".into(),
                from: 100.0,
                sent_at: Some(100.5),
                last: String::new(),
            }],
        };
        assert_eq!(log.kinds(), vec![]);
    }

    #[test]
    fn a_second_call_inside_sent_ttl_is_seen() {
        let log = Log {
            calls: vec![call(OK, 0, 1.0, 1.2), call(OK, 1, 20.0, 20.1)],
            ..Log::default()
        };
        assert_eq!(log.kinds(), vec![Kind::SentWindow]);
    }

    #[test]
    fn a_second_call_inside_rejected_ttl_is_seen() {
        let log = Log {
            calls: vec![call(NF, 0, 1.0, 1.2), call(NF, 1, 10.0, 10.1)],
            ..Log::default()
        };
        assert_eq!(log.kinds(), vec![Kind::RejectedWindow]);
    }

    #[test]
    fn a_call_whose_replica_was_killed_holds_the_label_for_uncertain_ttl() {
        let killed = fault(FaultKind::ReplicaKill(0), 1.1, 2.0);
        let inside = Log {
            calls: vec![call(OK, 0, 1.0, 1.2), call(OK, 1, 10.0, 10.1)],
            faults: vec![killed.clone()],
            ..Log::default()
        };
        assert_eq!(inside.kinds(), vec![Kind::UncertainWindow]);
        let after = Log {
            calls: vec![call(OK, 0, 1.0, 1.2), call(OK, 1, 17.0, 17.1)],
            faults: vec![killed],
            ..Log::default()
        };
        assert_eq!(after.kinds(), vec![]);
    }

    #[test]
    fn a_replica_started_again_after_a_kill_keeps_the_windows_of_its_calls() {
        let log = Log {
            calls: vec![call(OK, 0, 1.5, 1.6), call(OK, 1, 20.0, 20.1)],
            faults: vec![fault(FaultKind::ReplicaKill(0), 1.0, 1.4)],
            ..Log::default()
        };
        assert_eq!(log.kinds(), vec![Kind::SentWindow]);
    }

    #[test]
    fn data_lost_that_no_live_replica_remembered_may_be_sent_again() {
        // r0 made the call and was killed; nobody else answered from it.
        let forgotten = Log {
            calls: vec![call(OK, 0, 1.0, 1.2), call(OK, 1, 20.0, 20.1)],
            faults: vec![
                fault(FaultKind::ReplicaKill(0), 5.0, 6.0),
                fault(FaultKind::FlushAll, 10.0, 10.0),
            ],
            ..Log::default()
        };
        assert_eq!(forgotten.kinds(), vec![]);
        // r1 answered from it before the flush: it remembers.
        let remembered = Log {
            answers: vec![answer(OK, 1, 8.0, already(1.0))],
            ..forgotten
        };
        assert_eq!(remembered.kinds(), vec![Kind::SentWindow]);
    }

    #[test]
    fn two_calls_at_once_are_seen() {
        let log = Log {
            calls: vec![call(ER, 0, 1.0, 1.3), call(ER, 1, 1.2, 1.4)],
            ..Log::default()
        };
        assert_eq!(log.kinds(), vec![Kind::Overlap]);
    }

    #[test]
    fn a_call_while_redis_is_down_is_seen_past_the_margin() {
        let log = Log {
            calls: vec![call(ER, 0, 10.2, 10.3), call(ER, 1, 11.0, 11.1)],
            faults: vec![Fault {
                down: Some((10.0, 12.0)),
                ..fault(FaultKind::RedisStop, 10.0, 12.0)
            }],
            ..Log::default()
        };
        assert_eq!(log.kinds(), vec![Kind::CallWhileStoreDown]);
    }

    #[test]
    fn the_tight_users_calls_beyond_its_quota_are_seen_between_data_losses() {
        let calls: Vec<Call> = QT
            .iter()
            .zip([1.0, 2.0, 3.0, 4.0])
            .map(|(label, at)| call(label, 0, at, at + 0.1))
            .collect();
        let one_epoch = Log {
            calls: calls.clone(),
            ..Log::default()
        };
        assert_eq!(one_epoch.kinds(), vec![Kind::QuotaBound]);
        let flushed_between = Log {
            calls,
            faults: vec![fault(FaultKind::FlushAll, 2.4, 2.4)],
            ..Log::default()
        };
        assert_eq!(flushed_between.kinds(), vec![]);
    }

    #[test]
    fn answers_the_spec_does_not_give_are_seen() {
        let log = Log {
            answers: vec![
                answer(OK, 0, 1.0, Reply::Unexpected("500 internal-error".into())),
                answer(OK, 0, 2.0, Reply::Refused(Refusal::Quota)),
                answer(OK, 0, 3.0, Reply::Refused(Refusal::Throttled)),
                Answer {
                    tight: true,
                    ..answer(QT[0], 0, 4.0, Reply::Refused(Refusal::Quota))
                },
            ],
            ..Log::default()
        };
        assert_eq!(log.kinds(), vec![Kind::NotSpecAnswer; 3]);
    }

    #[test]
    fn sent_rejected_or_failed_without_such_a_call_is_seen() {
        let log = Log {
            calls: vec![call(OK, 0, 1.0, 1.1)],
            answers: vec![
                answer(OK, 0, 5.0, sent(5.0)),
                answer(NF, 0, 6.0, Reply::Rejected { status: Some(404) }),
                answer(ER, 0, 7.0, Reply::UpstreamError),
            ],
            ..Log::default()
        };
        assert_eq!(log.kinds(), vec![Kind::AnswerWithoutCall; 3]);
    }

    #[test]
    fn sent_after_already_requested_for_the_same_call_is_seen() {
        let log = Log {
            calls: vec![call(OK, 0, 1.0, 1.1)],
            answers: vec![
                answer(OK, 0, 1.0, sent(1.0)),
                answer(OK, 0, 1.3, already(1.0)),
                answer(OK, 1, 1.5, sent(1.0)),
                answer(OK, 0, 1.9, sent(1.0)),
            ],
            ..Log::default()
        };
        assert_eq!(log.kinds(), vec![Kind::SentAfterAlreadyRequested]);
    }

    #[test]
    fn a_late_acceptance_read_by_a_replica_that_was_stopped_is_sent() {
        let log = Log {
            calls: vec![call(TO, 0, 1.0, 2.5)],
            faults: vec![fault(FaultKind::ReplicaStop(0), 1.5, 3.0)],
            answers: vec![
                answer(TO, 0, 2.6, sent(3.0)),
                answer(TO, 1, 4.0, already(3.0)),
            ],
            ..Log::default()
        };
        assert_eq!(log.kinds(), vec![]);
    }

    #[test]
    fn a_requested_at_of_no_call_is_seen() {
        let log = Log {
            calls: vec![call(OK, 0, 1.0, 1.1)],
            answers: vec![
                answer(OK, 0, 10.0, already(8.0)),
                status(OK, 0, 11.0, Some(9.0)),
                answer(OK, 0, 0.9, sent(4.0)),
            ],
            ..Log::default()
        };
        assert_eq!(log.kinds(), vec![Kind::TimeWithoutCall; 3]);
    }

    #[test]
    fn an_outcome_answered_past_its_end_is_seen() {
        let log = Log {
            calls: vec![call(OK, 0, 1.0, 1.1)],
            answers: vec![answer(OK, 0, 44.0, already(1.0))],
            ..Log::default()
        };
        assert_eq!(log.kinds(), vec![Kind::StaleAnswer]);
    }

    #[test]
    fn a_status_that_forgets_a_remembered_label_is_seen_unless_data_was_just_lost() {
        let forgets = Log {
            calls: vec![call(OK, 0, 1.0, 1.1)],
            answers: vec![status(OK, 1, 10.0, None)],
            ..Log::default()
        };
        assert_eq!(forgets.kinds(), vec![Kind::ForgottenInStatus]);
        let just_flushed = Log {
            faults: vec![fault(FaultKind::FlushAll, 8.0, 8.0)],
            ..forgets
        };
        assert_eq!(just_flushed.kinds(), vec![]);
    }

    #[test]
    fn an_uncertain_answer_needs_an_uncertain_call_or_a_recent_fault() {
        let after_a_500 = Log {
            calls: vec![call(ER, 0, 1.0, 1.1)],
            answers: vec![answer(ER, 1, 10.0, Reply::Uncertain)],
            ..Log::default()
        };
        assert_eq!(after_a_500.kinds(), vec![Kind::UncertainWithoutCause]);
        let settle_lost = Log {
            faults: vec![fault(FaultKind::ClientKill, 1.1, 1.1)],
            answers: vec![
                answer(ER, 1, 0.9, Reply::Uncertain),
                answer(ER, 1, 5.0, Reply::Uncertain),
                answer(ER, 1, 10.0, Reply::Uncertain),
            ],
            ..after_a_500
        };
        assert_eq!(settle_lost.kinds(), vec![Kind::UncertainWithoutCause]);
        // Nor does a fault near a later call.
        let fault_later = Log {
            calls: vec![call(ER, 0, 1.0, 1.1), call(ER, 0, 30.0, 30.1)],
            faults: vec![fault(FaultKind::ClientKill, 30.1, 30.1)],
            answers: vec![answer(ER, 1, 10.0, Reply::Uncertain)],
            ..Log::default()
        };
        assert_eq!(fault_later.kinds(), vec![Kind::UncertainWithoutCause]);
        // Data lost just after a 500: a waiter elsewhere that saw the call
        // under way writes it back so, held until its uncertain_ttl ends.
        let lost_after_a_500 = Log {
            calls: vec![call(ER, 0, 1.0, 1.1)],
            faults: vec![fault(FaultKind::FlushAll, 1.2, 1.2)],
            answers: vec![
                answer(ER, 1, 10.0, Reply::Uncertain),
                status(ER, 2, 12.0, Some(0.9)),
                answer(ER, 1, 20.0, Reply::Uncertain),
            ],
            ..Log::default()
        };
        assert_eq!(
            lost_after_a_500.kinds(),
            vec![Kind::UncertainWithoutCause],
            "only the answer past the call's uncertain_ttl"
        );
        let killed_while_asked = Log {
            faults: vec![fault(FaultKind::ReplicaKill(2), 3.0, 4.0)],
            answers: vec![
                answer(OK, 2, 2.9, Reply::Transport),
                answer(OK, 1, 10.0, Reply::Uncertain),
            ],
            ..Log::default()
        };
        assert_eq!(killed_while_asked.kinds(), vec![]);
        // Held already before the kill: the killed replica only waited.
        let held_before = Log {
            calls: vec![call(ER, 0, 1.0, 1.1)],
            faults: vec![
                fault(FaultKind::ClientKill, 1.1, 1.1),
                fault(FaultKind::ReplicaKill(2), 8.0, 9.0),
            ],
            answers: vec![
                answer(ER, 1, 7.0, Reply::Uncertain),
                answer(ER, 2, 7.5, Reply::Transport),
                answer(ER, 1, 10.0, Reply::Uncertain),
            ],
            ..Log::default()
        };
        assert_eq!(
            held_before.kinds(),
            vec![Kind::UncertainWithoutCause; 2],
            "both past the grace of the settle's fault"
        );
    }

    #[test]
    fn a_stopped_replica_holds_an_uncertain_call_from_when_it_ran_again() {
        let log = Log {
            calls: vec![call(OK, 0, 1.0, 1.2)],
            faults: vec![fault(FaultKind::ReplicaStop(0), 1.1, 4.0)],
            answers: vec![
                answer(OK, 1, 18.5, Reply::Uncertain),
                answer(OK, 1, 20.5, Reply::Uncertain),
            ],
            ..Log::default()
        };
        assert_eq!(log.kinds(), vec![Kind::UncertainWithoutCause]);
    }

    #[test]
    fn service_not_back_within_five_seconds_is_seen() {
        let probe = |sent_at| Probe {
            replica: 1,
            label: "PR000001".into(),
            from: 50.0,
            sent_at,
            last: String::new(),
        };
        let log = Log {
            probes: vec![probe(Some(54.0)), probe(Some(55.5)), probe(None)],
            ..Log::default()
        };
        assert_eq!(log.kinds(), vec![Kind::NoResume; 2]);
    }
}
