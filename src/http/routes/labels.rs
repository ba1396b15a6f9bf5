//! `GET /api/action-codes/labels/{label}`: check a label without contacting the MPC.

use actix_web::{HttpResponse, web};
use serde::Serialize;

use crate::domain::identity::Identity;
use crate::domain::label::{Label, LabelKind};
use crate::http::context::Notes;
use crate::http::problem::{Problem, ProblemDocument};
use crate::http::routes::Timestamp;
use crate::http::state::AppState;
use utoipa::ToSchema;

/// A valid label and what the gateway remembers of it.
#[derive(Serialize, ToSchema)]
pub struct LabelStatus<'a> {
    /// The label, trimmed.
    #[schema(value_type = Label)]
    label: &'a Label,
    /// Its format.
    label_kind: LabelKind,
    /// Always `true` (invalid labels get a 422 problem).
    valid: bool,
    /// When the remembered MPC call was made; `null` when nothing is remembered.
    #[schema(value_type = Option<String>)]
    last_requested_at: Option<Timestamp>,
    /// When the label will be forwarded again; `null` when nothing is remembered.
    #[schema(value_type = Option<String>)]
    resend_available_at: Option<Timestamp>,
}

/// Validates the label and reports what the gateway remembers of it.
#[utoipa::path(
    get,
    path = "/api/action-codes/labels/{label}",
    tag = "action codes",
    params(("label" = String, Path, description = "The label to check")),
    responses(
        (status = 200, description = "The label is valid; nothing was sent", body = LabelStatus),
        (status = 401, description = "`unauthenticated`", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "`invalid-label`: the label breaks the MPC's rules", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 429, description = "`quota-exceeded`", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 431, description = "`headers-too-large`", body = ProblemDocument, content_type = "application/problem+json"),
    ),
    security((), ("bearer" = []), ("api_key" = []))
)]
pub async fn status(
    _identity: Identity,
    notes: Notes,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let raw = path.into_inner();
    let label = Label::parse(&raw).map_err(|error| Problem::InvalidLabel { label: raw, error })?;
    notes.label_kind(label.kind());
    let remembered = state.dedup.get(&label).await?;
    let response = HttpResponse::Ok().json(LabelStatus {
        label: &label,
        label_kind: label.kind(),
        valid: true,
        last_requested_at: remembered
            .as_ref()
            .map(|r| Timestamp::new(r.requested_at())),
        resend_available_at: remembered.as_ref().map(|r| Timestamp::new(r.expires_at())),
    });
    Ok(response)
}
