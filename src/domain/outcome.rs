//! What a retrieval can come to: the MPC's answer, the outcome remembered
//! for a label, and the decision recorded for each request.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::clock::since_epoch;

/// The MPC's status and JSON body, as shown to callers.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MpcAnswer {
    /// HTTP status the MPC sent.
    #[schema(example = 200)]
    pub status: u16,
    /// The MPC's JSON body, verbatim; `None` when empty or not JSON. Kept as
    /// shared text: every remembered copy and every answer carries it.
    #[schema(value_type = Option<Object>)]
    pub body: Option<Arc<RawValue>>,
}

impl MpcAnswer {
    /// An answer with a JSON body (for tests and the simulated MPC).
    pub fn with_json(status: u16, body: &serde_json::Value) -> Self {
        Self {
            status,
            body: serde_json::value::to_raw_value(body).ok().map(Arc::from),
        }
    }
}

impl PartialEq for MpcAnswer {
    fn eq(&self, other: &Self) -> bool {
        self.status == other.status
            && self.body.as_ref().map(|b| b.get()) == other.body.as_ref().map(|b| b.get())
    }
}

/// What the MPC made of the last call for a label.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The MPC accepted: the email is on its way.
    Sent {
        /// The MPC's answer.
        upstream: MpcAnswer,
    },
    /// The MPC refused the label.
    Rejected {
        /// The MPC's answer.
        upstream: MpcAnswer,
    },
    /// The MPC may or may not have acted.
    Uncertain {
        /// What went wrong.
        reason: Uncertainty,
    },
}

impl Outcome {
    /// Whether the call that came to this may have made the MPC send an email.
    pub fn may_have_emailed(&self) -> bool {
        !matches!(self, Self::Rejected { .. })
    }

    /// The outcome's name in admin answers and the state file.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Sent { .. } => "sent",
            Self::Rejected { .. } => "rejected",
            Self::Uncertain { .. } => "uncertain",
        }
    }
}

/// Why an outcome is uncertain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Uncertainty {
    /// No answer within `upstream.timeout`.
    Timeout,
    /// The connection failed after the request may have been sent.
    ConnectionLost,
}

/// A remembered outcome: what happened, when, for whom, until when.
/// Kept small and cheap to clone: there may be a million of them.
#[derive(Clone, Debug, PartialEq)]
pub struct Remembered {
    outcome: Outcome,
    requested_at: UnixMillis,
    expires_at: UnixMillis,
    user: Arc<str>,
}

impl Remembered {
    /// An outcome of a call made at `requested_at` by `user`, current until `expires_at`.
    pub fn new(
        outcome: Outcome,
        requested_at: SystemTime,
        expires_at: SystemTime,
        user: Arc<str>,
    ) -> Self {
        Self {
            outcome,
            requested_at: UnixMillis::from(requested_at),
            expires_at: UnixMillis::from(expires_at),
            user,
        }
    }

    /// What the MPC made of the call.
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// When the MPC call was made.
    pub fn requested_at(&self) -> SystemTime {
        self.requested_at.into()
    }

    /// When the memory of it ends and the label may be forwarded again.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at.into()
    }

    /// The user whose request made the call.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Time left at `now` before the label may be forwarded again.
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.expires_at()
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }
}

/// Wall-clock time in milliseconds since the Unix epoch: half a `SystemTime`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct UnixMillis(u64);

impl From<SystemTime> for UnixMillis {
    fn from(at: SystemTime) -> Self {
        Self(u64::try_from(since_epoch(at).as_millis()).unwrap_or(u64::MAX))
    }
}

impl From<UnixMillis> for SystemTime {
    fn from(at: UnixMillis) -> Self {
        SystemTime::UNIX_EPOCH + Duration::from_millis(at.0)
    }
}

