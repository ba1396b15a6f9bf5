//! HTTP endpoints, one file per group, registered once per listener.

pub mod health;
pub mod labels;
pub mod retrieve;

use actix_web::{HttpRequest, HttpResponse, web};

use crate::problem::Problem;

/// Routes of the public listener.
pub fn public(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/api/action-codes/retrieve")
            .route(web::post().to(retrieve::retrieve))
            .default_service(web::to(|| method_not_allowed("POST"))),
    )
    .service(
        web::resource("/api/action-codes/labels/{label}")
            .route(web::get().to(labels::status))
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
    );
}

/// Answer for paths no route matches.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, Problem> {
    Err(Problem::NotFound(req.path().to_owned()))
}

async fn method_not_allowed(allow: &'static str) -> Result<HttpResponse, Problem> {
    Err(Problem::MethodNotAllowed { allow })
}
