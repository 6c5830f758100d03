//! `/auth/*`: login, refresh, logout, me; and the [`Caller`] extractor every other route uses.

use std::net::SocketAddr;
use std::time::Instant;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::Method;
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiJson, Code};
use super::{AppState, Items};
use uuid::Uuid;

use crate::api_tokens::{self, Scope};
use crate::auth::{AuthError, Caller, Login, Tokens};
use crate::orgs::{self, Role};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(login_second_factor))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me, update_me))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
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
/// rolling out, rolling back, scaling, migrating, removing deployments and testing targets need `deploy` and `operator`; every
/// other change needs `admin`. Tokens never make tokens, sign out or change passwords.
pub fn access(method: &Method, path: &str) -> Access {
    let path = path.strip_prefix("/api/v1").unwrap_or(path);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let read = matches!(*method, Method::GET | Method::HEAD);
    let session_only = Access { scope: None, role: None };
    let scope = if read { Scope::Read } else { Scope::Admin };
    match (method, segments.as_slice()) {
        (_, ["tokens", ..]) | (_, ["auth", "logout" | "totp"]) | (_, ["auth", "totp", ..]) => session_only,
        (_, ["users", "me", ..]) => session_only,
        (_, ["auth", ..] | ["orgs", ..] | ["users", ..] | ["events", ..] | ["audit", ..]) => {
            Access { scope: Some(scope), role: None }
        }
        // Any member may review a template; deploying one makes a stack (admins).
        (&Method::POST, ["templates", _, "reviews"]) | (&Method::PUT, ["templates", _, "reviews", "mine"]) => {
            Access { scope: Some(Scope::Deploy), role: Some(Role::Viewer) }
        }
        // Checking a Compose file or a workflow, analysing a stack or measuring a deployment's
        // usage saves nothing.
        (&Method::POST, ["stacks" | "workflows", "validate"])
        | (&Method::POST, ["stacks", _, "analyze"])
        | (&Method::POST, ["deployments", _, "optimize"]) => {
            Access { scope: Some(Scope::Read), role: Some(Role::Viewer) }
        }
        // Running a workflow, cancelling a run and answering its approvals operate; drawing one
        // (which decides what runs will do) is an admin's.
        (&Method::POST, ["workflows", _, "runs"])
        | (&Method::POST, ["workflows", _, "runs", _, "cancel"])
        | (&Method::POST, ["workflows", _, "runs", _, "approvals", _]) => {
            Access { scope: Some(Scope::Deploy), role: Some(Role::Operator) }
        }
        // The MCP server: any member may connect; each tool asks what its REST route asks.
        (_, ["mcp", ..]) => Access { scope: Some(Scope::Read), role: Some(Role::Viewer) },
        // Asking the organisation's model spends its money: operators may.
        (&Method::POST, ["ai", "generate"]) | (&Method::POST, ["deployments", _, "diagnose"]) => {
            Access { scope: Some(Scope::Deploy), role: Some(Role::Operator) }
        }
        (_, ["stacks", _, "deploy", _])
        | (&Method::POST, ["stacks", _, "rollouts"])
        | (_, ["deployments", _, "rollback" | "scale"])
        | (_, ["deployments", _, "migrate", _])
        | (&Method::POST, ["deployments", _, "vms", _, _])
        | (&Method::DELETE, ["deployments", _])
        | (_, ["targets", _, "test" | "facts"])
        | (_, ["targets", "facts"]) => Access { scope: Some(Scope::Deploy), role: Some(Role::Operator) },
        _ => Access { scope: Some(scope), role: Some(if read { Role::Viewer } else { Role::Admin }) },
    }
}

fn forbidden(message: String) -> ApiError {
    ApiError::forbidden(message)
}

fn unauthenticated(message: &str) -> ApiError {
    ApiError::new(Code::Unauthenticated, message)
}

