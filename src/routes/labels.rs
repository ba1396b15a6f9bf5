//! `GET /api/action-codes/labels/{label}`: check a label without contacting the MPC.

use actix_web::{HttpResponse, web};
use serde::Serialize;

use crate::identity::Identity;
use crate::label::{Label, LabelKind};
use crate::problem::Problem;
use crate::routes::timestamp;
use crate::startup::AppState;

#[derive(Serialize)]
struct LabelStatus<'a> {
    label: &'a Label,
    label_kind: LabelKind,
    valid: bool,
    last_requested_at: Option<String>,
    resend_available_at: Option<String>,
}

/// Validates the label and reports what the gateway remembers of it.
pub async fn status(
    _identity: Identity,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let raw = path.into_inner();
    let label = Label::parse(&raw).map_err(|error| Problem::InvalidLabel { label: raw, error })?;
    tracing::Span::current().record("label_kind", label.kind().as_str());
    let remembered = state.dedup.get(&label);
    Ok(HttpResponse::Ok().json(LabelStatus {
        label: &label,
        label_kind: label.kind(),
        valid: true,
        last_requested_at: remembered.as_ref().map(|r| timestamp(r.requested_at())),
        resend_available_at: remembered.as_ref().map(|r| timestamp(r.expires_at())),
    }))
}
