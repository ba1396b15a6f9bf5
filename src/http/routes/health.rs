//! Liveness and readiness for orchestrators and load balancers.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::dedup::Dedup;
use crate::http::state::{Readiness, StoreHealth};
use crate::observe::metrics::Metrics;
use crate::pause::Pause;
use crate::upstream::breaker::Breaker;

/// `GET /healthz`: the process is alive and serving.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 while serving (an open breaker or the MPC's pause
/// included: remembered answers still work), 503 once shutdown has begun;
/// reports the breaker, and until when the MPC asked the gateway to wait
/// (`paused_until`, `null` when it did not). The body names the shared
/// store's state too: a store that does not answer is no reason to take the
/// replica out (what it remembers still answers), but the operator should
/// see it.
pub async fn readyz(
    readiness: web::Data<Readiness>,
    breaker: web::Data<Breaker>,
    pause: web::Data<Pause>,
    store: web::Data<StoreHealth>,
) -> HttpResponse {
    let breaker = breaker.state().as_str();
    let paused_until = pause
        .current()
        .map(|paused| humantime::format_rfc3339_seconds(paused.shown_until()).to_string());
    let store = store.as_str();
    let (mut answer, status) = if readiness.is_shutting_down() {
        (HttpResponse::ServiceUnavailable(), "shutting_down")
    } else {
        (HttpResponse::Ok(), "ready")
    };
    answer.json(json!({
        "status": status,
        "breaker": breaker,
        "paused_until": paused_until,
        "store": store,
    }))
}

/// `GET /metrics`: every metric in the Prometheus text format.
pub async fn metrics(
    metrics: web::Data<Metrics>,
    dedup: web::Data<Dedup>,
    breaker: web::Data<Breaker>,
    pause: web::Data<Pause>,
) -> HttpResponse {
    metrics.set_dedup_entries(dedup.len());
    metrics.set_circuit_breaker_state(breaker.state().gauge());
    metrics.set_upstream_paused(pause.current().is_some());
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render())
}
