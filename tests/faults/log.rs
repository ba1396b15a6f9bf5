//! What a run records, each event stamped in seconds since the run began:
//! the stand-in MPC's calls, the clients' answers (already read into what
//! they mean), the faults and the final probes. The checker reads only these.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

/// Seconds since the run began; the stand-in, the clients and the injector
/// share the origin.
pub type Secs = f64;

struct Origin {
    instant: Instant,
    wall: SystemTime,
}

fn origin() -> &'static Origin {
    static ORIGIN: OnceLock<Origin> = OnceLock::new();
    ORIGIN.get_or_init(|| Origin {
        instant: Instant::now(),
        wall: SystemTime::now(),
    })
}

/// Now, in seconds since the run began.
pub fn now() -> Secs {
    origin().instant.elapsed().as_secs_f64()
}

/// The wall-clock time at which the run began, to place the gateways'
/// timestamps (`requested_at`) on the run's time line.
pub fn origin_wall() -> SystemTime {
    origin().wall
}

/// What the stand-in MPC does with a label, told by its first two letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MpcReply {
    /// 200 after a random delay within the gateway's timeout.
    Accepted,
    /// 404 after a random delay.
    Rejected,
    /// 500 after a random delay: certainly nothing sent.
    ServerError,
    /// 200, but only after the gateway's `upstream.timeout`.
    Late,
    /// The connection closed right after the request was read.
    Closed,
}

impl MpcReply {
    /// The stand-in's reply to `label`.
    pub fn of(label: &str) -> Self {
        match label.get(..2) {
            Some("NF") => Self::Rejected,
            Some("ER") => Self::ServerError,
            Some("TO") => Self::Late,
            Some("CL") => Self::Closed,
            _ => Self::Accepted,
        }
    }

    /// Whether the MPC accepted the request (the email is sent), whether or
    /// not the gateway waited long enough to read it.
    pub fn accepts(self) -> bool {
        matches!(self, Self::Accepted | Self::Late)
    }

    /// A short name for summaries and time lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::Accepted => "200",
            Self::Rejected => "404",
            Self::ServerError => "500",
            Self::Late => "late",
            Self::Closed => "closed",
        }
    }
}

/// One request read by the stand-in MPC.
#[derive(Clone, Debug)]
pub struct Call {
    pub label: String,
    /// The replica that made it, told by its User-Agent.
    pub replica: Option<usize>,
    /// When the whole request had been read.
    pub read: Secs,
    /// When the answer was about to be written (or the connection closed).
    pub ended: Secs,
    pub reply: MpcReply,
    /// Whether the answer (or the close) reached the socket without error.
    pub delivered: bool,
}

/// A fault the injector caused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// A replica SIGKILLed, then started again.
    ReplicaKill(usize),
    /// A replica SIGSTOPped for 1–3 s, then SIGCONT.
    ReplicaStop(usize),
    /// Redis SIGKILLed, then started again, empty, on the same socket.
    RedisRestart,
    /// `FLUSHALL`.
    FlushAll,
    /// `SCRIPT FLUSH`.
    ScriptFlush,
    /// `DEBUG SLEEP` of 1–2 s.
    DebugSleep,
    /// Redis SIGSTOPped for 1–3 s, then SIGCONT.
    RedisStop,
    /// `CLIENT KILL TYPE normal`: every replica's connection cut.
    ClientKill,
}

impl FaultKind {
    /// A short name for summaries and time lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::ReplicaKill(_) => "replica-kill",
            Self::ReplicaStop(_) => "replica-stop",
            Self::RedisRestart => "redis-restart",
            Self::FlushAll => "flushall",
            Self::ScriptFlush => "script-flush",
            Self::DebugSleep => "debug-sleep",
            Self::RedisStop => "redis-stop",
            Self::ClientKill => "client-kill",
        }
    }

    /// The replica it strikes, if it strikes one.
    pub fn replica(self) -> Option<usize> {
        match self {
            Self::ReplicaKill(replica) | Self::ReplicaStop(replica) => Some(replica),
            _ => None,
        }
    }

    /// Whether Redis loses its data (and with it every quota's state).
    pub fn loses_data(self) -> bool {
        matches!(self, Self::RedisRestart | Self::FlushAll)
    }
}

/// A fault and its times.
#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: FaultKind,
    pub start: Secs,
    /// When recovery was complete: the process continued, Redis answered
    /// again, a restarted replica was ready.
    pub end: Secs,
    /// When Redis could certainly not answer (stopped, asleep, dead), if it
    /// could not.
    pub down: Option<(Secs, Secs)>,
    /// The answer of the stand-in it was timed against, if it was aimed.
    pub aimed_at: Option<String>,
}

