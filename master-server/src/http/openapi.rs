//! `GET /v1/openapi.json`: the OpenAPI 3.1 document, generated from the handlers, the wire
//! types and the same limits the handlers check.
//!
//! 1. utoipa derives the paths, the success answers and the component schemas from the
//!    handlers' annotations and the `mesh::listing::wire` types.
//! 2. [`document`] then states what the derive cannot know: the limits of
//!    [`crate::validate`] and of the server's configuration (timeout range), the list
//!    query's parameters ([`super::list_query::parameters`]), and every error answer of
//!    each operation with its codes from [`crate::error::ApiError`].
//!
//! Rules JSON Schema cannot express are stated in descriptions: `players` at most
//! `max_players`, `connect` at most 2 KiB of JSON, integers written without a fraction
//! (`4`, not `4.0`, which is refused).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{handlers, list_query, AppState};
use crate::config::Config;
use crate::model::{
    CreateSession, Created, ErrorBody, ErrorDetail, HeartbeatAck, PatchSession, SessionList,
    SessionRow,
};
use crate::validate::{
    MAX_ATTRIBUTES, MAX_ATTR_KEY_LEN, MAX_ATTR_VALUE_LEN, MAX_CONNECT_LEN, MAX_GAME_LEN,
    MAX_NAME_LEN, MAX_PLAYERS, TEXT_PATTERN,
};

/// The API description as derived (see [`document`] for the served one).
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

const INTEGERS: &str = "Integers are written without a fraction or exponent (`4`, not `4.0`, \
                        which is refused as `invalid_body`).";

/// The error answers of each operation: (path, method, statuses).
const ERRORS: [(&str, &str, &[u16]); 6] = [
    ("/v1/sessions", "post", &[400, 408, 413, 415, 429, 503]),
    ("/v1/sessions", "get", &[400, 429]),
    ("/v1/sessions/{id}", "get", &[400, 404, 429, 503]),
    (
        "/v1/sessions/{id}",
        "patch",
        &[400, 401, 404, 408, 413, 415, 429, 503],
    ),
    ("/v1/sessions/{id}", "delete", &[400, 401, 404, 429, 503]),
    (
        "/v1/sessions/{id}/heartbeat",
        "post",
        &[400, 401, 404, 429, 503],
    ),
];

/// What an error status means on an operation, with the `error.code` values it carries.
fn error_description(status: u16, path: &str, method: &str) -> String {
    let has_body = matches!(method, "post" | "patch") && !path.ends_with("/heartbeat");
    match status {
        400 if method == "get" && path == "/v1/sessions" => {
            "`invalid_query`, `invalid_cursor` or `too_many_attributes`: a parameter is \
             missing, unknown, repeated or out of range."
                .to_owned()
        }
        400 => {
            let mut codes = Vec::new();
            if path.contains("{id}") {
                codes.push("`invalid_id` (the id is not a hyphenated UUID)");
            }
            if has_body {
                codes.push(
                    "`invalid_json`, `invalid_body` (wrong shape or an unknown field), \
                     `invalid_field`, `timeout_out_of_range`, `too_many_attributes`, \
                     `invalid_attribute` or `connect_too_large` (a value out of range)",
                );
            }
            format!("{}.", codes.join("; "))
        }
        401 => "`unauthorized`: missing or wrong owner token.".to_owned(),
        404 => "`not_found`: unknown or expired session.".to_owned(),
        408 => "`body_timeout`: the body did not arrive within the body read timeout; the \
                connection is closed."
            .to_owned(),
        413 => {
            "`payload_too_large`: the body is over the size limit (64 KiB by default).".to_owned()
        }
        415 => "`unsupported_media_type`: the body is not `application/json`.".to_owned(),
        429 if path == "/v1/sessions" && method == "post" => {
            "`rate_limited` (with `Retry-After`): too many requests from this address; or \
             `too_many_sessions_for_address`: the address holds the most live sessions \
             allowed."
                .to_owned()
        }
        429 => {
            "`rate_limited` (with `Retry-After`): too many requests from this address.".to_owned()
        }
        503 if path == "/v1/sessions" && method == "post" => {
            "`full`: the server holds its most sessions; or `unavailable`: a server-side \
             failure."
                .to_owned()
        }
        _ => "`unavailable`: a server-side failure.".to_owned(),
    }
}

/// A non-empty text field of at most `max` characters (see [`TEXT_PATTERN`]).
pub fn text_schema(max: usize) -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": max, "pattern": TEXT_PATTERN})
}

/// The attribute map.
fn attributes_schema() -> Value {
    json!({
        "type": "object",
        "description": format!(
            "Filterable string attributes: at most {MAX_ATTRIBUTES}, keys 1 to \
             {MAX_ATTR_KEY_LEN} characters, values up to {MAX_ATTR_VALUE_LEN}."),
        "maxProperties": MAX_ATTRIBUTES,
        "propertyNames": {"minLength": 1, "maxLength": MAX_ATTR_KEY_LEN},
        "additionalProperties": {"type": "string", "maxLength": MAX_ATTR_VALUE_LEN},
    })
}

/// Merges `patch`'s members into the object at `pointer` (nothing if there is none).
fn merge(doc: &mut Value, pointer: &str, patch: Value) {
    if let (Some(Value::Object(target)), Value::Object(patch)) = (doc.pointer_mut(pointer), patch) {
        target.extend(patch);
    }
}

