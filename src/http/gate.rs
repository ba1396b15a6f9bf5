//! The admission steps every public request passes before its handler:
//! the cross-origin check of a `POST` (403), a header-size cap (431), identity (401), the route's scope (403), then
//! the user's anti-flood limit (429); on the way out, the RateLimit fields
//! for the user's upstream quota.

use std::future::{Ready, ready};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, ResponseError, web};

use crate::auth::AuthError;
use crate::domain::identity::Identity;
use crate::http::context::Notes;
use crate::http::problem::Problem;
use crate::http::routes::retrieve::refused_at_edge;
use crate::http::routes::{
    OPENAPI_ROUTE, PAGE_ROUTE, STATIC_ROUTE, is_retrieval, required_scope, template_of,
};
use crate::http::state::AppState;
use crate::observe::record::Asker;
use crate::quota::{Decision, Tier, whole_seconds};

/// Most header bytes (names and values) a public request may carry.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// `Sec-Fetch-Site` (Fetch Metadata), sent by browsers.
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Middleware: identifies the caller and charges the anti-flood limit.
pub async fn admit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Err(actix_web::error::ErrorInternalServerError(
            "gateway state missing",
        ));
    };
    if req.method() == Method::POST
        && is_cross_origin(req.request(), state.public_origin.as_deref())
    {
        return Ok(refuse(req, &state, None, Problem::CrossOrigin));
    }
    if needs_no_identity(&req) {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        let problem = Problem::HeadersTooLarge {
            limit: MAX_HEADER_BYTES,
        };
        return Ok(refuse(req, &state, None, problem));
    }
    let peer = req.peer_addr().map(|addr| addr.ip());
    let identity = match state.authenticator.load().identify(req.headers(), peer) {
        Ok(identity) => identity,
        Err(error) => return Ok(refuse(req, &state, None, Problem::Unauthenticated(error))),
    };
    if let Some(notes) = req.extensions().get::<Notes>() {
        notes.user(identity.shared_user());
    }
    // Before anything is charged, the anti-flood limit included.
    let forbidden = required_scope(template_of(req.request()))
        .filter(|scope| !identity.allows(*scope))
        .map(|required_scope| Problem::Forbidden { required_scope });
    let mut response = if let Some(problem) = forbidden {
        refuse(req, &state, Some(identity.user()), problem)
    } else {
        let admitted = state.quotas.admit_request(identity.user(), identity.tier());
        req.extensions_mut().insert(identity.clone());
        match admitted {
            Ok(()) => next.call(req).await?.map_into_boxed_body(),
            Err(refusal) => {
                state.metrics.quota_rejected(refusal.limit);
                let problem = Problem::QuotaExceeded(refusal);
                refuse(req, &state, Some(identity.user()), problem)
            }
        }
    };

    // A store that cannot say leaves the fields out rather than guess them.
    if let Ok(status) = state
        .quotas
        .upstream_status(identity.user(), identity.tier())
        .await
    {
        let headers = response.headers_mut();
        let (policy, remaining) = ratelimit_fields(identity.tier(), &status);
        headers.insert(RATELIMIT_POLICY, policy);
        headers.insert(RATELIMIT, remaining);
    }
    Ok(response)
}

/// `GET /openapi.json`, the observer page and its static files load without identity.
fn needs_no_identity(req: &ServiceRequest) -> bool {
    let template = template_of(req.request());
    template == OPENAPI_ROUTE
        || template == STATIC_ROUTE
        || (template == PAGE_ROUTE && req.method() != Method::POST)
}

/// Whether a browser sent this request from a page of another site: its
/// `Sec-Fetch-Site` is neither `same-origin` nor `none`, or its `Origin`
/// differs from `public_origin` (else from the request's own scheme and
/// `Host`). A request with neither header (a script) is not.
pub fn is_cross_origin(req: &HttpRequest, public_origin: Option<&str>) -> bool {
    let headers = req.headers();
    if let Some(site) = headers.get(SEC_FETCH_SITE)
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let Ok(origin) = origin.to_str() else {
        return true;
    };
    match public_origin {
        Some(expected) => !origin.eq_ignore_ascii_case(expected),
        None => {
            let scheme = if req.app_config().secure() {
                "https"
            } else {
                "http"
            };
            let host = headers
                .get(header::HOST)
                .and_then(|host| host.to_str().ok())
                .unwrap_or_else(|| req.app_config().host());
            origin
                .strip_prefix(scheme)
                .and_then(|rest| rest.strip_prefix("://"))
                .is_none_or(|rest| !rest.eq_ignore_ascii_case(host))
        }
    }
}

/// Answers `problem`; on a retrieval route the refusal is also a retrieval decision.
fn refuse(
    req: ServiceRequest,
    state: &AppState,
    user: Option<&str>,
    problem: Problem,
) -> ServiceResponse<BoxBody> {
    if is_retrieval(template_of(req.request()))
        && let Some(notes) = req.extensions().get::<Notes>()
    {
        let asker = Asker {
            request_id: notes.request_id(),
            user,
        };
        refused_at_edge(state, notes, asker, &problem);
    }
    let response = if template_of(req.request()) == PAGE_ROUTE {
        // The form's answer without JavaScript is a page, refusals too.
        crate::http::routes::page::refused(&problem)
    } else {
        problem.error_response()
    };
    req.into_response(response)
}

/// The two RateLimit fields, in structured-field form, for the upstream quota.
pub fn ratelimit_fields(tier: &Tier, status: &Decision) -> (HeaderValue, HeaderValue) {
    let reset = if status.reset_after.is_zero() {
        0
    } else {
        whole_seconds(status.reset_after)
    };
    let remaining = format!("\"upstream\";r={};t={reset}", status.remaining);
    (
        tier.upstream_policy.clone(),
        HeaderValue::try_from(remaining).expect("digits and quotes are a valid header"),
    )
}

impl FromRequest for Identity {
    type Error = Problem;
    type Future = Ready<Result<Self, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Identity>()
                .cloned()
                .ok_or(Problem::Unauthenticated(AuthError::NoCredentials)),
        )
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn cross(headers: &[(&str, &str)], public_origin: Option<&str>) -> bool {
        let mut request = TestRequest::post().insert_header((header::HOST, "gw.example:8080"));
        for (name, value) in headers {
            request = request.insert_header((*name, *value));
        }
        is_cross_origin(&request.to_http_request(), public_origin)
    }

    #[test]
    fn only_requests_a_browser_says_come_from_elsewhere_are_cross_origin() {
        assert!(!cross(&[], None), "a script sends neither header");
        assert!(!cross(&[("sec-fetch-site", "same-origin")], None));
        assert!(!cross(&[("sec-fetch-site", "none")], None));
        assert!(cross(&[("sec-fetch-site", "same-site")], None));
        assert!(cross(&[("sec-fetch-site", "cross-site")], None));
        assert!(!cross(&[("origin", "http://gw.example:8080")], None));
        assert!(!cross(&[("origin", "http://GW.example:8080")], None));
        assert!(cross(&[("origin", "https://gw.example:8080")], None));
        assert!(cross(&[("origin", "http://gw.example")], None));
        assert!(cross(&[("origin", "null")], None));
        assert!(cross(&[("origin", "http://gw.example:8080.evil")], None));
        let public = Some("https://gateway.obs.example");
        assert!(!cross(&[("origin", "https://gateway.obs.example")], public));
        assert!(cross(&[("origin", "http://gw.example:8080")], public));
    }
}
