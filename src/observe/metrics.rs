//! Prometheus metrics on an owned registry. Every label value is drawn from a
//! fixed set (route templates, outcomes, kinds, results): no user, key or
//! label value ever becomes a series.

use std::ops::RangeInclusive;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use actix_web::http::Method;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::domain::label::LabelKind;
use crate::domain::outcome::{CallResult, RetrievalOutcome};
use crate::quota::LimitKind;
use crate::store::OPERATIONS as STORE_OPERATIONS;
use crate::store::redis::Health;

/// The HTTP series of one route template, resolved once: looking a series
/// up by its label values hashes them, on every request.
pub struct RouteSeries {
    template: &'static str,
    duration: Histogram,
    requests: IntCounterVec,
    /// One per method and status slot, created on first use so that only
    /// answered combinations are exported.
    counters: Box<[OnceLock<IntCounter>]>,
}

impl RouteSeries {
    fn new(template: &'static str, requests: &IntCounterVec, duration: &HistogramVec) -> Self {
        Self {
            template,
            duration: duration.with_label_values(&[template]),
            requests: requests.clone(),
            counters: (0..METHODS.len() * STATUSES.len())
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// The route's template, as in the `route` label.
    pub fn template(&self) -> &'static str {
        self.template
    }

    /// Counts and times one answered request.
    pub fn observe(&self, method: &Method, status: u16, elapsed: Duration) {
        let method = method_index(method);
        let status = status_index(status);
        self.counters[method * STATUSES.len() + status]
            .get_or_init(|| {
                self.requests.with_label_values(&[
                    self.template,
                    METHODS[method],
                    STATUSES[status].1,
                ])
            })
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    routes: Vec<RouteSeries>,
    retrievals: Box<[IntCounter]>,
    upstream_requests: IntCounterVec,
    upstream_duration: Histogram,
    upstream_in_flight: IntGauge,
    dedup_entries: IntGauge,
    quota_rejections: IntCounterVec,
    circuit_breaker_state: IntGauge,
    upstream_paused: IntGauge,
    audit_write_failures: IntCounter,
    state_file_saves: ByResult,
    config_reloads: ByResult,
    store_up: IntGauge,
    store_errors: IntCounterVec,
}

/// A counter of something that either worked or not, both series at 0 from
/// the start.
struct ByResult {
    worked: IntCounter,
    failed: IntCounter,
}

impl ByResult {
    /// Registers `name` with the `result` label values `[worked, failed]`.
    fn register(
        registry: &Registry,
        name: &str,
        help: &str,
        [worked, failed]: [&str; 2],
    ) -> Result<Self, prometheus::Error> {
        let counter = IntCounterVec::new(Opts::new(name, help), &["result"])?;
        registry.register(Box::new(counter.clone()))?;
        Ok(Self {
            worked: counter.with_label_values(&[worked]),
            failed: counter.with_label_values(&[failed]),
        })
    }
}

impl Metrics {
    /// Registers every metric, with known series at 0: one HTTP series per
    /// route template, and `unmatched` for requests that match none.
    pub fn new(
        templates: &[&'static str],
        unmatched: &'static str,
    ) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "mpc_gateway_http_requests_total",
                "HTTP requests answered, by route template, method and status.",
            ),
            &["route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "mpc_gateway_http_request_duration_seconds",
                "Time to answer HTTP requests, by route template.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["route"],
        )?;
        let retrievals = IntCounterVec::new(
            Opts::new(
                "mpc_gateway_retrievals_total",
                "Retrieve requests by outcome and label kind.",
            ),
            &["outcome", "label_kind"],
        )?;
        let upstream_requests = IntCounterVec::new(
            Opts::new(
                "mpc_gateway_upstream_requests_total",
                "Calls to the MPC by result.",
            ),
            &["result"],
        )?;
        let upstream_duration = Histogram::with_opts(
            HistogramOpts::new(
                "mpc_gateway_upstream_request_duration_seconds",
                "Time the MPC took to answer (or to fail).",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0,
            ]),
        )?;
        let upstream_in_flight = IntGauge::new(
            "mpc_gateway_upstream_in_flight",
            "Calls to the MPC under way.",
        )?;
        let dedup_entries = IntGauge::new(
            "mpc_gateway_dedup_entries",
            "Labels whose outcome is remembered.",
        )?;
        let quota_rejections = IntCounterVec::new(
            Opts::new(
                "mpc_gateway_quota_rejections_total",
                "Requests refused by a limit.",
            ),
            &["limit"],
        )?;
        let circuit_breaker_state = IntGauge::new(
            "mpc_gateway_circuit_breaker_state",
            "Circuit breaker towards the MPC: 0 closed, 1 half-open, 2 open.",
        )?;
        let upstream_paused = IntGauge::new(
            "mpc_gateway_upstream_paused",
            "1 while the MPC's own back-pressure (429, or 503 with Retry-After) pauses \
             forwarding, else 0.",
        )?;
        let audit_write_failures = IntCounter::new(
            "mpc_gateway_audit_write_failures_total",
            "Audit lines lost because the audit file could not be written.",
        )?;
        let store_up = IntGauge::new(
            "mpc_gateway_store_up",
            "1 while the shared store answers (always 1 for the memory backend).",
        )?;
        let store_errors = IntCounterVec::new(
            Opts::new(
                "mpc_gateway_store_errors_total",
                "Shared-store commands that failed or timed out, by operation.",
            ),
            &["operation"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("mpc_gateway_build_info", "The gateway's version; always 1."),
            &["version"],
        )?;

        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(retrievals.clone()))?;
        registry.register(Box::new(upstream_requests.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(upstream_in_flight.clone()))?;
        registry.register(Box::new(dedup_entries.clone()))?;
        registry.register(Box::new(quota_rejections.clone()))?;
        registry.register(Box::new(circuit_breaker_state.clone()))?;
        registry.register(Box::new(upstream_paused.clone()))?;
        registry.register(Box::new(build_info.clone()))?;
        registry.register(Box::new(audit_write_failures.clone()))?;
        registry.register(Box::new(store_up.clone()))?;
        registry.register(Box::new(store_errors.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let kinds = LabelKind::ALL
            .iter()
            .map(|kind| kind.as_str())
            .chain(["none"]);
        // Resolved once, in `retrieval_index` order.
        let retrieval_series = RetrievalOutcome::ALL
            .iter()
            .flat_map(|outcome| {
                kinds
                    .clone()
                    .map(|kind| retrievals.with_label_values(&[outcome.as_str(), kind]))
            })
            .collect();
        let routes = templates
            .iter()
            .chain(&[unmatched])
            .map(|template| RouteSeries::new(template, &http_requests, &http_duration))
            .collect();
        for result in CallResult::ALL {
            upstream_requests.with_label_values(&[result.as_str()]);
        }
        for limit in LimitKind::ALL {
            quota_rejections.with_label_values(&[limit.as_str()]);
        }
        store_up.set(1);
        for operation in STORE_OPERATIONS {
            store_errors.with_label_values(&[operation]);
        }

        let state_file_saves = ByResult::register(
            &registry,
            "mpc_gateway_state_file_saves_total",
            "Writes of the state file (dedup.state_file), by result.",
            ["ok", "error"],
        )?;
        let config_reloads = ByResult::register(
            &registry,
            "mpc_gateway_config_reloads_total",
            "Configuration reloads on SIGHUP, by result.",
            ["applied", "rejected"],
        )?;

        Ok(Self {
            registry,
            routes,
            retrievals: retrieval_series,
            upstream_requests,
            upstream_duration,
            upstream_in_flight,
            dedup_entries,
            quota_rejections,
            circuit_breaker_state,
            upstream_paused,
            audit_write_failures,
            state_file_saves,
            config_reloads,
            store_up,
            store_errors,
        })
    }

    /// `store_up` and `store_errors_total`, for the shared store to keep.
    pub fn store_health(&self) -> Health {
        Health {
            up: self.store_up.clone(),
            errors: self.store_errors.clone(),
        }
    }

    /// The HTTP series of a route template (one of those given to
    /// [`Metrics::new`]; any other counts as unmatched).
    pub fn route(&self, template: &str) -> &RouteSeries {
        self.routes
            .iter()
            .find(|series| series.template == template)
            .unwrap_or_else(|| self.routes.last().expect("the unmatched series exists"))
    }

    /// Counts one retrieve request's outcome.
    pub fn count_retrieval(&self, outcome: RetrievalOutcome, kind: Option<LabelKind>) {
        self.retrievals[retrieval_index(outcome, kind)].inc();
    }

    /// Counts a refusal by `limit`.
    pub fn quota_rejected(&self, limit: LimitKind) {
        self.quota_rejections
            .with_label_values(&[limit.as_str()])
            .inc();
    }

    /// Marks an MPC call as started; the guard ends it, also when cancelled.
    pub fn upstream_call(&self) -> UpstreamCall<'_> {
        self.upstream_in_flight.inc();
        UpstreamCall {
            metrics: self,
            started: Instant::now(),
        }
    }

    /// Sets the remembered-outcome count.
    pub fn set_dedup_entries(&self, count: u64) {
        self.dedup_entries
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Sets the breaker state: 0 closed, 1 half-open, 2 open.
    pub fn set_circuit_breaker_state(&self, state: i64) {
        self.circuit_breaker_state.set(state);
    }

    /// Sets whether forwarding is paused at the MPC's request.
    pub fn set_upstream_paused(&self, paused: bool) {
        self.upstream_paused.set(i64::from(paused));
    }

    /// The counter of lost audit lines, for the audit log to count them in.
    pub fn audit_write_failures(&self) -> IntCounter {
        self.audit_write_failures.clone()
    }

    /// Counts a write of the state file that succeeded.
    pub fn state_file_saved(&self) {
        self.state_file_saves.worked.inc();
    }

    /// Counts a write of the state file that failed.
    pub fn state_file_save_failed(&self) {
        self.state_file_saves.failed.inc();
    }

    /// Counts a reload of the configuration: applied, or refused as invalid.
    pub fn config_reloaded(&self, applied: bool) {
        if applied {
            self.config_reloads.worked.inc();
        } else {
            self.config_reloads.failed.inc();
        }
    }

    /// Everything in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(error) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// An MPC call under way, counted in `upstream_in_flight` until dropped.
pub struct UpstreamCall<'a> {
    metrics: &'a Metrics,
    started: Instant,
}

impl UpstreamCall<'_> {
    /// Records the call's result and duration.
    pub fn finish(self, result: CallResult) {
        self.metrics
            .upstream_requests
            .with_label_values(&[result.as_str()])
            .inc();
        self.metrics
            .upstream_duration
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for UpstreamCall<'_> {
    fn drop(&mut self) {
        self.metrics.upstream_in_flight.dec();
    }
}

/// The `method` label values: methods outside the usual few share `other`,
/// so clients cannot mint series.
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "other",
];

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::HEAD => 4,
        Method::OPTIONS => 5,
        Method::PATCH => 6,
        _ => 7,
    }
}

