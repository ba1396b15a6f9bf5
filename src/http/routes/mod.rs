//! HTTP endpoints, one file per group, registered once per listener.

pub mod admin;
pub mod batch;
pub mod health;
pub mod labels;
pub mod media_type;
pub mod page;
pub mod retrieve;

use std::fmt;
use std::io::Write;
use std::time::SystemTime;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::from_fn;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use crate::domain::identity::Scope;
use crate::domain::label::Label;
use crate::http::problem::Problem;

/// The media type of answers.
pub const JSON: &str = "application/json";

/// Header telling caches and people where an answer came from (RFC 9211).
pub const CACHE_STATUS: &str = "cache-status";

/// The OpenAPI document, the one public route that needs no identity.
pub const OPENAPI_ROUTE: &str = "/openapi.json";

/// The retrieve endpoint, the MPC's own path.
pub const RETRIEVE_ROUTE: &str = "/api/action-codes/retrieve";

/// What the gateway knows of a label.
pub const LABEL_ROUTE: &str = "/api/action-codes/labels/{label}";

/// What the gateway knows of many labels.
pub const BATCH_STATUS_ROUTE: &str = "/api/action-codes/batch/status";

/// The retrieve request for many labels.
pub const BATCH_RETRIEVE_ROUTE: &str = "/api/action-codes/batch/retrieve";

/// The observer page (`GET`), and its form's answer without JavaScript (`POST`).
pub const PAGE_ROUTE: &str = "/";

/// The observer page's script and style sheet.
pub const STATIC_ROUTE: &str = "/static/{file}";

/// Liveness probe (admin listener).
pub const HEALTHZ_ROUTE: &str = "/healthz";

/// Readiness probe (admin listener).
pub const READYZ_ROUTE: &str = "/readyz";

/// Prometheus metrics (admin listener).
pub const METRICS_ROUTE: &str = "/metrics";

/// A remembered outcome, shown or forgotten (admin listener).
pub const ADMIN_LABEL_ROUTE: &str = "/admin/labels/{label}";

/// Every route template: the `route` label of the HTTP metrics, and each
/// resource's name, so a request's template is found without allocating.
pub const TEMPLATES: [&str; 11] = [
    RETRIEVE_ROUTE,
    PAGE_ROUTE,
    STATIC_ROUTE,
    LABEL_ROUTE,
    BATCH_STATUS_ROUTE,
    BATCH_RETRIEVE_ROUTE,
    OPENAPI_ROUTE,
    HEALTHZ_ROUTE,
    READYZ_ROUTE,
    METRICS_ROUTE,
    ADMIN_LABEL_ROUTE,
];

/// The `route` label of requests no route matches.
pub const UNMATCHED: &str = "unmatched";

/// Routes of the public listener.
pub fn public(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource(RETRIEVE_ROUTE, RETRIEVE_ROUTE)
            .route(web::post().to(retrieve::retrieve))
            .default_service(web::to(|| method_not_allowed("POST"))),
    )
    .service(
        resource(LABEL_ROUTE, LABEL_ROUTE)
            .route(web::get().to(labels::status))
            .default_service(web::to(|| method_not_allowed("GET"))),
    )
    .service(
        resource(BATCH_STATUS_ROUTE, BATCH_STATUS_ROUTE)
            .route(web::post().to(batch::status))
            .default_service(web::to(|| method_not_allowed("POST"))),
    )
    .service(
        resource(BATCH_RETRIEVE_ROUTE, BATCH_RETRIEVE_ROUTE)
            .route(web::post().to(batch::retrieve))
            .default_service(web::to(|| method_not_allowed("POST"))),
    )
    .service(
        resource(PAGE_ROUTE, PAGE_ROUTE)
            .route(web::get().to(page::show))
            .route(web::post().to(page::submit))
            .default_service(web::to(|| method_not_allowed("GET, POST"))),
    )
    .service(
        resource(STATIC_ROUTE, STATIC_ROUTE)
            .route(web::get().to(page::asset))
            .default_service(web::to(|| method_not_allowed("GET"))),
    )
    .service(
        resource(OPENAPI_ROUTE, OPENAPI_ROUTE)
            .route(web::get().to(crate::http::openapi::document))
            .default_service(web::to(|| method_not_allowed("GET"))),
    );
}

/// Routes of the admin listener.
pub fn admin(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource(HEALTHZ_ROUTE, HEALTHZ_ROUTE)
            .route(web::get().to(health::healthz))
            .default_service(web::to(|| method_not_allowed("GET"))),
    )
    .service(
        resource(READYZ_ROUTE, READYZ_ROUTE)
            .route(web::get().to(health::readyz))
            .default_service(web::to(|| method_not_allowed("GET"))),
    )
    .service(
        resource(METRICS_ROUTE, METRICS_ROUTE)
            .route(web::get().to(health::metrics))
            .default_service(web::to(|| method_not_allowed("GET"))),
    )
    .service(
        web::scope("/admin")
            .wrap(from_fn(admin::check_access))
            .service(
                resource("/labels/{label}", ADMIN_LABEL_ROUTE)
                    .route(web::get().to(admin::show))
                    .route(web::delete().to(admin::forget))
                    .default_service(web::to(|| method_not_allowed("GET, DELETE"))),
            ),
    );
}

