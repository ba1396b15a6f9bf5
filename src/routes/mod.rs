//! HTTP endpoints, one file per group, registered once per listener.

pub mod admin;
pub mod health;
pub mod labels;
pub mod retrieve;

use std::time::SystemTime;

use actix_web::middleware::from_fn;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::problem::Problem;

/// The OpenAPI document, the one public route that needs no identity.
pub const OPENAPI_ROUTE: &str = "/openapi.json";

/// The retrieve endpoint, the MPC's own path.
pub const RETRIEVE_ROUTE: &str = "/api/action-codes/retrieve";

/// Routes of the public listener.
pub fn public(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource(RETRIEVE_ROUTE)
            .route(web::post().to(retrieve::retrieve))
            .default_service(web::to(|| method_not_allowed("POST"))),
    )
    .service(
        web::resource("/api/action-codes/labels/{label}")
            .route(web::get().to(labels::status))
            .default_service(web::to(|| method_not_allowed("GET"))),
    )
    .service(
        web::resource(OPENAPI_ROUTE)
            .route(web::get().to(crate::openapi::document))
            .default_service(web::to(|| method_not_allowed("GET"))),
    );
}

/// Routes of the admin listener.
pub fn admin(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/healthz")
            .route(web::get().to(health::healthz))
            .default_service(web::to(|| method_not_allowed("GET"))),
    )
    .service(
        web::resource("/readyz")
            .route(web::get().to(health::readyz))
            .default_service(web::to(|| method_not_allowed("GET"))),
    )
    .service(
        web::resource("/metrics")
            .route(web::get().to(health::metrics))
            .default_service(web::to(|| method_not_allowed("GET"))),
    )
    .service(
        web::scope("/admin")
            .wrap(from_fn(admin::require_token))
            .service(
                web::resource("/labels/{label}")
                    .route(web::get().to(admin::show))
                    .route(web::delete().to(admin::forget))
                    .default_service(web::to(|| method_not_allowed("GET, DELETE"))),
            ),
    );
}

/// A point in time as RFC 3339 UTC with whole seconds, e.g. `2026-11-26T04:00:00Z`.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Answer for paths no route matches.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, Problem> {
    Err(Problem::NotFound(req.path().to_owned()))
}

async fn method_not_allowed(allow: &'static str) -> Result<HttpResponse, Problem> {
    Err(Problem::MethodNotAllowed { allow })
}