/// What became of one retrieve request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetrievalOutcome {
    /// This request's MPC call was accepted.
    Sent,
    /// Answered from a remembered outcome, whatever it was.
    Deduplicated,
    /// Waited for a concurrent identical request's call.
    Coalesced,
    /// 422.
    InvalidLabel,
    /// 400, 413, 415.
    MalformedRequest,
    /// 401.
    Unauthenticated,
    /// 429.
    QuotaExceeded,
    /// The MPC refused the label.
    UpstreamRejected,
    /// The MPC failed, or the connection broke.
    UpstreamError,
    /// The MPC did not answer in time.
    UpstreamTimeout,
    /// The circuit breaker refused to call the MPC.
    CircuitOpen,
    /// The courtesy budget was spent.
    GatewayBusy,
    /// The shared store could not be reached, so the label could not be claimed.
    StoreUnavailable,
    /// 403: the API key lacks the scope the route needs.
    Forbidden,
    /// 403: a browser request from another origin.
    CrossOrigin,
    /// The MPC asked the gateway to slow down: this request's call was
    /// throttled, or it came during the pause.
    UpstreamThrottled,
}

impl RetrievalOutcome {
    /// Every outcome, for series exported at 0 from start-up.
    pub const ALL: [Self; 16] = [
        Self::Sent,
        Self::Deduplicated,
        Self::Coalesced,
        Self::InvalidLabel,
        Self::MalformedRequest,
        Self::Unauthenticated,
        Self::QuotaExceeded,
        Self::UpstreamRejected,
        Self::UpstreamError,
        Self::UpstreamTimeout,
        Self::CircuitOpen,
        Self::GatewayBusy,
        Self::StoreUnavailable,
        Self::Forbidden,
        Self::CrossOrigin,
        Self::UpstreamThrottled,
    ];

    /// The `outcome` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Deduplicated => "deduplicated",
            Self::Coalesced => "coalesced",
            Self::InvalidLabel => "invalid_label",
            Self::MalformedRequest => "malformed_request",
            Self::Unauthenticated => "unauthenticated",
            Self::QuotaExceeded => "quota_exceeded",
            Self::UpstreamRejected => "upstream_rejected",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::CircuitOpen => "circuit_open",
            Self::GatewayBusy => "gateway_busy",
            Self::StoreUnavailable => "store_unavailable",
            Self::Forbidden => "forbidden",
            Self::CrossOrigin => "cross_origin",
            Self::UpstreamThrottled => "upstream_throttled",
        }
    }
}

/// What one retrieval came to, for its metrics, audit line and log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The outcome.
    pub outcome: RetrievalOutcome,
    /// The MPC's status, when an MPC answer was involved.
    pub upstream_status: Option<u16>,
    /// Whether this request may have made the MPC send an email.
    pub may_have_emailed: bool,
}

/// How one MPC call ended, as `upstream_requests_total` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallResult {
    /// The MPC accepted.
    Accepted,
    /// A 4xx answer but 429: the MPC refused the label (or, 408, did not
    /// read the request).
    Rejected,
    /// The MPC failed (5xx).
    ServerError,
    /// A status that is neither 2xx, 4xx nor 5xx.
    OtherStatus,
    /// No answer within `upstream.timeout`.
    Timeout,
    /// No connection could be made.
    ConnectError,
    /// The connection failed after the request may have been written.
    ConnectionLost,
    /// The MPC asked the gateway to slow down: a 429, or a 503 with `Retry-After`.
    Throttled,
}

impl CallResult {
    /// Every result, for series exported at 0 from start-up.
    pub const ALL: [Self; 8] = [
        Self::Accepted,
        Self::Rejected,
        Self::ServerError,
        Self::OtherStatus,
        Self::Timeout,
        Self::ConnectError,
        Self::ConnectionLost,
        Self::Throttled,
    ];

    /// The `result` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "2xx",
            Self::Rejected => "4xx",
            Self::ServerError => "5xx",
            Self::OtherStatus => "other_status",
            Self::Timeout => "timeout",
            Self::ConnectError => "connect_error",
            Self::ConnectionLost => "connection_lost",
            Self::Throttled => "throttled",
        }
    }
}
