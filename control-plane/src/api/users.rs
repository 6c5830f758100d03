//! `/users`: accounts of the installation, managed by installation administrators (create,
//! disable, reset a password); and `/users/me/password`, where anyone changes their own.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::{ApiError, ApiJson};
use super::{AppState, rfc3339_s};
use crate::auth::{AuthError, Caller, User};
use crate::orgs::{self, Membership, Role};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/users", get(list).post(create))
        .route("/users/me/password", post(change_own_password))
        .route("/users/{id}", get(show).patch(update))
        .route("/users/{id}/password", post(reset_password))
}

fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_admin {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "users are managed by installation administrators"))
    }
}

fn user_json(state: &AppState, user: &User) -> Result<Value, ApiError> {
    let memberships = orgs::memberships_of(state.store.as_ref(), user.id)?;
    Ok(json!({
        "id": user.id,
        "username": user.username,
        "is_admin": user.is_admin,
        "disabled": user.disabled,
        "created_at": rfc3339_s(user.created_at_unix_s),
        "orgs": memberships.iter().map(|m| json!({ "id": m.org_id, "role": m.role.as_str() })).collect::<Vec<_>>(),
    }))
}

/// Runs argon2 (deliberately slow) off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AuthError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "password task failed"))?
        .map_err(ApiError::from)
}

fn load(state: &AppState, raw: &str) -> Result<User, ApiError> {
    let id = Uuid::try_parse(raw).map_err(|_| ApiError::not_found("user"))?;
    state.auth.user_by_id(id)?.ok_or_else(|| ApiError::not_found("user"))
}

async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    require_admin(&caller)?;
    let items = state.auth.users()?.iter().map(|u| user_json(&state, u)).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "items": items })))
}

async fn show(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    require_admin(&caller)?;
    Ok(Json(user_json(&state, &load(&state, &id)?)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    username: String,
    password: String,
    #[serde(default)]
    is_admin: bool,
    /// An organisation to add the user to, with `role` (viewer by default).
    org_id: Option<Uuid>,
    role: Option<Role>,
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_admin(&caller)?;
    let org = match body.org_id {
        Some(id) => Some(
            orgs::get(state.store.as_ref(), id)?
                .ok_or_else(|| ApiError { field: Some("org_id".into()), ..ApiError::not_found("organisation") })?,
        ),
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
    Ok((StatusCode::CREATED, Json(user_json(&state, &user)?)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateUser {
    disabled: Option<bool>,
    is_admin: Option<bool>,
}

/// Disables or enables a user, or grants or takes away installation administration. Nobody
/// does either to themselves, so the installation cannot lock its last administrator out.
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateUser>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&caller)?;
    let user = load(&state, &id)?;
    if user.id == caller.user_id {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "self_change",
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
    Ok(Json(user_json(&state, &user)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetPassword {
    password: String,
}

/// Sets a user's password and signs out all their sessions.
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangePassword {
    current_password: String,
    new_password: String,
}

/// Changes the caller's own password after checking the current one; every other session of
/// theirs is signed out, this one stays.
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
    .map_err(|e| {
        if e.code == "bad_credentials" { ApiError { field: Some("current_password".into()), ..e } } else { e }
    })?;
    Ok(StatusCode::NO_CONTENT)
}