/// The public routes the clients use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    Retrieve,
    LabelStatus,
    BatchStatus,
    BatchRetrieve,
    /// The observer page's form, `POST /` without JavaScript.
    Page,
}

impl Route {
    /// Every route, in the order of the summary.
    pub const ALL: [Self; 5] = [
        Self::Retrieve,
        Self::LabelStatus,
        Self::BatchStatus,
        Self::BatchRetrieve,
        Self::Page,
    ];

    /// A short name for summaries and time lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::Retrieve => "retrieve",
            Self::LabelStatus => "label",
            Self::BatchStatus => "batch/status",
            Self::BatchRetrieve => "batch/retrieve",
            Self::Page => "page",
        }
    }

    /// Whether the route only reports (and never calls the MPC).
    pub fn is_status(self) -> bool {
        matches!(self, Self::LabelStatus | Self::BatchStatus)
    }
}

/// A refusal that sent nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    CircuitOpen,
    GatewayBusy,
    StoreUnavailable,
    Quota,
    Throttled,
    /// A refusal the page put in words only.
    InWords,
}

/// What one answer (or one batch item, or one row of the page) said of one label.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// 200 `sent`; the page shows no time.
    Sent {
        requested_at: Option<Secs>,
        until: Option<Secs>,
    },
    /// 200 `already_requested`.
    AlreadyRequested {
        requested_at: Secs,
        until: Option<Secs>,
    },
    /// `upstream-rejected`, with the MPC's status (the page does not show it).
    Rejected { status: Option<u16> },
    /// 504 `upstream-timeout`, or 502 `upstream-error` with `Retry-After`:
    /// the MPC may have sent the email.
    Uncertain,
    /// 502 `upstream-error` without `Retry-After`: certainly nothing sent.
    UpstreamError,
    /// A refusal that sent nothing (429, 503).
    Refused(Refusal),
    /// The label and batch status routes' 200.
    Status {
        last_requested_at: Option<Secs>,
        until: Option<Secs>,
    },
    /// No HTTP answer (the replica was killed or stopped, mostly).
    Transport,
    /// Not an answer the SPEC gives for this route and request.
    Unexpected(String),
}

/// What the client sent and got, for one label.
#[derive(Clone, Debug)]
pub struct Answer {
    pub route: Route,
    pub replica: usize,
    /// Whether the asker is the user on the tight tier.
    pub tight: bool,
    pub label: String,
    pub sent: Secs,
    pub received: Secs,
    pub reply: Reply,
}

/// The final check that service resumed: a new label at one replica.
#[derive(Clone, Debug)]
pub struct Probe {
    pub replica: usize,
    pub label: String,
    /// From when it should have been sent within 5 s.
    pub from: Secs,
    /// When it was answered `sent`, if it was.
    pub sent_at: Option<Secs>,
    /// The last answer before that, for the report.
    pub last: String,
}

/// `text` (RFC 3339, as the gateway writes its timestamps) on the run's time line.
pub fn timestamp(text: &str, origin: SystemTime) -> Option<Secs> {
    let at = humantime::parse_rfc3339(text).ok()?;
    Some(match at.duration_since(origin) {
        Ok(after) => after.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    })
}

/// The title the gateway gives a lost connection to the MPC: a batch item
/// carries no `Retry-After`, so this tells its 502 from a certain failure.
const CONNECTION_LOST_TITLE: &str = "The connection to the MPC failed";