/// The `status` label values, each with the statuses it stands for: the
/// statuses the gateway answers with, then a class for any other (the first
/// match wins).
const STATUSES: [(RangeInclusive<u16>, &str); 25] = [
    (200..=200, "200"),
    (201..=201, "201"),
    (204..=204, "204"),
    (400..=400, "400"),
    (401..=401, "401"),
    (403..=403, "403"),
    (404..=404, "404"),
    (405..=405, "405"),
    (408..=408, "408"),
    (409..=409, "409"),
    (410..=410, "410"),
    (413..=413, "413"),
    (415..=415, "415"),
    (422..=422, "422"),
    (429..=429, "429"),
    (431..=431, "431"),
    (500..=500, "500"),
    (502..=502, "502"),
    (503..=503, "503"),
    (504..=504, "504"),
    (100..=199, "1xx"),
    (200..=299, "2xx"),
    (300..=399, "3xx"),
    (400..=499, "4xx"),
    (500..=u16::MAX, "5xx"),
];

fn status_index(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|(codes, _)| codes.contains(&status))
        .unwrap_or(STATUSES.len() - 1)
}

/// Where an outcome and kind's counter sits in `Metrics::retrievals`.
fn retrieval_index(outcome: RetrievalOutcome, kind: Option<LabelKind>) -> usize {
    let kinds = LabelKind::ALL.len() + 1;
    let outcome = RetrievalOutcome::ALL
        .iter()
        .position(|o| *o == outcome)
        .unwrap_or_default();
    let kind = kind
        .and_then(|kind| LabelKind::ALL.iter().position(|k| *k == kind))
        .unwrap_or(LabelKind::ALL.len());
    outcome * kinds + kind
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRIEVE_ROUTE: &str = "/api/action-codes/retrieve";
    const TEST_ROUTES: [&str; 2] = [RETRIEVE_ROUTE, "/healthz"];

    #[test]
    fn known_series_are_exported_at_zero() {
        let metrics = Metrics::new(&TEST_ROUTES, "unmatched").unwrap();
        let text = metrics.render();
        assert!(text.contains(
            "mpc_gateway_retrievals_total{label_kind=\"none\",outcome=\"gateway_busy\"} 0"
        ));
        assert!(text.contains(
            "mpc_gateway_retrievals_total{label_kind=\"submission_block_id\",outcome=\"sent\"} 0"
        ));
        assert!(text.contains("mpc_gateway_upstream_requests_total{result=\"connection_lost\"} 0"));
        assert!(text.contains("mpc_gateway_quota_rejections_total{limit=\"upstream_per_hour\"} 0"));
        assert!(text.contains(&format!(
            "mpc_gateway_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.contains("mpc_gateway_circuit_breaker_state 0"));
        assert!(text.contains("mpc_gateway_upstream_paused 0"));
        assert!(text.contains("mpc_gateway_upstream_requests_total{result=\"throttled\"} 0"));
        assert!(text.contains(
            "mpc_gateway_retrievals_total{label_kind=\"none\",outcome=\"upstream_throttled\"} 0"
        ));
        metrics.set_upstream_paused(true);
        assert!(metrics.render().contains("mpc_gateway_upstream_paused 1"));
        metrics.set_upstream_paused(false);
        assert!(metrics.render().contains("mpc_gateway_upstream_paused 0"));
    }

    #[test]
    fn state_file_saves_are_exported_at_zero_and_counted_by_result() {
        let metrics = Metrics::new(&TEST_ROUTES, "unmatched").unwrap();
        let text = metrics.render();
        assert!(text.contains("mpc_gateway_state_file_saves_total{result=\"ok\"} 0"));
        assert!(text.contains("mpc_gateway_state_file_saves_total{result=\"error\"} 0"));
        metrics.state_file_saved();
        metrics.state_file_save_failed();
        metrics.state_file_save_failed();
        let text = metrics.render();
        assert!(text.contains("mpc_gateway_state_file_saves_total{result=\"ok\"} 1"));
        assert!(text.contains("mpc_gateway_state_file_saves_total{result=\"error\"} 2"));
    }

    #[test]
    fn in_flight_returns_to_zero_even_when_a_call_is_dropped() {
        let metrics = Metrics::new(&TEST_ROUTES, "unmatched").unwrap();
        let call = metrics.upstream_call();
        assert_eq!(metrics.upstream_in_flight.get(), 1);
        drop(call);
        assert_eq!(metrics.upstream_in_flight.get(), 0);
        metrics.upstream_call().finish(CallResult::Timeout);
        assert_eq!(metrics.upstream_in_flight.get(), 0);
        assert!(
            metrics
                .render()
                .contains("mpc_gateway_upstream_requests_total{result=\"timeout\"} 1")
        );
    }

    #[test]
    fn client_chosen_methods_and_statuses_stay_bounded() {
        let method = |m: &[u8]| METHODS[method_index(&Method::from_bytes(m).unwrap())];
        assert_eq!(method(b"BREW"), "other");
        assert_eq!(method(b"DELETE"), "DELETE");
        let status = |code| STATUSES[status_index(code)].1;
        assert_eq!(status(418), "4xx");
        assert_eq!(status(422), "422");
        assert_eq!(status(302), "3xx");
        assert_eq!(status(999), "5xx");
        for (index, (_, label)) in STATUSES.iter().enumerate().take(20) {
            assert_eq!(status_index(label.parse().unwrap()), index, "{label}");
        }
    }

    #[test]
    fn every_outcome_and_kind_has_its_own_counter() {
        let kinds = LabelKind::ALL.iter().copied().map(Some).chain([None]);
        let mut seen = std::collections::HashSet::new();
        for outcome in RetrievalOutcome::ALL {
            for kind in kinds.clone() {
                assert!(seen.insert(retrieval_index(outcome, kind)));
            }
        }
        let metrics = Metrics::new(&TEST_ROUTES, "unmatched").unwrap();
        assert_eq!(seen.len(), metrics.retrievals.len());
        metrics.count_retrieval(RetrievalOutcome::Coalesced, Some(LabelKind::Trkid));
        assert!(metrics.render().contains(
            "mpc_gateway_retrievals_total{label_kind=\"trkid\",outcome=\"coalesced\"} 1"
        ));
    }

    #[test]
    fn requests_are_counted_under_their_route_template() {
        let metrics = Metrics::new(&TEST_ROUTES, "unmatched").unwrap();
        let route = metrics.route(RETRIEVE_ROUTE);
        assert_eq!(route.template(), RETRIEVE_ROUTE);
        route.observe(&Method::POST, 422, Duration::from_millis(1));
        route.observe(&Method::POST, 422, Duration::from_millis(1));
        metrics
            .route("/not/a/template")
            .observe(&Method::GET, 404, Duration::from_millis(1));
        let text = metrics.render();
        assert!(text.contains(
            "mpc_gateway_http_requests_total{method=\"POST\",route=\"/api/action-codes/retrieve\",status=\"422\"} 2"
        ));
        assert!(text.contains(
            "mpc_gateway_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"} 1"
        ));
        assert!(
            !text.contains("status=\"200\""),
            "only answered statuses are exported"
        );
    }
}