/// A resource at `path` (relative to its scope), named by its full template.
fn resource(path: &'static str, template: &'static str) -> actix_web::Resource {
    debug_assert!(
        TEMPLATES.contains(&template),
        "{template} is not in TEMPLATES"
    );
    web::resource(path).name(template)
}

/// The scope a public route needs, if it needs one.
pub fn required_scope(template: &str) -> Option<Scope> {
    match template {
        // `GET /` needs no identity; its form's `POST` retrieves.
        RETRIEVE_ROUTE | BATCH_RETRIEVE_ROUTE | PAGE_ROUTE => Some(Scope::Retrieve),
        LABEL_ROUTE | BATCH_STATUS_ROUTE => Some(Scope::Status),
        _ => None,
    }
}

/// Whether a refusal on this route is also a retrieval decision.
pub fn is_retrieval(template: &str) -> bool {
    required_scope(template) == Some(Scope::Retrieve)
}

/// What a route answers for one label, rendered once: as the whole
/// response by a single route, as an item (status and JSON body) by a batch.
pub struct Reply {
    /// The 200 JSON body, or the problem.
    answer: Result<Vec<u8>, Problem>,
    /// The `Cache-Status` of a retrieval.
    cache_status: Option<String>,
}

impl Reply {
    /// A 200 answer with `body` as JSON.
    pub fn json(body: &impl Serialize, capacity: usize) -> Self {
        let mut bytes = Vec::with_capacity(capacity);
        let answer = match serde_json::to_writer(&mut bytes, body) {
            Ok(()) => Ok(bytes),
            // None is possible for the types answered; a plain 500 like `HttpResponse::json`.
            Err(error) => Err(Problem::Internal(error.to_string())),
        };
        Self {
            answer,
            cache_status: None,
        }
    }

    /// The answer `problem`.
    pub fn problem(problem: Problem) -> Self {
        Self {
            answer: Err(problem),
            cache_status: None,
        }
    }

    /// The same answer with a `Cache-Status` header.
    pub fn with_cache_status(self, cache_status: String) -> Self {
        Self {
            cache_status: Some(cache_status),
            ..self
        }
    }

    /// The whole response of a single route.
    pub fn into_response(self) -> HttpResponse {
        let mut response = match self.answer {
            Ok(body) => HttpResponse::Ok()
                .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(JSON)))
                .body(body),
            Err(problem) => problem.error_response(),
        };
        if let Some(value) = self
            .cache_status
            .and_then(|text| HeaderValue::try_from(text).ok())
        {
            response
                .headers_mut()
                .insert(HeaderName::from_static(CACHE_STATUS), value);
        }
        response
    }

    /// The status and JSON body of a batch item.
    pub fn into_item(self) -> (u16, Box<RawValue>) {
        let (status, bytes) = match self.answer {
            Ok(body) => (StatusCode::OK, body),
            Err(problem) => (problem.status_code(), problem.document_json()),
        };
        let body = String::from_utf8(bytes)
            .ok()
            .and_then(|text| RawValue::from_string(text).ok())
            .unwrap_or_else(|| RawValue::from_string("null".to_owned()).expect("null is JSON"));
        (status.as_u16(), body)
    }
}

/// The label as given, parsed (422 when it is not one the MPC accepts).
pub fn parse_label(raw: &str) -> Result<Label, Problem> {
    Label::parse(raw).map_err(|error| Problem::InvalidLabel {
        label: raw.to_owned(),
        error,
    })
}

/// The template of the route `req` matched, or [`UNMATCHED`].
pub fn template_of(req: &actix_web::HttpRequest) -> &'static str {
    let name = req.match_name();
    TEMPLATES
        .iter()
        .find(|template| Some(**template) == name)
        .unwrap_or(&UNMATCHED)
}

/// An RFC 3339 UTC time with whole seconds, e.g. `2026-11-26T04:00:00Z`,
/// formatted once, without allocating.
#[derive(Clone, Copy)]
pub struct Timestamp {
    text: [u8; Self::CAPACITY],
    len: usize,
}

impl Timestamp {
    /// Room for any year up to 9999 (20 bytes) and beyond.
    const CAPACITY: usize = 32;

    /// `at`, formatted.
    pub fn new(at: SystemTime) -> Self {
        let mut text = [0; Self::CAPACITY];
        let mut rest = &mut text[..];
        // `SystemTime` cannot reach a year whose text overflows 32 bytes.
        let _ = write!(rest, "{}", humantime::format_rfc3339_seconds(at));
        let len = Self::CAPACITY - rest.len();
        Self { text, len }
    }

    /// The text, e.g. `2026-11-26T04:00:00Z`.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text[..self.len]).unwrap_or_default()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Answer for paths no route matches.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, Problem> {
    Err(Problem::NotFound(req.path().to_owned()))
}

async fn method_not_allowed(allow: &'static str) -> Result<HttpResponse, Problem> {
    Err(Problem::MethodNotAllowed { allow })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_in_whole_seconds() {
        let at = UNIX_EPOCH + Duration::from_millis(1_795_665_600_999);
        let stamp = Timestamp::new(at);
        assert_eq!(stamp.as_str(), "2026-11-26T04:00:00Z");
        assert_eq!(stamp.to_string(), "2026-11-26T04:00:00Z");
        assert_eq!(
            serde_json::to_string(&stamp).unwrap(),
            "\"2026-11-26T04:00:00Z\""
        );
        assert_eq!(Timestamp::new(UNIX_EPOCH).as_str(), "1970-01-01T00:00:00Z");
    }
}
