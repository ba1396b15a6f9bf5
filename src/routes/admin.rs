//! `/admin/labels/{label}`: what is remembered of a label and who asked; forget it.

use std::sync::Arc;

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, ResponseError, web};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::KeyDigest;
use crate::dedup::{Dedup, Outcome, Remembered};
use crate::identity::bearer_token;
use crate::label::{Label, LabelKind};
use crate::problem::Problem;
use crate::routes::Timestamp;

/// State of the admin listener.
pub struct AdminState {
    /// The remembered outcomes.
    pub dedup: Arc<Dedup>,
    /// Digest of the token `/admin/` requires, if any.
    pub token: Option<KeyDigest>,
}

/// Middleware: with `admin.token_sha256` set, `/admin/` needs the token.
pub async fn require_token(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let expected = req
        .app_data::<web::Data<AdminState>>()
        .and_then(|state| state.token);
    if let Some(expected) = expected {
        let presented = bearer_token(req.headers()).map(|token| Sha256::digest(token.as_bytes()));
        let valid = presented
            .is_some_and(|digest| bool::from(digest.as_slice().ct_eq(expected.as_bytes())));
        if !valid {
            return Ok(req.into_response(Problem::AdminUnauthorized.error_response()));
        }
    }
    next.call(req).await
}

#[derive(Serialize)]
struct RememberedLabel<'a> {
    label: &'a Label,
    label_kind: LabelKind,
    #[serde(flatten)]
    outcome: &'a Outcome,
    requested_at: Timestamp,
    expires_at: Timestamp,
    remaining_seconds: u64,
    user: &'a str,
}

fn render(label: &Label, remembered: &Remembered) -> HttpResponse {
    HttpResponse::Ok().json(RememberedLabel {
        label,
        label_kind: label.kind(),
        outcome: remembered.outcome(),
        requested_at: Timestamp::new(remembered.requested_at()),
        expires_at: Timestamp::new(remembered.expires_at()),
        remaining_seconds: remembered.remaining().as_secs(),
        user: remembered.user(),
    })
}

fn parse(raw: String) -> Result<Label, Problem> {
    Label::parse(&raw).map_err(|error| Problem::InvalidLabel { label: raw, error })
}

/// `GET /admin/labels/{label}`: the remembered outcome and who triggered it.
pub async fn show(
    path: web::Path<String>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, Problem> {
    let label = parse(path.into_inner())?;
    let remembered = state
        .dedup
        .get(&label)
        .ok_or_else(|| Problem::NotRemembered(label.to_string()))?;
    Ok(render(&label, &remembered))
}

/// `DELETE /admin/labels/{label}`: forget, so the next request is forwarded.
pub async fn forget(
    path: web::Path<String>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, Problem> {
    let label = parse(path.into_inner())?;
    let forgotten = state
        .dedup
        .forget(&label)
        .ok_or_else(|| Problem::NotRemembered(label.to_string()))?;
    tracing::info!(label = %label, outcome = forgotten.outcome().as_str(), "remembered outcome forgotten by an operator");
    Ok(render(&label, &forgotten))
}
