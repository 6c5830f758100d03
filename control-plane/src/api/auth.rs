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
use crate::orgs::{self, Role};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
        .route("/auth/me", get(me))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}", axum::routing::delete(revoke_token))
}

/// The header that picks the organisation a request acts in (its id or its name); without it,
/// a session acts in the user's oldest organisation and an API token in its own.
pub const ORG_HEADER: &str = "x-windflow-org";

/// What a route asks of its caller, decided from the method and path alone (see [`access`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The scope an API token needs; `None` where only a signed-in session will do.
    pub scope: Option<Scope>,
    /// The role needed in the organisation the request acts in; `None` for routes that are not
    /// about one organisation's objects (they check what they need themselves).
    pub role: Option<Role>,
}

/// The access policy of every route, in one place. Reads need `read` and `viewer`; deploying,
/// rolling back, removing deployments and testing targets need `deploy` and `operator`; every
/// other change needs `admin`. Tokens never make tokens, sign out or change passwords.
pub fn access(method: &Method, path: &str) -> Access {
    let path = path.strip_prefix("/api/v1").unwrap_or(path);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let read = matches!(*method, Method::GET | Method::HEAD);
    let session_only = Access { scope: None, role: None };
    let scope = if read { Scope::Read } else { Scope::Admin };
    match (method, segments.as_slice()) {
        (_, ["tokens", ..]) | (_, ["auth", "logout"]) | (_, ["users", "me", ..]) => session_only,
        (_, ["auth", ..] | ["orgs", ..] | ["users", ..] | ["events", ..] | ["audit", ..]) => {
            Access { scope: Some(scope), role: None }
        }
        // Checking a Compose file saves nothing.
        (&Method::POST, ["stacks", "validate"]) => Access { scope: Some(Scope::Read), role: Some(Role::Viewer) },
        (_, ["stacks", _, "deploy", _])
        | (_, ["deployments", _, "rollback"])
        | (&Method::DELETE, ["deployments", _])
        | (_, ["targets", _, "test" | "facts"])
        | (_, ["targets", "facts"]) => Access { scope: Some(Scope::Deploy), role: Some(Role::Operator) },
        _ => Access { scope: Some(scope), role: Some(if read { Role::Viewer } else { Role::Admin }) },
    }
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

fn unauthenticated(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
}

/// Where the extractor leaves the organisation a request acted in, for the audit middleware.
#[derive(Debug, Clone, Default)]
pub struct ActingOrg(pub std::sync::Arc<std::sync::Mutex<Option<Uuid>>>);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let bearer = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthenticated("an Authorization: Bearer token is required"))?
            .to_owned();
        let wanted_org = parts.headers.get(ORG_HEADER).map(|v| v.to_str().unwrap_or_default().trim().to_owned());
        let access = access(&parts.method, parts.uri.path());
        let state = state.clone();
        // argon2-free, but every check reads the store: keep it off the async workers.
        let caller = tokio::task::spawn_blocking(move || identify(&state, &bearer, wanted_org.as_deref(), access))
            .await
            .map_err(|_| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "authentication task failed")
            })??;
        if let Some(slot) = parts.extensions.get::<ActingOrg>().filter(|_| access.role.is_some()) {
            *slot.0.lock().unwrap_or_else(|e| e.into_inner()) = (!caller.org_id.is_nil()).then_some(caller.org_id);
        }
        Ok(caller)
    }
}

/// Checks the credentials, picks the organisation and checks the route's access policy.
fn identify(state: &AppState, bearer: &str, wanted_org: Option<&str>, access: Access) -> Result<Caller, ApiError> {
    let store = state.store.as_ref();
    let (mut caller, token_org) = if api_tokens::is_api_token(bearer) {
        let record = api_tokens::authenticate(store, bearer).map_err(|error| match error {
            api_tokens::TokenError::Invalid => unauthenticated(&error.to_string()),
            api_tokens::TokenError::Store(e) => e.into(),
        })?;
        let user = state.auth.user(&record.username)?.filter(|u| u.id == record.user_id);
        let user = user.ok_or_else(|| unauthenticated("the token's user no longer exists"))?;
        if user.disabled {
            return Err(AuthError::Disabled.into());
        }
        let Some(needed) = access.scope else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "session_required",
                "this needs a signed-in session, not an API token",
            ));
        };
        if record.scope < needed {
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
        let caller = Caller {
            user_id: user.id,
            username: user.username,
            session_id: Uuid::nil(),
            token: Some((record.id, record.scope)),
            is_admin: user.is_admin,
            org_id: Uuid::nil(),
            role: None,
        };
        (caller, Some(record.org_id))
    } else {
        let identity = state.auth.authenticate(bearer)?;
        let caller = Caller {
            user_id: identity.user_id,
            username: identity.username,
            session_id: identity.session_id,
            token: None,
            is_admin: identity.is_admin,
            org_id: Uuid::nil(),
            role: None,
        };
        (caller, None)
    };

    let membership = match (wanted_org, token_org) {
        (Some(wanted), _) => {
            let member = match find_org(store, wanted)? {
                Some(org) => orgs::membership(store, org.id, caller.user_id)?,
                None => None,
            };
            // Not a member: the organisation is not found, exactly like one that does not exist.
            let member = member
                .ok_or_else(|| ApiError { field: Some(ORG_HEADER.into()), ..ApiError::not_found("organisation") })?;
            if token_org.is_some_and(|own| own != member.org_id) {
                return Err(forbidden("this API token acts in its own organisation only".into()));
            }
            Some(member)
        }
        (None, Some(own)) => orgs::membership(store, own, caller.user_id)?,
        (None, None) => orgs::memberships_of(store, caller.user_id)?.into_iter().next(),
    };
    if let Some(membership) = &membership {
        caller.org_id = membership.org_id;
        caller.role = Some(membership.role);
    }
    if let Some(needed) = access.role {
        match caller.role {
            None if token_org.is_some() => {
                return Err(forbidden("the token's user is no longer a member of its organisation".into()));
            }
            None => return Err(forbidden("you are not a member of any organisation".into())),
            Some(role) if role < needed => {
                return Err(forbidden(format!(
                    "this needs the {} role in the organisation; you are {}",
                    needed.as_str(),
                    role.as_str()
                )));
            }
            Some(_) => {}
        }
    }
    Ok(caller)
}

