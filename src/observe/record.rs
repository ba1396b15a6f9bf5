//! One record per retrieval decision: its metric and its audit line, the
//! same whichever route (single, batch item, page) made the decision.

use std::sync::Arc;

use crate::clock::Clock;
use crate::domain::label::{Label, LabelKind};
use crate::domain::outcome::Decision;
use crate::observe::audit::{AuditEntry, AuditLog};
use crate::observe::metrics::Metrics;

/// Who asked, in the words of the logs.
#[derive(Clone, Copy, Debug)]
pub struct Asker<'a> {
    /// The request's id (`X-Request-Id`).
    pub request_id: &'a str,
    /// The user, when known.
    pub user: Option<&'a str>,
}

/// Records retrieval decisions into the metrics and the audit trail.
pub struct Observer {
    metrics: Arc<Metrics>,
    audit: Arc<AuditLog>,
    clock: Arc<dyn Clock>,
}

impl Observer {
    /// An observer writing to `metrics` and `audit`, timestamps from `clock`.
    pub fn new(metrics: Arc<Metrics>, audit: Arc<AuditLog>, clock: Arc<dyn Clock>) -> Self {
        Self {
            metrics,
            audit,
            clock,
        }
    }

    /// Counts one decision about `label` (`None`: no valid label was read)
    /// and writes its audit line.
    pub fn record(&self, asker: Asker<'_>, label: Option<&Label>, decision: Decision) {
        let kind = label.map(Label::kind);
        self.metrics.count_retrieval(decision.outcome, kind);
        if self.audit.is_enabled() {
            self.audit.record(&AuditEntry {
                timestamp: AuditEntry::timestamp(self.clock.system_time()),
                request_id: asker.request_id,
                user: asker.user,
                label: label.map(Label::as_str),
                label_kind: kind.map_or("none", LabelKind::as_str),
                outcome: decision.outcome.as_str(),
                upstream_status: decision.upstream_status,
                email_may_have_been_triggered: decision.may_have_emailed,
                simulated: self.audit.is_simulated(),
            });
        }
    }

    /// The metrics the observer counts into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