impl Reply {
    /// What a retrieve or status answer (`status`, `Retry-After` when it is a
    /// whole response, the JSON `body`) says of `label` on `route`.
    pub fn of_item(
        route: Route,
        label: &str,
        status: u16,
        retry_after: Option<&str>,
        whole_response: bool,
        body: &Value,
        origin: SystemTime,
    ) -> Self {
        let text = |name: &str| body.get(name).and_then(Value::as_str);
        let time = |name: &str| text(name).and_then(|at| timestamp(at, origin));
        if status == 200 {
            if body["label"] != label {
                return Self::Unexpected(format!("200 for another label: {body}"));
            }
            if route.is_status() {
                let (last, until) = (time("last_requested_at"), time("resend_available_at"));
                let consistent = body["valid"] == true
                    && last.is_some() == until.is_some()
                    && (last.is_some() || body["last_requested_at"].is_null());
                return if consistent {
                    Self::Status {
                        last_requested_at: last,
                        until,
                    }
                } else {
                    Self::Unexpected(format!("status body {body}"))
                };
            }
            let (requested_at, until) = (time("requested_at"), time("resend_available_at"));
            return match (text("status"), requested_at, until) {
                (Some("sent"), Some(at), Some(_)) => Self::Sent {
                    requested_at: Some(at),
                    until,
                },
                (Some("already_requested"), Some(at), Some(_)) => Self::AlreadyRequested {
                    requested_at: at,
                    until,
                },
                _ => Self::Unexpected(format!("200 body {body}")),
            };
        }
        let kind = text("type").unwrap_or("");
        if body["status"] != status {
            return Self::Unexpected(format!("{status} with a problem saying {body}"));
        }
        // A whole response names when to ask again in its header; a batch
        // item has none to carry.
        let needs_retry_after = |reply: Self| {
            if whole_response && retry_after.is_none() {
                Self::Unexpected(format!("{status} {kind} without Retry-After"))
            } else {
                reply
            }
        };
        if route.is_status() {
            return match (status, kind) {
                (503, "urn:mpc-gateway:store-unavailable") => {
                    needs_retry_after(Self::Refused(Refusal::StoreUnavailable))
                }
                _ => Self::Unexpected(format!("{status} {kind} on a status route")),
            };
        }
        match (status, kind) {
            (400..=499, "urn:mpc-gateway:upstream-rejected") => Self::Rejected {
                status: Some(status),
            },
            (504, "urn:mpc-gateway:upstream-timeout") => needs_retry_after(Self::Uncertain),
            (502, "urn:mpc-gateway:upstream-error") => {
                let lost = text("title") == Some(CONNECTION_LOST_TITLE);
                match (lost, whole_response, retry_after.is_some()) {
                    (true, false, _) | (true, true, true) => Self::Uncertain,
                    (false, _, false) => Self::UpstreamError,
                    _ => Self::Unexpected(format!(
                        "502 {:?} with Retry-After {retry_after:?}",
                        text("title")
                    )),
                }
            }
            (503, "urn:mpc-gateway:upstream-circuit-open") => {
                needs_retry_after(Self::Refused(Refusal::CircuitOpen))
            }
            (503, "urn:mpc-gateway:gateway-busy") => {
                needs_retry_after(Self::Refused(Refusal::GatewayBusy))
            }
            (503, "urn:mpc-gateway:store-unavailable") => {
                needs_retry_after(Self::Refused(Refusal::StoreUnavailable))
            }
            (503, "urn:mpc-gateway:upstream-throttled") => {
                needs_retry_after(Self::Refused(Refusal::Throttled))
            }
            (429, "urn:mpc-gateway:quota-exceeded") => {
                needs_retry_after(Self::Refused(Refusal::Quota))
            }
            _ => Self::Unexpected(format!("{status} {kind}")),
        }
    }

    /// What one row of the page (`class`, and its `words`, as HTML) says.
    pub fn of_page_row(class: &str, words: &str, origin: SystemTime) -> Self {
        // Times are in words, or in `<time datetime="...">` elements.
        let times: Vec<Secs> = words
            .split("datetime=\"")
            .skip(1)
            .filter_map(|rest| timestamp(rest.split('"').next()?, origin))
            .collect();
        let between = |from: &str, to: &str| {
            let start = words.find(from)? + from.len();
            let end = start + words[start..].find(to)?;
            timestamp(&words[start..end], origin)
        };
        match class {
            "sent" => Self::Sent {
                requested_at: None,
                until: times
                    .first()
                    .copied()
                    .or_else(|| between("possible after ", ".")),
            },
            "already" => match times
                .first()
                .copied()
                .or_else(|| between("Already requested at ", ";"))
            {
                Some(requested_at) => Self::AlreadyRequested {
                    requested_at,
                    until: times
                        .get(1)
                        .copied()
                        .or_else(|| between("possible after ", ".")),
                },
                None => Self::Unexpected(format!("page row {class}: {words}")),
            },
            "refused" if words.starts_with("Refused by the MPC") => Self::Rejected { status: None },
            "refused" if words.contains("may still email") => Self::Uncertain,
            "refused" if words.contains("No action code was requested") => Self::UpstreamError,
            "refused" => Self::Refused(Refusal::InWords),
            _ => Self::Unexpected(format!("page row {class}: {words}")),
        }
    }