/// Runs blocking account work (argon2, store reads) off the async workers.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AuthError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(ApiError::internal)?.map_err(ApiError::from)
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
            .map_err(ApiError::internal)??;
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
            return Err(ApiError::new(Code::SessionRequired, "this needs a signed-in session, not an API token"));
        };
        if record.scope < needed {
            return Err(ApiError::new(
                Code::InsufficientScope,
                format!(
                    "this needs a token with the {} scope; this one has {}",
                    needed.as_str(),
                    record.scope.as_str()
                ),
            ));
        }
        let caller = Caller {
            second_factor: user.has_second_factor(),
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
            second_factor: identity.mfa,
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
            let member = member.ok_or_else(|| ApiError::not_found("organisation").on(ORG_HEADER))?;
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
        if !caller.second_factor
            && let Some(org) = orgs::get(store, caller.org_id)?.filter(|org| org.require_2fa)
        {
            return Err(ApiError::new(
                Code::OrgRequiresSecondFactor,
                format!(
                    "the organisation {} requires two-factor authentication: enrol at /api/v1/auth/totp, then sign in again with a code",
                    org.name
                ),
            ));
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

#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"username": "admin", "password": "correct-horse-battery"}))]
pub struct LoginRequest {
    username: String,
    password: String,
}

/// A signed-in session: a short-lived access token and the refresh token that renews it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokensResponse {
    access_token: String,
    /// Single use: each refresh answers a new one, and presenting a spent one signs the whole
    /// session out.
    refresh_token: String,
    #[schema(example = "Bearer")]
    token_type: &'static str,
    /// Seconds the access token is valid for.
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

/// Refuses a sign-in attempt early when the account or the address is locked out.
pub fn check_login_guard(state: &AppState, username: &str, address: &str) -> Result<(), ApiError> {
    // Checked before the password is: a locked account or address costs no hashing.
    state.login_guard.check(username, address, Instant::now()).map_err(|wait| ApiError {
        retry_after_s: Some(wait.as_secs().max(1)),
        ..ApiError::new(Code::TooManyAttempts, "too many failed sign-ins; try again later")
    })
}

/// Counts a failed or successful attempt against the account and the address.
pub fn note_login_attempt<T>(state: &AppState, username: &str, address: &str, outcome: &Result<T, ApiError>) {
    match outcome {
        Ok(_) => state.login_guard.succeeded(username),
        Err(e) if matches!(e.code, Code::BadCredentials | Code::BadSecondFactor) => {
            state.login_guard.failed(username, address, Instant::now());
        }
        Err(_) => {}
    }
}

/// Signs in with a user name and password. Accounts with two-factor authentication answer 401
/// `second_factor_required` with `details.mfa_token`, to finish at `/auth/login/totp`.
#[utoipa::path(post, path = "/auth/login", tag = "auth", security(()), request_body = LoginRequest,
    responses((status = 200, description = "Signed in", body = TokensResponse)))]
