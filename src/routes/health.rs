//! Liveness and readiness for orchestrators and load balancers.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::dedup::Dedup;
use crate::metrics::Metrics;
use crate::startup::Readiness;

/// `GET /healthz`: the process is alive and serving.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 while serving, 503 once shutdown has begun.
pub async fn readyz(readiness: web::Data<Readiness>) -> HttpResponse {
    if readiness.is_shutting_down() {
        HttpResponse::ServiceUnavailable().json(json!({"status": "shutting_down"}))
    } else {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    }
}

/// `GET /metrics`: every metric in the Prometheus text format.
pub async fn metrics(metrics: web::Data<Metrics>, dedup: web::Data<Dedup>) -> HttpResponse {
    metrics.set_dedup_entries(dedup.len());
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render())
}