    /// A short description for time lines.
    pub fn describe(&self) -> String {
        let at = |at: Option<Secs>| at.map_or("-".to_owned(), |at| format!("{at:.2}"));
        match self {
            Self::Sent {
                requested_at,
                until,
            } => format!("sent at {} until {}", at(*requested_at), at(*until)),
            Self::AlreadyRequested {
                requested_at,
                until,
            } => format!(
                "already_requested at {} until {}",
                at(Some(*requested_at)),
                at(*until)
            ),
            Self::Rejected { status } => format!("rejected {status:?}"),
            Self::Uncertain => "uncertain (504, or 502 with Retry-After)".to_owned(),
            Self::UpstreamError => "502 upstream-error (nothing sent)".to_owned(),
            Self::Refused(refusal) => format!("refused {refusal:?}"),
            Self::Status {
                last_requested_at,
                until,
            } => format!(
                "status last_requested_at {} until {}",
                at(*last_requested_at),
                at(*until)
            ),
            Self::Transport => "no HTTP answer".to_owned(),
            Self::Unexpected(what) => format!("UNEXPECTED {what}"),
        }
    }
}

/// How long `from` to `to` is, in seconds, for sleeps.
pub fn seconds(secs: Secs) -> Duration {
    Duration::from_secs_f64(secs.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LABEL: &str = "OK000001";

    fn origin() -> SystemTime {
        humantime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap()
    }

    fn problem(status: u16, kind: &str, title: &str) -> Value {
        json!({"type": kind, "status": status, "title": title, "detail": "d"})
    }

    #[test]
    fn a_502_is_uncertain_only_for_a_lost_connection_with_retry_after() {
        let error = "urn:mpc-gateway:upstream-error";
        let lost = problem(502, error, CONNECTION_LOST_TITLE);
        let failed = problem(502, error, "The MPC could not be used");
        let single = |body: &Value, retry_after| {
            Reply::of_item(
                Route::Retrieve,
                LABEL,
                502,
                retry_after,
                true,
                body,
                origin(),
            )
        };
        let item = |body: &Value| {
            Reply::of_item(
                Route::BatchRetrieve,
                LABEL,
                502,
                None,
                false,
                body,
                origin(),
            )
        };
        assert_eq!(single(&lost, Some("15")), Reply::Uncertain);
        assert_eq!(single(&failed, None), Reply::UpstreamError);
        assert!(matches!(single(&lost, None), Reply::Unexpected(_)));
        assert!(matches!(single(&failed, Some("15")), Reply::Unexpected(_)));
        assert_eq!(item(&lost), Reply::Uncertain);
        assert_eq!(item(&failed), Reply::UpstreamError);
    }

    #[test]
    fn a_whole_refusal_without_retry_after_is_not_a_spec_answer() {
        let timeout = problem(504, "urn:mpc-gateway:upstream-timeout", "t");
        let single = Reply::of_item(Route::Retrieve, LABEL, 504, None, true, &timeout, origin());
        assert!(matches!(single, Reply::Unexpected(_)));
        let item = Reply::of_item(
            Route::BatchRetrieve,
            LABEL,
            504,
            None,
            false,
            &timeout,
            origin(),
        );
        assert_eq!(item, Reply::Uncertain);
    }

    #[test]
    fn a_status_route_answers_only_status_or_store_unavailable() {
        let status = |body: &Value| {
            Reply::of_item(Route::LabelStatus, LABEL, 200, None, true, body, origin())
        };
        let nothing = json!({"label": LABEL, "valid": true, "last_requested_at": null,
            "resend_available_at": null});
        assert_eq!(
            status(&nothing),
            Reply::Status {
                last_requested_at: None,
                until: None
            }
        );
        let half = json!({"label": LABEL, "valid": true,
            "last_requested_at": "2026-01-01T00:00:10Z", "resend_available_at": null});
        assert!(matches!(status(&half), Reply::Unexpected(_)));
        let timeout = problem(504, "urn:mpc-gateway:upstream-timeout", "t");
        let on_status = Reply::of_item(
            Route::LabelStatus,
            LABEL,
            504,
            Some("1"),
            true,
            &timeout,
            origin(),
        );
        assert!(matches!(on_status, Reply::Unexpected(_)));
    }

    #[test]
    fn page_rows_are_read_with_times_in_words_or_in_time_elements() {
        let words = "Already requested at 2026-01-01T00:00:10Z; a resend is possible after \
                     2026-01-01T00:00:50Z.";
        let elements = "Already requested at <time datetime=\"2026-01-01T00:00:10Z\">00:00:10 \
                        UTC</time>; a resend is possible after <time \
                        datetime=\"2026-01-01T00:00:50Z\">00:00:50 UTC</time>.";
        for words in [words, elements] {
            assert_eq!(
                Reply::of_page_row("already", words, origin()),
                Reply::AlreadyRequested {
                    requested_at: 10.0,
                    until: Some(50.0)
                },
                "{words}"
            );
        }
        assert_eq!(
            Reply::of_page_row(
                "refused",
                "The MPC did not answer in time, so it may still email the action code",
                origin()
            ),
            Reply::Uncertain
        );
    }
}
