//! `GET /v1/openapi.json`: the OpenAPI 3 document, generated from the handlers and types.

use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::handlers;
use crate::model::{
    CreateSession, Created, ErrorBody, ErrorDetail, HeartbeatAck, PatchSession, SessionList,
    SessionRow,
};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "master-server", description = "Game session listing with heartbeats."),
    paths(handlers::create, handlers::list, handlers::get_one, handlers::patch,
          handlers::heartbeat, handlers::delete),
    components(schemas(CreateSession, Created, PatchSession, SessionRow, SessionList,
                       HeartbeatAck, ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Serves the document.
pub async fn serve() -> Response {
    Json(ApiDoc::openapi()).into_response()
}
