//! `GET /api/action-codes/labels/{label}`: check a label without contacting the MPC.

use actix_web::{HttpResponse, web};
use serde::Serialize;

use crate::dedup::Dedup;
use crate::domain::label::{Label, LabelKind};
use crate::http::context::Notes;
use crate::http::problem::{Problem, ProblemDocument};
use crate::http::routes::{Reply, Timestamp, parse_label};
use crate::http::state::AppState;
use utoipa::ToSchema;

/// Room for a typical answer, so it is written without growing.
const STATUS_CAPACITY: usize = 256;

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
        (status = 403, description = "`forbidden`: the API key lacks the scope `status`", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "`invalid-label`: the label breaks the MPC's rules", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 429, description = "`quota-exceeded`", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 431, description = "`headers-too-large`", body = ProblemDocument, content_type = "application/problem+json"),
    ),
    security((), ("bearer" = []), ("api_key" = []))
)]
pub async fn status(
    notes: Notes,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let reply = match parse_label(&path) {
        Ok(label) => {
            notes.label_kind(label.kind());
            known(&state.dedup, &label).await
        }
        Err(problem) => Reply::problem(problem),
    };
    reply.into_response()
}

/// What the gateway remembers of a valid label, as the single route and a
/// batch item answer it.
pub async fn known(dedup: &Dedup, label: &Label) -> Reply {
    let remembered = match dedup.get(label).await {
        Ok(remembered) => remembered,
        Err(error) => return Reply::problem(Problem::from(error)),
    };
    let status = LabelStatus {
        label,
        label_kind: label.kind(),
        valid: true,
        last_requested_at: remembered
            .as_ref()
            .map(|r| Timestamp::new(r.requested_at())),
        resend_available_at: remembered.as_ref().map(|r| Timestamp::new(r.expires_at())),
    };
    Reply::json(&status, STATUS_CAPACITY)
}
