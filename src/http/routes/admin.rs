//! `/admin/labels/{label}`: what is remembered of a label and who asked; forget it.

use std::sync::Arc;

use std::time::SystemTime;

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, ResponseError, web};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::bearer_token;
use crate::config::{AdminSettings, KeyDigest};
use crate::dedup::{Dedup, Outcome, Remembered};
use crate::domain::label::{Label, LabelKind};
use crate::http::problem::Problem;
use crate::http::routes::Timestamp;

/// Who may use the `/admin/` routes, decided once from the settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminAccess {
    /// Callers presenting the token with this digest (`admin.token_sha256`).
    Token(KeyDigest),
    /// Anyone who reaches the listener: it is reachable only from this host.
    Loopback,
    /// No one: the listener faces the network and no token is set.
    Closed,
}

impl AdminAccess {
    /// A token wins; without one, only a loopback `admin.listen` opens the routes.
    pub fn from_settings(admin: &AdminSettings) -> Self {
        match admin.token_sha256.get() {
            Some(digest) => Self::Token(*digest),
            // Canonical form: `::ffff:127.0.0.1` is loopback too.
            None if admin.listen.ip().to_canonical().is_loopback() => Self::Loopback,
            None => Self::Closed,
        }
    }
}

/// State of the admin listener.
pub struct AdminState {
    /// The remembered outcomes.
    pub dedup: Arc<Dedup>,
    /// Who may use `/admin/`.
    pub access: AdminAccess,
}

/// Middleware: `/admin/` answers only as [`AdminAccess`] allows.
pub async fn check_access(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    // Without the state nothing says the routes are open: refuse.
    let access = req
        .app_data::<web::Data<AdminState>>()
        .map_or(AdminAccess::Closed, |state| state.access);
    let refusal = match access {
        AdminAccess::Loopback => None,
        AdminAccess::Closed => Some(Problem::AdminClosed),
        AdminAccess::Token(expected) => {
            let presented =
                bearer_token(req.headers()).map(|token| Sha256::digest(token.as_bytes()));
            let valid = presented
                .is_some_and(|digest| bool::from(digest.as_slice().ct_eq(expected.as_bytes())));
            (!valid).then_some(Problem::AdminUnauthorized)
        }
    };
    match refusal {
        Some(problem) => Ok(req.into_response(problem.error_response())),
        None => next.call(req).await,
    }
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

fn render(label: &Label, remembered: &Remembered, now: SystemTime) -> HttpResponse {
    HttpResponse::Ok().json(RememberedLabel {
        label,
        label_kind: label.kind(),
        outcome: remembered.outcome(),
        requested_at: Timestamp::new(remembered.requested_at()),
        expires_at: Timestamp::new(remembered.expires_at()),
        remaining_seconds: remembered.remaining(now).as_secs(),
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
        .await?
        .ok_or_else(|| Problem::NotRemembered(label.to_string()))?;
    Ok(render(&label, &remembered, state.dedup.now()))
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
        .await?
        .ok_or_else(|| Problem::NotRemembered(label.to_string()))?;
    tracing::info!(label = %label, outcome = forgotten.outcome().as_str(), "remembered outcome forgotten by an operator");
    Ok(render(&label, &forgotten, state.dedup.now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OptionalDigest;

    const DIGEST: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    fn admin(listen: &str, token_sha256: &str) -> AdminSettings {
        AdminSettings {
            listen: listen.parse().unwrap(),
            token_sha256: OptionalDigest::try_from(token_sha256.to_owned()).unwrap(),
        }
    }

    #[test]
    fn a_network_facing_listener_without_a_token_is_closed() {
        for listen in [
            "0.0.0.0:8081",
            "192.168.1.10:8081",
            "10.0.0.5:8081",
            "[::]:8081",
            "[2001:db8::1]:8081",
            "[::ffff:192.168.1.10]:8081",
        ] {
            assert_eq!(
                AdminAccess::from_settings(&admin(listen, "")),
                AdminAccess::Closed,
                "{listen}"
            );
        }
    }

    #[test]
    fn a_loopback_listener_without_a_token_is_open_to_this_host() {
        for listen in [
            "127.0.0.1:8081",
            "127.1.2.3:8081",
            "[::1]:8081",
            "[::ffff:127.0.0.1]:8081",
        ] {
            assert_eq!(
                AdminAccess::from_settings(&admin(listen, "")),
                AdminAccess::Loopback,
                "{listen}"
            );
        }
    }

    #[test]
    fn a_token_is_required_wherever_the_listener_is() {
        let expected = KeyDigest::try_from(DIGEST.to_owned()).unwrap();
        for listen in [
            "0.0.0.0:8081",
            "192.168.1.10:8081",
            "127.0.0.1:8081",
            "[::1]:8081",
        ] {
            assert_eq!(
                AdminAccess::from_settings(&admin(listen, DIGEST)),
                AdminAccess::Token(expected),
                "{listen}"
            );
        }
    }
}