fn find_org(store: &dyn crate::store::Store, wanted: &str) -> Result<Option<orgs::Org>, ApiError> {
    if let Ok(id) = Uuid::try_parse(wanted) {
        return Ok(orgs::get(store, id)?);
    }
    Ok(orgs::list(store)?.into_iter().find(|o| o.name.eq_ignore_ascii_case(wanted)))
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
    // API tokens never reach here (see access): this is always a session.
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
        "org": (!caller.org_id.is_nil()).then(|| serde_json::json!({
            "id": caller.org_id,
            "role": caller.role.map(Role::as_str),
        })),
        "orgs": orgs::memberships_of(state.store.as_ref(), user.id)?
            .iter()
            .map(|m| serde_json::json!({ "id": m.org_id, "role": m.role.as_str() }))
            .collect::<Vec<_>>(),
    })))
}

fn token_json(token: &api_tokens::ApiToken) -> serde_json::Value {
    serde_json::json!({
        "id": token.id,
        "name": token.name,
        "org_id": token.org_id,
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
    if caller.role.is_none() {
        return Err(forbidden("an API token acts in an organisation, and you are not a member of any".into()));
    }
    let (record, token) = api_tokens::create(
        state.store.as_ref(),
        caller.org_id,
        caller.user_id,
        &caller.username,
        name,
        body.scope,
        body.ttl_seconds,
    )?;
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
    fn each_route_class_needs_its_scope_and_role() {
        let org = |scope, role| Access { scope: Some(scope), role: Some(role) };
        let own = |scope| Access { scope: Some(scope), role: None };
        let session = Access { scope: None, role: None };
        let cases = [
            (Method::GET, "/api/v1/stacks", org(Scope::Read, Role::Viewer)),
            (Method::GET, "/api/v1/deployments/x/logs", org(Scope::Read, Role::Viewer)),
            (Method::POST, "/api/v1/stacks/x/deploy/y", org(Scope::Deploy, Role::Operator)),
            (Method::POST, "/api/v1/deployments/x/rollback", org(Scope::Deploy, Role::Operator)),
            (Method::DELETE, "/api/v1/deployments/x", org(Scope::Deploy, Role::Operator)),
            (Method::POST, "/api/v1/targets/x/test", org(Scope::Deploy, Role::Operator)),
            (Method::POST, "/api/v1/targets/facts", org(Scope::Deploy, Role::Operator)),
            (Method::POST, "/api/v1/stacks", org(Scope::Admin, Role::Admin)),
            (Method::POST, "/api/v1/stacks/validate", org(Scope::Read, Role::Viewer)),
            (Method::DELETE, "/api/v1/stacks/x", org(Scope::Admin, Role::Admin)),
            (Method::POST, "/api/v1/targets/join-tokens", org(Scope::Admin, Role::Admin)),
            (Method::POST, "/api/v1/targets/x/revoke", org(Scope::Admin, Role::Admin)),
            (Method::GET, "/api/v1/orgs", own(Scope::Read)),
            (Method::POST, "/api/v1/orgs/x/members", own(Scope::Admin)),
            (Method::POST, "/api/v1/users", own(Scope::Admin)),
            (Method::GET, "/api/v1/events", own(Scope::Read)),
            (Method::GET, "/api/v1/auth/me", own(Scope::Read)),
            (Method::GET, "/api/v1/tokens", session),
            (Method::POST, "/api/v1/auth/logout", session),
            (Method::POST, "/api/v1/users/me/password", session),
        ];
        for (method, path, expected) in cases {
            assert_eq!(access(&method, path), expected, "{method} {path}");
        }
    }
}
