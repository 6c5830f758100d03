//! Single sign-on: an organisation's identity provider (`/orgs/{id}/sso`, its admins), and the
//! sign-in through it (`/auth/sso/…`, public: the provider is the credential).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::auth::TokensResponse;
use super::error::{ApiError, ApiJson, ApiQuery, Code};
use super::{AppState, rfc3339_s};
use crate::audit::Fact;
use crate::auth::Caller;
use crate::orgs::{self, Org, Role};
use crate::sso::{GroupRole, SsoConfig, SsoError};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(show_sso, save_sso, remove_sso))
        .routes(routes!(test_sso))
        .routes(routes!(sso_providers))
        .routes(routes!(sso_start))
        .routes(routes!(sso_callback))
        .routes(routes!(sso_exchange))
}

impl From<SsoError> for ApiError {
    fn from(e: SsoError) -> Self {
        match e {
            SsoError::NotConfigured => ApiError::new(Code::SsoNotConfigured, e.to_string()),
            SsoError::BadConfig { field, .. } => ApiError::invalid(field, e.to_string()),
            SsoError::Provider(_) => ApiError::new(Code::SsoProviderUnavailable, e.to_string()),
            SsoError::Refused(_) => ApiError::new(Code::SsoFailed, e.to_string()),
            SsoError::Store(e) => e.into(),
            SsoError::Auth(e) => e.into(),
        }
    }
}

fn load(state: &AppState, caller: &Caller, raw: &str, needed: Role) -> Result<(Org, Role), ApiError> {
    super::orgs::managed_by(state, caller, raw, needed, "single sign-on is")
}

/// An organisation's identity provider, without its client secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct SsoConfigView {
    issuer: String,
    client_id: String,
    has_client_secret: bool,
    scopes: Vec<String>,
    groups_claim: String,
    role_mapping: Vec<GroupRole>,
    default_role: Option<Role>,
    ca_pem: Option<String>,
    enabled: bool,
    /// Register this as the client's redirect URI at the provider.
    redirect_uri: String,
    /// Where a browser starts signing in.
    login_url: String,
    updated_by: String,
    updated_at: String,
}

fn view(state: &AppState, org: &Org, config: &SsoConfig) -> SsoConfigView {
    SsoConfigView {
        issuer: config.issuer.clone(),
        client_id: config.client_id.clone(),
        has_client_secret: !config.client_secret_sealed.is_empty(),
        scopes: config.scopes.clone(),
        groups_claim: config.groups_claim.clone(),
        role_mapping: config.role_mapping.clone(),
        default_role: config.default_role,
        ca_pem: config.ca_pem.clone(),
        enabled: config.enabled,
        redirect_uri: state.sso.redirect_uri().to_owned(),
        login_url: format!("{}/api/v1/auth/sso/{}/start", state.settings.public_url, org.id),
        updated_by: config.updated_by.clone(),
        updated_at: rfc3339_s(config.updated_at_unix_s),
    }
}

/// The organisation's identity provider (admins).
#[utoipa::path(get, path = "/orgs/{id}/sso", tag = "orgs", params(("id" = String, Path)),
    responses((status = 200, body = SsoConfigView)))]
