//! Route handlers: each checks its input, reads from the index, writes through the writer.
//!
//! Writes authenticate with the row's owner token: id first (400 if malformed), then the
//! token's presence (401), the row (404 if unknown or expired), then the token itself
//! (401). With a shared PostgreSQL, a row another instance created a moment ago may not be
//! in this instance's index yet, so a miss falls back to one database read.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::extract::{Bearer, ClientIp, IdParam, JsonBody};
use super::{list_query, AppState};
use crate::error::ApiError;
use crate::model::{
    CreateSession, Created, HeartbeatAck, JsonCache, PatchSession, Session, SessionBody, SessionId,
    SessionRow,
};
use crate::time::Millis;
use crate::token::Token;
use crate::validate;
use crate::writer::WriteError;

impl From<WriteError> for ApiError {
    fn from(err: WriteError) -> Self {
        tracing::warn!(%err, "write not done");
        ApiError::Unavailable
    }
}

/// `POST /v1/sessions`: posts a session and returns its id and owner token.
#[utoipa::path(post, path = "/v1/sessions", request_body = CreateSession,
    responses((status = 201, description = "Listed; the owner token is shown only here.",
               body = Created)))]
pub async fn create(
    State(state): State<AppState>,
    ClientIp(addr): ClientIp,
    JsonBody(req): JsonBody<CreateSession>,
) -> Result<Response, ApiError> {
    let config = &state.config;
    validate::game(&req.game)?;
    validate::name(&req.name)?;
    validate::counts(req.max_players, req.players)?;
    let timeout_secs = req.timeout_secs.unwrap_or(config.default_timeout_secs);
    validate::timeout(
        timeout_secs,
        config.min_timeout_secs,
        config.max_timeout_secs,
    )?;
    validate::attributes(&req.attributes)?;
    let connect = req.connect.unwrap_or_else(validate::empty_connect);
    validate::connect(&connect)?;
    if state.index.len() >= config.max_sessions {
        return Err(ApiError::Full);
    }
    let now = Millis::now();
    let _slot = state
        .quota
        .reserve(&state.index, addr, config.max_sessions_per_ip, now)?;
    let token = Token::generate();
    let body = SessionBody {
        id: SessionId::random(),
        seq: 0,
        game: req.game,
        name: req.name,
        max_players: req.max_players,
        players: req.players,
        attributes: req.attributes,
        connect,
        addr,
        token_hash: token.hash(),
        timeout_secs,
        created_at: now,
        json: JsonCache::default(),
    };
    let row = state
        .writer
        .create(body, now.plus_secs(timeout_secs))
        .await?;
    tracing::info!(session = %row.body.id, game = %row.body.game, %addr, "session created");
    let created = Created {
        id: row.body.id.0,
        token: token.as_str().to_owned(),
        expires_at: row.live.expires_at.rfc3339().to_string(),
        addr: addr.to_string(),
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `GET /v1/sessions`: one page of a game's live sessions.
#[utoipa::path(get, path = "/v1/sessions",
    responses((status = 200, description = "One page, in creation order.",
               body = crate::model::SessionList)))]
pub async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let filter = list_query::parse(query.as_deref())?;
    let page = state.index.list(&filter, Millis::now());
    let mut out = Vec::with_capacity(64 + page.rows.len() * 512);
    out.extend_from_slice(b"{\"sessions\":[");
    for (i, row) in page.rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        row.write_json(&mut out);
    }
    out.extend_from_slice(b"],\"next_cursor\":");
    match page.next_after {
        Some(seq) => out.extend_from_slice(format!("\"{seq}\"}}").as_bytes()),
        None => out.extend_from_slice(b"null}"),
    }
    Ok(json_bytes(out))
}

/// `GET /v1/sessions/{id}`: one live session.
#[utoipa::path(get, path = "/v1/sessions/{id}",
    params(("id" = uuid::Uuid, Path, description = "Session id.")),
    responses((status = 200, description = "The live session.", body = SessionRow)))]
pub async fn get_one(
    State(state): State<AppState>,
    IdParam(id): IdParam,
) -> Result<Response, ApiError> {
    let row = live_row(&state, id).await?;
    Ok(row_json(&row))
}

/// `PATCH /v1/sessions/{id}`: partial update; also a heartbeat.
#[utoipa::path(patch, path = "/v1/sessions/{id}",
    params(("id" = uuid::Uuid, Path, description = "Session id.")),
    request_body = PatchSession, security(("bearer" = [])),
    responses((status = 200, description = "The updated session, its expiry restarted.",
               body = SessionRow)))]
