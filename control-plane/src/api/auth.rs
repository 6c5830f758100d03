//! `/auth/*`: login, refresh, logout, me; and the [`Caller`] extractor every other route uses.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::{ApiError, ApiJson};
use crate::auth::{AuthError, Caller, Tokens};

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
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Json<TokensResponse>, ApiError> {
    let address = remote.ip().to_string();
    // Checked before the password is: a locked account or address costs no hashing.
    if let Err(wait) = state.login_guard.check(&body.username, &address, Instant::now()) {
        return Err(ApiError {
            retry_after_s: Some(wait.as_secs().max(1)),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_attempts",
                "too many failed logins; try again later",
            )
        });
    }
    let auth = state.auth.clone();
    let (username, password) = (body.username.clone(), body.password);
    // argon2 is deliberately slow: keep it off the async workers.
    let outcome = tokio::task::spawn_blocking(move || auth.login(&username, &password))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "login task failed"))?;
    match outcome {
        Ok(tokens) => {
            state.login_guard.succeeded(&body.username);
            Ok(Json(tokens.into()))
        }
        Err(error) => {
            if matches!(error, AuthError::BadCredentials) {
                state.login_guard.failed(&body.username, &address, Instant::now());
            }
            Err(error.into())
        }
    }
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
