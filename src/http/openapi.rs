//! `GET /openapi.json`: the OpenAPI 3.1 document of the public API, generated
//! from the handlers and the types they answer with.

use actix_web::HttpResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::domain::label::{AcceptedFormat, LabelKind};
use crate::domain::outcome::MpcAnswer;
use crate::http::problem::ProblemDocument;
use crate::http::routes::{batch, labels, retrieve};

/// The public API's document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "mpc-action-gateway",
        description = "Intranet gateway in front of the Minor Planet Center's Action Codes API: \
                       the MPC's own retrieve request, with label validation, identities, quotas, \
                       deduplication and RFC 9457 problems; batch routes for dashboards.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(retrieve::retrieve, labels::status, batch::status, batch::retrieve),
    components(schemas(ProblemDocument, MpcAnswer, AcceptedFormat, LabelKind)),
    modifiers(&Security),
    tags((name = "action codes", description = "Requesting and checking action codes"))
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// `GET /openapi.json`.
pub async fn document() -> HttpResponse {
    match ApiDoc::openapi().to_json() {
        Ok(json) => HttpResponse::Ok()
            .content_type("application/json")
            .body(json),
        Err(error) => {
            tracing::error!(%error, "cannot render the OpenAPI document");
            HttpResponse::InternalServerError().finish()
        }
    }
}
