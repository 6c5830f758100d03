//! `/auth/*`: login, refresh, logout, me; and the [`Caller`] extractor every other route uses.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::Method;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::{ApiError, ApiJson};
use uuid::Uuid;

use crate::api_tokens::{self, Scope};
use crate::auth::{AuthError, Caller, Tokens};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
        .route("/auth/me", get(me))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}", axum::routing::delete(revoke_token))
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
            })?
            .to_owned();
        if !api_tokens::is_api_token(&token) {
            let auth = state.auth.clone();
            return Ok(tokio::task::spawn_blocking(move || auth.authenticate(&token)).await.map_err(|_| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "authentication task failed")
            })??);
        }
        let record = api_tokens::authenticate(state.store.as_ref(), &token).map_err(|error| match error {
            api_tokens::TokenError::Invalid => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", error.to_string())
            }
            api_tokens::TokenError::Store(e) => e.into(),
        })?;
        if state.auth.user(&record.username)?.is_none() {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "the token's user no longer exists",
            ));
        }
        match required_scope(&parts.method, parts.uri.path()) {
            Some(needed) if record.scope >= needed => {}
            Some(needed) => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "insufficient_scope",
                    format!(
                        "this needs a token with the {} scope; this one has {}",
                        needed.as_str(),
                        record.scope.as_str()
                    ),
                ));
            }
            None => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "session_required",
                    "this needs a signed-in session, not an API token",
                ));
            }
        }
        Ok(Caller {
            user_id: record.user_id,
            username: record.username,
            session_id: Uuid::nil(),
            token: Some((record.id, record.scope)),
        })
    }
}

/// The scope an API token needs for a request, or `None` where only a session will do (making
/// tokens, signing out). Reads need `read`; running and removing deployments and testing targets
/// need `deploy`; every other change needs `admin`.
pub fn required_scope(method: &Method, path: &str) -> Option<Scope> {
    let path = path.strip_prefix("/api/v1").unwrap_or(path);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (_, ["tokens", ..]) | (_, ["auth", "logout"]) => None,
        (&Method::GET | &Method::HEAD, _) => Some(Scope::Read),
        (_, ["stacks", _, "deploy", _])
        | (_, ["deployments", _, "rollback"])
        | (&Method::DELETE, ["deployments", _])
        | (_, ["targets", _, "test" | "facts"])
        | (_, ["targets", "facts"]) => Some(Scope::Deploy),
        _ => Some(Scope::Admin),
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
    // API tokens never reach here (see required_scope): this is always a session.
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

fn token_json(token: &api_tokens::ApiToken) -> serde_json::Value {
    serde_json::json!({
        "id": token.id,
        "name": token.name,
        "scope": token.scope.as_str(),
        "created_at": super::rfc3339_s(token.created_at_unix_s),
        "expires_at": token.expires_at_unix_s.map(super::rfc3339_s),
        "last_used_at": token.last_used_at_unix_s.map(super::rfc3339_s),
        "revoked": token.revoked,
    })
}

/// The caller's own API tokens, never their secrets.
async fn list_tokens(State(state): State<AppState>, caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    let tokens: Vec<_> = api_tokens::list_for(state.store.as_ref(), caller.user_id)?.iter().map(token_json).collect();
    Ok(Json(serde_json::json!({ "items": tokens })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    name: String,
    scope: Scope,
    ttl_seconds: Option<u64>,
}

/// Makes an API token for the caller; its secret is in this answer only.
async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.len() > 64 {
        return Err(ApiError::invalid("name", "name must be 1 to 64 characters"));
    }
    if body.ttl_seconds == Some(0) {
        return Err(ApiError::invalid(
            "ttl_seconds",
            "ttl_seconds must be positive (leave it out for a token that does not expire)",
        ));
    }
    let (record, token) =
        api_tokens::create(state.store.as_ref(), caller.user_id, &caller.username, name, body.scope, body.ttl_seconds)?;
    tracing::info!(token_id = %record.id, scope = record.scope.as_str(), by = %caller.username, "API token created");
    let mut answer = token_json(&record);
    answer["token"] = serde_json::json!(token);
    Ok((StatusCode::CREATED, Json(answer)))
}

async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = Uuid::try_parse(&id).map_err(|_| ApiError::not_found("token"))?;
    if !api_tokens::revoke(state.store.as_ref(), caller.user_id, id)? {
        return Err(ApiError::not_found("token"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_class_needs_its_scope() {
        let cases = [
            (Method::GET, "/api/v1/stacks", Some(Scope::Read)),
            (Method::GET, "/api/v1/deployments/x/logs", Some(Scope::Read)),
            (Method::POST, "/api/v1/stacks/x/deploy/y", Some(Scope::Deploy)),
            (Method::POST, "/api/v1/deployments/x/rollback", Some(Scope::Deploy)),
            (Method::DELETE, "/api/v1/deployments/x", Some(Scope::Deploy)),
            (Method::POST, "/api/v1/targets/x/test", Some(Scope::Deploy)),
            (Method::POST, "/api/v1/targets/facts", Some(Scope::Deploy)),
            (Method::POST, "/api/v1/stacks", Some(Scope::Admin)),
            (Method::DELETE, "/api/v1/stacks/x", Some(Scope::Admin)),
            (Method::POST, "/api/v1/targets/join-tokens", Some(Scope::Admin)),
            (Method::POST, "/api/v1/targets/x/revoke", Some(Scope::Admin)),
            (Method::GET, "/api/v1/tokens", None),
            (Method::POST, "/api/v1/auth/logout", None),
        ];
        for (method, path, scope) in cases {
            assert_eq!(required_scope(&method, path), scope, "{method} {path}");
        }
    }
}
