//! `/auth/*`: login, refresh, logout, me; and the [`Caller`] extractor every other route uses.

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::{ApiError, ApiJson};
use crate::auth::{Caller, Tokens};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
        .route("/auth/me", get(me))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "an Authorization: Bearer token is required")
            })?;
        let auth = state.auth.clone();
        let token = token.to_owned();
        Ok(tokio::task::spawn_blocking(move || auth.authenticate(&token)).await.map_err(|_| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "authentication task failed")
        })??)
    }
}

#[derive(Debug, Deserialize)]
struct LoginRequest {
    username: String,
    password: String,
}

#[derive(Debug, Serialize)]
struct TokensResponse {
    access_token: String,
    refresh_token: String,
    token_type: &'static str,
    expires_in: u64,
}

impl From<Tokens> for TokensResponse {
    fn from(t: Tokens) -> Self {
        Self {
            access_token: t.access_token,
            refresh_token: t.refresh_token,
            token_type: "Bearer",
            expires_in: t.expires_in,
        }
    }
}

async fn login(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Json<TokensResponse>, ApiError> {
    // argon2 is deliberately slow: keep it off the async workers.
    let tokens = tokio::task::spawn_blocking(move || state.auth.login(&body.username, &body.password))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "login task failed"))??;
    Ok(Json(tokens.into()))
}

#[derive(Debug, Deserialize)]
struct RefreshRequest {
    refresh_token: String,
}

async fn refresh(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<Json<TokensResponse>, ApiError> {
    Ok(Json(state.auth.refresh(&body.refresh_token)?.into()))
}

async fn logout(State(state): State<AppState>, caller: Caller) -> Result<StatusCode, ApiError> {
    state.auth.logout(caller.session_id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn me(State(state): State<AppState>, caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    let user = state.auth.user(&caller.username)?.ok_or_else(|| ApiError::not_found("user"))?;
    Ok(Json(serde_json::json!({
        "id": user.id,
        "username": user.username,
        "is_admin": user.is_admin,
        "created_at": super::rfc3339_s(user.created_at_unix_s),
    })))
}