/// Replaces every `$ref` to `from` by one to `to`.
fn rename_refs(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::Object(map) => {
            if map.get("$ref").and_then(Value::as_str) == Some(from) {
                map.insert("$ref".to_owned(), Value::String(to.to_owned()));
            }
            map.values_mut().for_each(|v| rename_refs(v, from, to));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rename_refs(v, from, to)),
        _ => {}
    }
}

/// States the limits on the body schemas (`nullable`: the patch's fields may be `null`).
fn constrain_body(doc: &mut Value, schema: &str, config: &Config, nullable: bool) {
    let base = format!("/components/schemas/{schema}/properties");
    let or_null = |mut v: Value| {
        if let (true, Some(Value::String(kind))) = (nullable, v.get("type").cloned()) {
            v["type"] = json!([kind, "null"]);
        }
        v
    };
    let timeout = format!(
        "Seconds a heartbeat keeps the row alive, {} to {} on this server{}.",
        config.min_timeout_secs,
        config.max_timeout_secs,
        if nullable {
            String::new()
        } else {
            format!(" (default {})", config.default_timeout_secs)
        }
    );
    let fields = [
        ("game", text_schema(MAX_GAME_LEN)),
        ("name", text_schema(MAX_NAME_LEN)),
        ("max_players", json!({"minimum": 1, "maximum": MAX_PLAYERS})),
        (
            "players",
            json!({"minimum": 0, "maximum": MAX_PLAYERS,
            "description": "Current players, at most `max_players`."}),
        ),
        (
            "timeout_secs",
            json!({"minimum": config.min_timeout_secs,
            "maximum": config.max_timeout_secs, "description": timeout}),
        ),
        (
            "connect",
            json!({"type": ["object", "null"], "description": format!(
            "Opaque JSON object of at most {MAX_CONNECT_LEN} bytes, e.g. the host's peer id \
             and punch server. Optional.")}),
        ),
    ];
    for (field, patch) in fields {
        let pointer = format!("{base}/{field}");
        if doc.pointer(&pointer).is_some() {
            merge(doc, &pointer, or_null(patch));
        }
    }
    let attributes = json!({"$ref": "#/components/schemas/Attributes"});
    let attributes = if nullable {
        json!({"oneOf": [{"type": "null"}, attributes]})
    } else {
        attributes
    };
    if let Some(slot) = doc.pointer_mut(&format!("{base}/attributes")) {
        *slot = attributes;
    }
    // `connect` is optional (utoipa marks a field with an overridden type as required).
    if let Some(Value::Array(required)) =
        doc.pointer_mut(&format!("/components/schemas/{schema}/required"))
    {
        required.retain(|name| name != "connect");
    }
    let description = format!("/components/schemas/{schema}/description");
    if let Some(Value::String(text)) = doc.pointer_mut(&description) {
        text.push(' ');
        text.push_str(INTEGERS);
    }
}

/// The served document for a server with this configuration.
pub fn document(config: &Config) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|err| {
        tracing::error!(%err, "openapi document not serializable");
        Value::Null
    });
    rename_refs(
        &mut doc,
        "#/components/schemas/BTreeMap",
        "#/components/schemas/Attributes",
    );
    if let Some(Value::Object(schemas)) = doc.pointer_mut("/components/schemas") {
        schemas.remove("BTreeMap");
        schemas.insert("Attributes".to_owned(), attributes_schema());
    }
    constrain_body(&mut doc, "CreateSession", config, false);
    constrain_body(&mut doc, "PatchSession", config, true);
    for field in ["created_at", "expires_at"] {
        for schema in ["SessionRow", "Created", "HeartbeatAck"] {
            let pointer = format!("/components/schemas/{schema}/properties/{field}");
            merge(&mut doc, &pointer, json!({"format": "date-time"}));
        }
    }
    merge(
        &mut doc,
        "/paths/~1v1~1sessions/get",
        json!({"parameters": list_query::parameters()}),
    );
    for (path, method, statuses) in ERRORS {
        let pointer = format!("/paths/{}/{method}/responses", path.replace('/', "~1"));
        let mut answers = Map::new();
        for status in statuses {
            answers.insert(
                status.to_string(),
                json!({
                    "description": error_description(*status, path, method),
                    "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                }),
            );
        }
        merge(&mut doc, &pointer, Value::Object(answers));
    }
    doc
}

/// Serves the document.
pub async fn serve(State(state): State<AppState>) -> Response {
    Json(document(&state.config)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_the_limits_and_every_error() {
        let doc = document(&Config::default());
        let create = &doc["components"]["schemas"]["CreateSession"];
        assert_eq!(create["properties"]["game"]["maxLength"], MAX_GAME_LEN);
        assert_eq!(create["properties"]["max_players"]["minimum"], 1);
        assert_eq!(create["properties"]["timeout_secs"]["maximum"], 3600);
        assert!(!create["required"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("connect"))));
        let patch = &doc["components"]["schemas"]["PatchSession"];
        assert_eq!(
            patch["properties"]["name"]["type"],
            json!(["string", "null"])
        );
        assert!(doc["components"]["schemas"].get("BTreeMap").is_none());
        assert!(!doc.to_string().contains("BTreeMap"));
        for method in ["get", "patch", "delete"] {
            let answers = &doc["paths"]["/v1/sessions/{id}"][method]["responses"];
            assert!(answers["400"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("invalid_id")));
        }
        let params = &doc["paths"]["/v1/sessions"]["get"]["parameters"];
        assert_eq!(params[1]["style"], "form");
        assert_eq!(params[3]["schema"]["maximum"], list_query::MAX_LIMIT);
    }
}