async fn show_sso(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SsoConfigView>, ApiError> {
    let (org, _) = load(&state, &caller, &id, Role::Admin)?;
    let config = state
        .sso
        .config(org.id)?
        .ok_or_else(|| ApiError::new(Code::SsoNotConfigured, SsoError::NotConfigured.to_string()))?;
    Ok(Json(view(&state, &org, &config)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "issuer": "https://keycloak.example.com/realms/main",
    "client_id": "windflow",
    "client_secret": "from-the-provider",
    "role_mapping": [{"group": "platform-team", "role": "admin"}, {"group": "developers", "role": "operator"}],
    "default_role": "viewer"
}))]
pub struct SsoConfigInput {
    /// The provider's issuer URL: https, or http on 127.0.0.1 only.
    #[schema(example = "https://keycloak.example.com/realms/main")]
    issuer: String,
    #[schema(min_length = 1, max_length = 255)]
    client_id: String,
    /// Required the first time; left out, the current one is kept.
    client_secret: Option<String>,
    /// Scopes besides `openid` (default: `profile`, `email`, `groups`).
    scopes: Option<Vec<String>>,
    /// The ID-token claim listing the user's groups (default `groups`).
    groups_claim: Option<String>,
    /// Which group gives which role; the highest wins. Only owners may map a group to `owner`.
    #[serde(default)]
    role_mapping: Vec<GroupRole>,
    /// The role of users in none of the mapped groups; without one they are refused.
    default_role: Option<Role>,
    /// Extra CA certificates (PEM) to trust for this provider.
    ca_pem: Option<String>,
    /// Default true.
    enabled: Option<bool>,
}

/// Sets the organisation's identity provider (admins; mapping a group to `owner` needs an owner).
#[utoipa::path(put, path = "/orgs/{id}/sso", tag = "orgs", params(("id" = String, Path)), request_body = SsoConfigInput,
    responses((status = 200, body = SsoConfigView)))]
async fn save_sso(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SsoConfigInput>,
) -> Result<Json<SsoConfigView>, ApiError> {
    let (org, role) = load(&state, &caller, &id, Role::Admin)?;
    crate::sso::check_issuer(&body.issuer)?;
    if body.client_id.trim().is_empty() || body.client_id.len() > 255 {
        return Err(ApiError::invalid("client_id", "client_id must be 1 to 255 characters"));
    }
    let grants_owner =
        body.role_mapping.iter().any(|m| m.role == Role::Owner) || body.default_role == Some(Role::Owner);
    if grants_owner && role < Role::Owner {
        return Err(ApiError::forbidden("only owners may map a group to the owner role").on("role_mapping"));
    }
    if let Some(empty) = body.role_mapping.iter().position(|m| m.group.trim().is_empty()) {
        return Err(ApiError::invalid(&format!("role_mapping[{empty}].group"), "group names cannot be empty"));
    }
    if let Some(pem) = &body.ca_pem {
        use rustls_pki_types::pem::PemObject;
        let certs: Result<Vec<_>, _> = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
        if !certs.is_ok_and(|c| !c.is_empty()) {
            return Err(ApiError::invalid("ca_pem", "ca_pem holds no PEM certificate"));
        }
    }
    let current = state.sso.config(org.id)?;
    let client_secret_sealed = match (body.client_secret.as_deref(), &current) {
        (Some(secret), _) if !secret.is_empty() => state.sso.seal_secret(org.id, secret),
        (None, Some(current)) => current.client_secret_sealed.clone(),
        _ => return Err(ApiError::invalid("client_secret", "client_secret is required")),
    };
    let config = SsoConfig {
        org_id: org.id,
        issuer: body.issuer.trim_end_matches('/').to_owned(),
        client_id: body.client_id.trim().to_owned(),
        client_secret_sealed,
        scopes: body.scopes.unwrap_or_else(|| ["profile", "email", "groups"].map(String::from).to_vec()),
        groups_claim: body.groups_claim.filter(|c| !c.is_empty()).unwrap_or_else(|| "groups".into()),
        role_mapping: body.role_mapping,
        default_role: body.default_role,
        ca_pem: body.ca_pem,
        enabled: body.enabled.unwrap_or(true),
        updated_by: caller.username.clone(),
        updated_at_unix_s: crate::auth::now_unix_s(),
    };
    state.sso.save(&config)?;
    tracing::info!(org_id = %org.id, issuer = %config.issuer, by = %caller.username, "single sign-on configured");
    Ok(Json(view(&state, &org, &config)))
}