pub async fn patch(
    State(state): State<AppState>,
    IdParam(id): IdParam,
    Bearer(token): Bearer,
    JsonBody(req): JsonBody<PatchSession>,
) -> Result<Response, ApiError> {
    let row = owned_row(&state, id, &token).await?;
    let old = &*row.body;
    let config = &state.config;
    let name = req.name.unwrap_or_else(|| old.name.clone());
    validate::name(&name)?;
    let max_players = req.max_players.unwrap_or(old.max_players);
    let players = req.players.unwrap_or(old.players);
    validate::counts(max_players, players)?;
    let timeout_secs = req.timeout_secs.unwrap_or(old.timeout_secs);
    validate::timeout(
        timeout_secs,
        config.min_timeout_secs,
        config.max_timeout_secs,
    )?;
    let attributes = req.attributes.unwrap_or_else(|| old.attributes.clone());
    validate::attributes(&attributes)?;
    let connect = req.connect.unwrap_or_else(|| old.connect.clone());
    validate::connect(&connect)?;
    let body = Arc::new(SessionBody {
        name,
        max_players,
        players,
        attributes,
        connect,
        timeout_secs,
        ..old.clone()
    });
    let updated = state
        .writer
        .update(body, Millis::now().plus_secs(timeout_secs))
        .await?;
    let updated = updated.ok_or(ApiError::NotFound("unknown or expired session"))?;
    if let Some(buffer) = &state.heartbeats {
        buffer.forget(id);
    }
    Ok(row_json(&updated))
}

/// `POST /v1/sessions/{id}/heartbeat`: the row lives `timeout_secs` from now (written
/// behind, see [`crate::heartbeats`]).
#[utoipa::path(post, path = "/v1/sessions/{id}/heartbeat",
    params(("id" = uuid::Uuid, Path, description = "Session id.")),
    security(("bearer" = [])),
    responses((status = 200, description = "The new expiry.", body = HeartbeatAck)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    IdParam(id): IdParam,
    Bearer(token): Bearer,
) -> Result<Response, ApiError> {
    let row = owned_row(&state, id, &token).await?;
    let expires = Millis::now().plus_secs(row.body.timeout_secs);
    let buffered = state.heartbeats.as_ref().is_some_and(|buffer| {
        state.index.extend(id, expires) && buffer.put(id, row.body.seq, expires)
    });
    let expires = if buffered {
        expires
    } else {
        let live = state.writer.heartbeat(id, row.body.seq, expires).await?;
        live.ok_or(ApiError::NotFound("unknown or expired session"))?
            .expires_at
    };
    Ok(json(&HeartbeatAck {
        expires_at: expires.rfc3339().to_string(),
    }))
}

/// `DELETE /v1/sessions/{id}`: delists the session.
#[utoipa::path(delete, path = "/v1/sessions/{id}",
    params(("id" = uuid::Uuid, Path, description = "Session id.")),
    security(("bearer" = [])),
    responses((status = 204, description = "Delisted.")))]
pub async fn delete(
    State(state): State<AppState>,
    IdParam(id): IdParam,
    Bearer(token): Bearer,
) -> Result<Response, ApiError> {
    owned_row(&state, id, &token).await?;
    let deleted = state.writer.delete(id).await?;
    if let Some(buffer) = &state.heartbeats {
        buffer.forget(id);
    }
    if !deleted {
        return Err(ApiError::NotFound("unknown or expired session"));
    }
    tracing::info!(session = %id, "session deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /healthz`: 200 while the database writer runs.
pub async fn healthz(State(state): State<AppState>) -> Response {
    if state.writer.is_running() {
        json(&serde_json::json!({"status": "ok"}))
    } else {
        ApiError::Unavailable.into_response()
    }
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(state): State<AppState>) -> Response {
    metrics::gauge!("master_sessions_live").set(state.index.live_count(Millis::now()) as f64);
    server_ops::metrics::prometheus_response(state.metrics.render())
}

/// The live row, from the index or (shared database) from one database read.
async fn live_row(state: &AppState, id: SessionId) -> Result<Session, ApiError> {
    let now = Millis::now();
    if let Some(row) = state.index.get_live(id, now) {
        return Ok(row);
    }
    if state.store.is_shared() {
        let loaded = state.store.load_one(id, now).await.map_err(|err| {
            tracing::error!(%err, session = %id, "database read failed");
            ApiError::Unavailable
        })?;
        if let Some(row) = loaded {
            state.index.upsert(row.body.clone(), row.live);
            return Ok(row);
        }
    }
    Err(ApiError::NotFound("unknown or expired session"))
}

/// The live row if `token` owns it.
async fn owned_row(state: &AppState, id: SessionId, token: &str) -> Result<Session, ApiError> {
    let row = live_row(state, id).await?;
    if !row.body.token_hash.verify(token) {
        return Err(ApiError::Unauthorized);
    }
    Ok(row)
}

fn row_json(row: &Session) -> Response {
    let mut out = Vec::with_capacity(512);
    row.write_json(&mut out);
    json_bytes(out)
}

fn json_bytes(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => json_bytes(bytes),
        Err(err) => {
            tracing::error!(%err, "response serialization failed");
            ApiError::Unavailable.into_response()
        }
    }
}