async fn login(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Json<TokensResponse>, ApiError> {
    let address = remote.ip().to_string();
    check_login_guard(&state, &body.username, &address)?;
    let auth = state.auth.clone();
    let (username, password) = (body.username.clone(), body.password);
    // argon2 is deliberately slow: keep it off the async workers.
    let outcome = blocking(move || auth.login(&username, &password)).await;
    note_login_attempt(&state, &body.username, &address, &outcome);
    match outcome? {
        Login::Tokens(tokens) => Ok(Json(tokens.into())),
        Login::SecondFactorRequired { mfa_token } => Err(ApiError::new(
            Code::SecondFactorRequired,
            "the password is right; send a code from your authenticator app (or a recovery code) to /api/v1/auth/login/totp",
        )
        .with_details(serde_json::json!({
            "mfa_token": mfa_token,
            "expires_in": crate::auth::MFA_TOKEN_TTL.as_secs(),
        }))),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecondFactorRequest {
    /// From the `second_factor_required` answer of `/auth/login`.
    mfa_token: String,
    /// Six digits from the authenticator app, or one of the recovery codes (`xxxxx-xxxxx`).
    #[schema(example = "123456")]
    code: String,
}

/// The second step of signing in to an account with two-factor authentication.
#[utoipa::path(post, path = "/auth/login/totp", tag = "auth", security(()), request_body = SecondFactorRequest,
    responses((status = 200, description = "Signed in", body = TokensResponse)))]
async fn login_second_factor(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    ApiJson(body): ApiJson<SecondFactorRequest>,
) -> Result<Json<TokensResponse>, ApiError> {
    let address = remote.ip().to_string();
    let username = state.auth.mfa_subject(&body.mfa_token)?;
    check_login_guard(&state, &username, &address)?;
    let auth = state.auth.clone();
    let outcome = blocking(move || auth.complete_login(&body.mfa_token, &body.code)).await;
    note_login_attempt(&state, &username, &address, &outcome);
    Ok(Json(outcome?.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    refresh_token: String,
}

/// Exchanges a refresh token for a new pair; the old refresh token is spent.
#[utoipa::path(post, path = "/auth/refresh", tag = "auth", security(()), request_body = RefreshRequest,
    responses((status = 200, description = "A new pair", body = TokensResponse)))]
async fn refresh(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<Json<TokensResponse>, ApiError> {
    let auth = state.auth.clone();
    Ok(Json(blocking(move || auth.refresh(&body.refresh_token)).await?.into()))
}

/// Signs the session out now: its access and refresh tokens stop working.
#[utoipa::path(post, path = "/auth/logout", tag = "auth", responses((status = 204, description = "Signed out")))]
async fn logout(State(state): State<AppState>, caller: Caller) -> Result<StatusCode, ApiError> {
    // API tokens never reach here (see access): this is always a session.
    state.auth.logout(caller.session_id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// An organisation and a role there.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrgRole {
    id: Uuid,
    role: Role,
}

impl OrgRole {
    pub fn new(id: Uuid, role: Role) -> Self {
        Self { id, role }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    id: Uuid,
    username: String,
    /// An administrator of the whole installation.
    is_admin: bool,
    created_at: String,
    /// Whether two-factor authentication is enabled for the account.
    totp_enabled: bool,
    /// Whether this sign-in passed a second factor.
    second_factor: bool,
    /// How the account signs in: `local` (password) or `sso`.
    source: &'static str,
    /// The dashboard's language (`en`, `fr`); unset: the browser's.
    locale: Option<String>,
    /// The organisation this request acted in, if any.
    org: Option<OrgRole>,
    orgs: Vec<OrgRole>,
}

/// Who is calling, the organisation the request acts in, and every organisation of theirs.
#[utoipa::path(get, path = "/auth/me", tag = "auth", responses((status = 200, body = Me)))]
async fn me(State(state): State<AppState>, caller: Caller) -> Result<Json<Me>, ApiError> {
    let user = state.auth.user(&caller.username)?.ok_or_else(|| ApiError::not_found("user"))?;
    Ok(Json(Me {
        id: user.id,
        totp_enabled: user.has_second_factor(),
        second_factor: caller.second_factor,
        source: if user.sso.is_some() { "sso" } else { "local" },
        locale: user.locale.clone(),
        org: caller.role.map(|role| OrgRole { id: caller.org_id, role }),
        orgs: orgs::memberships_of(state.store.as_ref(), user.id)?
            .iter()
            .map(|m| OrgRole { id: m.org_id, role: m.role })
            .collect(),
        username: user.username,
        is_admin: user.is_admin,
        created_at: super::rfc3339_s(user.created_at_unix_s),
    }))
}

/// The languages of the dashboard.
pub const LOCALES: [&str; 2] = ["en", "fr"];

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMe {
    /// `en` or `fr`; `null` follows the browser.
    #[schema(nullable, pattern = "^(en|fr)$")]
    locale: Option<String>,
}

/// Changes the caller's own preferences.
#[utoipa::path(patch, path = "/auth/me", tag = "auth", request_body = UpdateMe, responses((status = 200, body = Me)))]
async fn update_me(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<UpdateMe>,
) -> Result<Json<Me>, ApiError> {
    if body.locale.as_deref().is_some_and(|l| !LOCALES.contains(&l)) {
        return Err(ApiError::invalid("locale", format!("locale must be one of {}", LOCALES.join(", "))));
    }
    let user = state.auth.user(&caller.username)?.ok_or_else(|| ApiError::not_found("user"))?;
    state.auth.update_user(&user, |u| u.locale = body.locale)?;
    me(State(state), caller).await
}

/// An API token, never with its secret (which only the creation answer holds).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    id: Uuid,
    name: String,
    org_id: Uuid,
    scope: Scope,
    created_at: String,
    expires_at: Option<String>,
    last_used_at: Option<String>,
    revoked: bool,
    /// The secret to send as `Authorization: Bearer`; only in the answer that created it.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

impl From<&api_tokens::ApiToken> for TokenView {
    fn from(token: &api_tokens::ApiToken) -> Self {
        Self {
            id: token.id,
            name: token.name.clone(),
            org_id: token.org_id,
            scope: token.scope,
            created_at: super::rfc3339_s(token.created_at_unix_s),
            expires_at: token.expires_at_unix_s.map(super::rfc3339_s),
            last_used_at: token.last_used_at_unix_s.map(super::rfc3339_s),
            revoked: token.revoked,
            token: None,
        }
    }
}

/// The longest lifetime an API token may be given (ten years).
const MAX_TOKEN_TTL_S: u64 = 10 * 365 * 86400;

/// The caller's own API tokens.
#[utoipa::path(get, path = "/tokens", tag = "auth", responses((status = 200, body = Items<TokenView>)))]
async fn list_tokens(State(state): State<AppState>, caller: Caller) -> Result<Json<Items<TokenView>>, ApiError> {
    let tokens = api_tokens::list_for(state.store.as_ref(), caller.user_id)?;
    Ok(Json(tokens.iter().map(TokenView::from).collect::<Vec<_>>().into()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "ci-deploys", "scope": "deploy", "ttl_seconds": 2592000}))]
pub struct CreateToken {
    /// 1 to 64 characters.
    name: String,
    scope: Scope,
    /// Lifetime, up to ten years; without it the token does not expire.
    #[schema(minimum = 1, maximum = 315360000)]
    ttl_seconds: Option<u64>,
}

/// Makes an API token for the caller, acting in the organisation of this request; its secret is
/// in this answer only.
#[utoipa::path(post, path = "/tokens", tag = "auth", request_body = CreateToken,
    responses((status = 201, description = "Created, with `token`", body = TokenView)))]
async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<TokenView>), ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(ApiError::invalid("name", "name must be 1 to 64 characters"));
    }
    if body.ttl_seconds.is_some_and(|ttl| !(1..=MAX_TOKEN_TTL_S).contains(&ttl)) {
        return Err(ApiError::invalid(
            "ttl_seconds",
            "ttl_seconds must be between 1 and 315360000 (ten years); leave it out for a token that does not expire",
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
    Ok((StatusCode::CREATED, Json(TokenView { token: Some(token), ..TokenView::from(&record) })))
}

/// Revokes one of the caller's API tokens.
#[utoipa::path(delete, path = "/tokens/{id}", tag = "auth", params(("id" = String, Path)),
    responses((status = 204, description = "Revoked")))]
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
            (Method::POST, "/api/v1/deployments/x/scale", org(Scope::Deploy, Role::Operator)),
            (Method::POST, "/api/v1/deployments/x/migrate/y", org(Scope::Deploy, Role::Operator)),
            (Method::POST, "/api/v1/deployments/x/vms/web/reboot", org(Scope::Deploy, Role::Operator)),
            (Method::GET, "/api/v1/templates", org(Scope::Read, Role::Viewer)),
            (Method::POST, "/api/v1/templates/wordpress/reviews", org(Scope::Deploy, Role::Viewer)),
            (Method::PUT, "/api/v1/templates/wordpress/reviews/mine", org(Scope::Deploy, Role::Viewer)),
            (Method::POST, "/api/v1/templates/wordpress/deploy", org(Scope::Admin, Role::Admin)),
            (Method::POST, "/api/v1/templates", org(Scope::Admin, Role::Admin)),
            (Method::POST, "/api/v1/workflows", org(Scope::Admin, Role::Admin)),
            (Method::POST, "/api/v1/workflows/validate", org(Scope::Read, Role::Viewer)),
            (Method::POST, "/api/v1/stacks/x/analyze", org(Scope::Read, Role::Viewer)),
            (Method::POST, "/api/v1/workflows/x/runs", org(Scope::Deploy, Role::Operator)),
            (Method::POST, "/api/v1/workflows/x/runs/y/cancel", org(Scope::Deploy, Role::Operator)),
            (Method::POST, "/api/v1/workflows/x/runs/y/approvals/z", org(Scope::Deploy, Role::Operator)),
            (Method::GET, "/api/v1/workflows/x/runs/y", org(Scope::Read, Role::Viewer)),
            (Method::GET, "/api/v1/migrations", org(Scope::Read, Role::Viewer)),
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