/// Removes the organisation's identity provider; accounts it made stay, without a way in.
#[utoipa::path(delete, path = "/orgs/{id}/sso", tag = "orgs", params(("id" = String, Path)),
    responses((status = 204, description = "Removed")))]
async fn remove_sso(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (org, _) = load(&state, &caller, &id, Role::Admin)?;
    state.sso.delete(org.id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// What the provider answered to discovery.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct SsoTest {
    ok: bool,
    /// Why it failed, when it did.
    error: Option<String>,
    issuer: Option<String>,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
}

/// Checks that the provider answers discovery and publishes its signing keys; a provider that
/// does not is a result (`ok: false` and why), not an error of this request.
#[utoipa::path(post, path = "/orgs/{id}/sso/test", tag = "orgs", params(("id" = String, Path)),
    responses((status = 200, body = SsoTest)))]
async fn test_sso(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SsoTest>, ApiError> {
    let (org, _) = load(&state, &caller, &id, Role::Admin)?;
    let config = state.sso.config(org.id)?.ok_or_else(|| ApiError::from(SsoError::NotConfigured))?;
    Ok(Json(match state.sso.discover(&config).await {
        Ok(metadata) => SsoTest {
            ok: true,
            issuer: Some(metadata.issuer().to_string()),
            authorization_endpoint: Some(metadata.authorization_endpoint().to_string()),
            token_endpoint: metadata.token_endpoint().map(|t| t.to_string()),
            ..SsoTest::default()
        },
        Err(error) => SsoTest { ok: false, error: Some(error.to_string()), ..SsoTest::default() },
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SsoProvider {
    org_id: Uuid,
    org_name: String,
    /// Where a browser starts signing in.
    login_url: String,
}

/// The organisations whose identity providers are on, for the sign-in page's buttons.
#[utoipa::path(get, path = "/auth/sso/providers", tag = "auth", security(()),
    responses((status = 200, body = super::Items<SsoProvider>)))]
async fn sso_providers(State(state): State<AppState>) -> Result<Json<super::Items<SsoProvider>>, ApiError> {
    let mut items = Vec::new();
    for config in state.sso.enabled()? {
        if let Some(org) = orgs::get(state.store.as_ref(), config.org_id)? {
            let login_url = format!("/api/v1/auth/sso/{}/start", org.id);
            items.push(SsoProvider { org_id: org.id, org_name: org.name, login_url });
        }
    }
    Ok(Json(items.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StartQuery {
    /// A path of this control plane to come back to (default `/`).
    return_to: Option<String>,
}

/// A path on this site only: never a way to send someone elsewhere.
fn local_path(raw: Option<&str>) -> String {
    match raw {
        Some(path) if path.starts_with('/') && !path.starts_with("//") && !path.contains(['\\', '\r', '\n']) => {
            path.split('#').next().unwrap_or("/").to_owned()
        }
        _ => "/".into(),
    }
}

fn see_other(location: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, location), (header::CACHE_CONTROL, "no-store")]).into_response()
}

/// Starts signing in through the organisation's identity provider (id or name): answers 303
/// to the provider, or back to `return_to#sso_error=<why>` when that is not possible (a
/// browser is on the other end).
#[utoipa::path(get, path = "/auth/sso/{org}/start", tag = "auth", security(()),
    params(("org" = String, Path, description = "The organisation's id or name"), StartQuery),
    responses((status = 303, description = "To the identity provider, or back with `#sso_error`")))]
async fn sso_start(
    State(state): State<AppState>,
    Path(org): Path<String>,
    ApiQuery(query): ApiQuery<StartQuery>,
) -> Result<Response, ApiError> {
    let org = match Uuid::try_parse(&org) {
        Ok(id) => orgs::get(state.store.as_ref(), id)?,
        Err(_) => orgs::list(state.store.as_ref())?.into_iter().find(|o| o.name.eq_ignore_ascii_case(&org)),
    }
    .ok_or_else(|| ApiError::not_found("organisation"))?;
    let return_to = local_path(query.return_to.as_deref());
    Ok(match state.sso.begin(&org, &return_to).await {
        Ok(url) => see_other(&url),
        Err(SsoError::Store(e)) => return Err(e.into()),
        Err(error) => {
            tracing::warn!(org_id = %org.id, error = %error, "single sign-on could not start");
            see_other(&format!("{return_to}#sso_error={}", fragment_value(&error.to_string())))
        }
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    /// Set by the provider when it refused.
    error: Option<String>,
    error_description: Option<String>,
}

fn fragment_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Where the provider sends the browser back: answers 303 to the dashboard with
/// `#sso=<exchange code>`, or `#sso_error=<why>`.
#[utoipa::path(get, path = "/auth/sso/callback", tag = "auth", security(()), params(CallbackQuery),
    responses((status = 303, description = "Back to the dashboard")))]
async fn sso_callback(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(remote): axum::extract::ConnectInfo<std::net::SocketAddr>,
    ApiQuery(query): ApiQuery<CallbackQuery>,
) -> Response {
    let attempt_state = query.state.clone().unwrap_or_default();
    let return_to = state.sso.return_to(&attempt_state).unwrap_or_else(|| "/".into());
    let outcome = match (&query.error, &query.code) {
        (Some(error), _) => {
            state.sso.abandon(&attempt_state);
            Err(SsoError::Refused(format!(
                "the provider refused: {error}{}",
                query.error_description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default()
            )))
        }
        (None, Some(code)) => state.sso.finish(&state.auth, &attempt_state, code).await,
        (None, None) => Err(SsoError::Refused("the provider sent neither a code nor an error".into())),
    };
    match outcome {
        Ok(signed_in) => {
            state.audit.record(Fact {
                actor: format!("user:{}", signed_in.user.username),
                kind: "auth.sso_login",
                object: format!("org:{}", signed_in.org_id),
                detail: Some(format!("role {}", signed_in.role.as_str())),
                remote: Some(remote.ip().to_string()),
                org_id: Some(signed_in.org_id),
                ..Fact::default()
            });
            tracing::info!(user = %signed_in.user.username, org_id = %signed_in.org_id, role = signed_in.role.as_str(), "signed in by single sign-on");
            see_other(&format!("{}#sso={}", signed_in.return_to, signed_in.exchange_code))
        }
        Err(error) => {
            tracing::warn!(error = %error, "single sign-on refused");
            state.audit.record(Fact {
                actor: "anonymous".into(),
                kind: "auth.sso_refused",
                object: "sso".into(),
                detail: Some(error.to_string()),
                remote: Some(remote.ip().to_string()),
                ..Fact::default()
            });
            see_other(&format!("{return_to}#sso_error={}", fragment_value(&error.to_string())))
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRequest {
    /// From `#sso=` after the callback; single use, valid 60 s.
    code: String,
}

/// Trades the code the callback handed to the dashboard for the session's tokens.
#[utoipa::path(post, path = "/auth/sso/exchange", tag = "auth", security(()), request_body = ExchangeRequest,
    responses((status = 200, body = TokensResponse)))]
async fn sso_exchange(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ExchangeRequest>,
) -> Result<Json<TokensResponse>, ApiError> {
    let tokens = state
        .sso
        .exchange(&body.code)
        .ok_or_else(|| ApiError::new(Code::SsoFailed, "the code is unknown, expired or already used").on("code"))?;
    Ok(Json(tokens.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_paths_stay_on_this_site() {
        assert_eq!(local_path(Some("/deployments/1?x=2")), "/deployments/1?x=2");
        assert_eq!(local_path(Some("/a#frag")), "/a");
        for elsewhere in [Some("https://evil.example"), Some("//evil.example"), Some("/\\evil"), Some("x"), None] {
            assert_eq!(local_path(elsewhere), "/", "{elsewhere:?}");
        }
    }
}
