//! `/users`: accounts of the installation, managed by installation administrators (create,
//! disable, reset a password); and `/users/me/password`, where anyone changes their own.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::auth::{OrgRole, blocking};
use super::error::{ApiError, ApiJson, Code};
use super::{AppState, Items, rfc3339_s};
use crate::auth::{AuthError, Caller, User};
use crate::orgs::{self, Membership, Role};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(change_own_password))
        .routes(routes!(show, update))
        .routes(routes!(reset_password))
        .routes(routes!(reset_totp))
}

fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_admin { Ok(()) } else { Err(ApiError::forbidden("users are managed by installation administrators")) }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    id: Uuid,
    username: String,
    is_admin: bool,
    disabled: bool,
    totp_enabled: bool,
    /// `local` (password) or `sso` (made by single sign-on).
    source: &'static str,
    created_at: String,
    orgs: Vec<OrgRole>,
}

fn user_view(state: &AppState, user: &User) -> Result<UserView, ApiError> {
    let memberships = orgs::memberships_of(state.store.as_ref(), user.id)?;
    Ok(UserView {
        id: user.id,
        username: user.username.clone(),
        is_admin: user.is_admin,
        disabled: user.disabled,
        totp_enabled: user.has_second_factor(),
        source: if user.sso.is_some() { "sso" } else { "local" },
        created_at: rfc3339_s(user.created_at_unix_s),
        orgs: memberships.iter().map(|m| OrgRole::new(m.org_id, m.role)).collect(),
    })
}

fn load(state: &AppState, raw: &str) -> Result<User, ApiError> {
    let id = Uuid::try_parse(raw).map_err(|_| ApiError::not_found("user"))?;
    state.auth.user_by_id(id)?.ok_or_else(|| ApiError::not_found("user"))
}

/// Every user of the installation (installation administrators).
#[utoipa::path(get, path = "/users", tag = "users", responses((status = 200, body = Items<UserView>)))]
async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Items<UserView>>, ApiError> {
    require_admin(&caller)?;
    let items = state.auth.users()?.iter().map(|u| user_view(&state, u)).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(items.into()))
}

/// A user (installation administrators).
#[utoipa::path(get, path = "/users/{id}", tag = "users", params(("id" = String, Path)),
    responses((status = 200, body = UserView)))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    require_admin(&caller)?;
    Ok(Json(user_view(&state, &load(&state, &id)?)?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"username": "alice", "password": "a long enough passphrase", "org_id": "0199b5f0-0000-7000-8000-000000000000", "role": "operator"}))]
pub struct CreateUser {
    /// 1 to 64 letters, digits, `.`, `-`, `_` or `@`.
    #[schema(pattern = r"^[A-Za-z0-9._@-]{1,64}$")]
    username: String,
    /// 12 to 1,024 characters, at least 5 different ones, not containing the user name.
    #[schema(min_length = 12, max_length = 1024)]
    password: String,
    #[serde(default)]
    is_admin: bool,
    /// An organisation to add the user to, with `role` (viewer by default).
    org_id: Option<Uuid>,
    role: Option<Role>,
}

/// Creates a user, optionally in an organisation (installation administrators).
#[utoipa::path(post, path = "/users", tag = "users", request_body = CreateUser,
    responses((status = 201, body = UserView)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    require_admin(&caller)?;
    let org = match body.org_id {
        Some(id) => {
            Some(orgs::get(state.store.as_ref(), id)?.ok_or_else(|| ApiError::not_found("organisation").on("org_id"))?)
        }
        None if body.role.is_some() => return Err(ApiError::invalid("role", "a role needs an org_id")),
        None => None,
    };
    let auth = state.auth.clone();
    let (username, password, is_admin) = (body.username.trim().to_owned(), body.password, body.is_admin);
    let user = blocking(move || auth.create_user(&username, &password, is_admin)).await?;
    if let Some(org) = org {
        let member = Membership {
            org_id: org.id,
            user_id: user.id,
            username: user.username.clone(),
            role: body.role.unwrap_or(Role::Viewer),
            since_unix_s: crate::auth::now_unix_s(),
        };
        orgs::set_member(state.store.as_ref(), &member)?;
    }
    tracing::info!(user = %user.username, is_admin = user.is_admin, by = %caller.username, "user created");
    Ok((StatusCode::CREATED, Json(user_view(&state, &user)?)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    disabled: Option<bool>,
    is_admin: Option<bool>,
}

/// Disables or enables a user, or grants or takes away installation administration. Nobody
/// does either to themselves, so the installation cannot lock its last administrator out.
#[utoipa::path(patch, path = "/users/{id}", tag = "users", params(("id" = String, Path)), request_body = UpdateUser,
    responses((status = 200, body = UserView)))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateUser>,
) -> Result<Json<UserView>, ApiError> {
    require_admin(&caller)?;
    let user = load(&state, &id)?;
    if user.id == caller.user_id {
        return Err(ApiError::new(
            Code::SelfChange,
            "you cannot disable yourself or change your own administrator status",
        ));
    }
    let user = state.auth.update_user(&user, |u| {
        u.disabled = body.disabled.unwrap_or(u.disabled);
        u.is_admin = body.is_admin.unwrap_or(u.is_admin);
    })?;
    if user.disabled {
        state.auth.revoke_sessions(user.id, None)?;
    }
    tracing::warn!(user = %user.username, disabled = user.disabled, is_admin = user.is_admin, by = %caller.username, "user changed");
    Ok(Json(user_view(&state, &user)?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetPassword {
    #[schema(min_length = 12, max_length = 1024)]
    password: String,
}

/// Sets a user's password and signs out all their sessions (installation administrators).
#[utoipa::path(post, path = "/users/{id}/password", tag = "users", params(("id" = String, Path)),
    request_body = ResetPassword, responses((status = 204, description = "Set")))]
async fn reset_password(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ResetPassword>,
) -> Result<StatusCode, ApiError> {
    require_admin(&caller)?;
    let user = load(&state, &id)?;
    let auth = state.auth.clone();
    blocking(move || auth.set_password(&user, &body.password, None)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Turns off a user's two-factor authentication, for one who lost their device; their
/// sessions are signed out (installation administrators).
#[utoipa::path(delete, path = "/users/{id}/totp", tag = "users", params(("id" = String, Path)),
    responses((status = 204, description = "Turned off")))]
async fn reset_totp(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_admin(&caller)?;
    let user = load(&state, &id)?;
    state.auth.disable_totp(&user)?;
    state.auth.revoke_sessions(user.id, None)?;
    tracing::warn!(user = %user.username, by = %caller.username, "two-factor authentication reset");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    current_password: String,
    #[schema(min_length = 12, max_length = 1024)]
    new_password: String,
}

/// Changes the caller's own password after checking the current one; every other session of
/// theirs is signed out, this one stays.
#[utoipa::path(post, path = "/users/me/password", tag = "users", request_body = ChangePassword,
    responses((status = 204, description = "Changed")))]
async fn change_own_password(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ChangePassword>,
) -> Result<StatusCode, ApiError> {
    let user = state.auth.user(&caller.username)?.ok_or_else(|| ApiError::not_found("user"))?;
    let auth = state.auth.clone();
    blocking(move || {
        if !auth.check_password(&user, &body.current_password) {
            return Err(AuthError::BadCredentials);
        }
        auth.set_password(&user, &body.new_password, Some(caller.session_id))
    })
    .await
    .map_err(|e| if e.code == Code::BadCredentials { e.on("current_password") } else { e })?;
    Ok(StatusCode::NO_CONTENT)
}
