//! `/orgs`: organisations and their members. Only members see an organisation (anyone else gets
//! 404, as for one that does not exist); admins manage members below owner; owners manage
//! owners, rename and delete. Installation administrators create organisations and see them all.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, patch};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::{ApiError, ApiJson};
use super::{AppState, rfc3339_s};
use crate::auth::Caller;
use crate::orgs::{self, Membership, Org, Role};
use crate::store::{RecordStore, Table, Write};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/orgs", get(list).post(create))
        .route("/orgs/{id}", get(show).patch(rename).delete(remove))
        .route("/orgs/{id}/members", get(members).post(add_member))
        .route("/orgs/{id}/members/{user_id}", patch(change_role).delete(remove_member))
}

fn org_json(org: &Org, role: Option<Role>) -> Value {
    json!({
        "id": org.id,
        "name": org.name,
        "created_at": rfc3339_s(org.created_at_unix_s),
        "role": role.map(Role::as_str),
    })
}

fn member_json(member: &Membership) -> Value {
    json!({
        "user_id": member.user_id,
        "username": member.username,
        "role": member.role.as_str(),
        "since": rfc3339_s(member.since_unix_s),
    })
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// The organisation and the caller's role in it. Not a member (and not an installation
/// administrator): not found.
fn load(state: &AppState, caller: &Caller, raw: &str) -> Result<(Org, Option<Role>), ApiError> {
    let id = Uuid::try_parse(raw).map_err(|_| ApiError::not_found("organisation"))?;
    let org = orgs::get(state.store.as_ref(), id)?.ok_or_else(|| ApiError::not_found("organisation"))?;
    let role = orgs::membership(state.store.as_ref(), id, caller.user_id)?.map(|m| m.role);
    if role.is_none() && !caller.is_admin {
        return Err(ApiError::not_found("organisation"));
    }
    Ok((org, role))
}

/// Members are managed by admins; installation administrators act as owners.
fn effective_role(caller: &Caller, role: Option<Role>) -> Option<Role> {
    if caller.is_admin { Some(Role::Owner) } else { role }
}

fn require(caller: &Caller, role: Option<Role>, needed: Role) -> Result<(), ApiError> {
    match effective_role(caller, role) {
        Some(have) if have >= needed => Ok(()),
        _ => Err(forbidden(&format!("this needs the {} role in the organisation", needed.as_str()))),
    }
}

async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    let mine: std::collections::HashMap<Uuid, Role> =
        orgs::memberships_of(state.store.as_ref(), caller.user_id)?.into_iter().map(|m| (m.org_id, m.role)).collect();
    let items: Vec<Value> = orgs::list(state.store.as_ref())?
        .iter()
        .filter(|o| caller.is_admin || mine.contains_key(&o.id))
        .map(|o| org_json(o, mine.get(&o.id).copied()))
        .collect();
    Ok(Json(json!({ "items": items })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateOrg {
    name: String,
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateOrg>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !caller.is_admin {
        return Err(forbidden("organisations are created by installation administrators"));
    }
    let org = orgs::create(state.store.as_ref(), body.name.trim(), caller.user_id, &caller.username)?;
    tracing::info!(org_id = %org.id, name = %org.name, by = %caller.username, "organisation created");
    Ok((StatusCode::CREATED, Json(org_json(&org, Some(Role::Owner)))))
}

async fn show(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let (org, role) = load(&state, &caller, &id)?;
    Ok(Json(org_json(&org, role)))
}

async fn rename(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CreateOrg>,
) -> Result<Json<Value>, ApiError> {
    let (org, role) = load(&state, &caller, &id)?;
    require(&caller, role, Role::Owner)?;
    let org = orgs::rename(state.store.as_ref(), &org, body.name.trim())?;
    Ok(Json(org_json(&org, role)))
}

/// Deletes an organisation that holds nothing any more (no targets, stacks or deployments),
/// with its members, join tokens and API tokens.
async fn remove(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let (org, role) = load(&state, &caller, &id)?;
    require(&caller, role, Role::Owner)?;
    let store = state.store.as_ref();
    let targets = crate::agents::ids_in(store, org.id)?.len();
    let stacks = crate::stacks::list(store, org.id)?.len();
    let deployments = crate::deployments::list_in(store, org.id)?.len();
    if targets + stacks + deployments > 0 {
        return Err(ApiError {
            details: Some(json!({ "targets": targets, "stacks": stacks, "deployments": deployments })),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "org_not_empty",
                "the organisation still has targets, stacks or deployments; remove them first",
            )
        });
    }
    let mut writes: Vec<Write> = orgs::members(store, org.id)?
        .iter()
        .map(|m| Write { table: Table::Memberships, key: crate::store::Record::key(m), value: None })
        .collect();
    for token in crate::join_tokens::list(store, org.id)? {
        writes.push(Write { table: Table::JoinTokens, key: token.id.as_bytes().to_vec(), value: None });
    }
    for token in store.load_all::<crate::api_tokens::ApiToken>()?.into_iter().filter(|t| t.org_id == org.id) {
        writes.push(Write { table: Table::ApiTokens, key: token.id.as_bytes().to_vec(), value: None });
    }
    writes.push(Write { table: Table::Orgs, key: org.id.as_bytes().to_vec(), value: None });
    store.atomic(&[], &writes)?;
    tracing::warn!(org_id = %org.id, name = %org.name, by = %caller.username, "organisation deleted");
    Ok(StatusCode::NO_CONTENT)
}

async fn members(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (org, _) = load(&state, &caller, &id)?;
    let items: Vec<Value> = orgs::members(state.store.as_ref(), org.id)?.iter().map(member_json).collect();
    Ok(Json(json!({ "items": items })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMember {
    username: String,
    role: Role,
}

/// Adds an existing user to the organisation with a role. Granting ownership needs an owner.
async fn add_member(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AddMember>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (org, role) = load(&state, &caller, &id)?;
    require(&caller, role, Role::Admin)?;
    if body.role == Role::Owner {
        require(&caller, role, Role::Owner)?;
    }
    let user = state
        .auth
        .user(body.username.trim())?
        .ok_or_else(|| ApiError { field: Some("username".into()), ..ApiError::not_found("user") })?;
    if orgs::membership(state.store.as_ref(), org.id, user.id)?.is_some() {
        return Err(ApiError {
            field: Some("username".into()),
            ..ApiError::new(StatusCode::CONFLICT, "already_member", format!("{} is already a member", user.username))
        });
    }
    let member = Membership {
        org_id: org.id,
        user_id: user.id,
        username: user.username,
        role: body.role,
        since_unix_s: crate::auth::now_unix_s(),
    };
    orgs::set_member(state.store.as_ref(), &member)?;
    tracing::info!(org_id = %org.id, member = %member.username, role = member.role.as_str(), by = %caller.username, "member added");
    Ok((StatusCode::CREATED, Json(member_json(&member))))
}

fn load_member(state: &AppState, org: &Org, raw: &str) -> Result<Membership, ApiError> {
    let user_id = Uuid::try_parse(raw).map_err(|_| ApiError::not_found("member"))?;
    orgs::membership(state.store.as_ref(), org.id, user_id)?.ok_or_else(|| ApiError::not_found("member"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeRole {
    role: Role,
}

/// Changes a member's role. Touching ownership (making or unmaking an owner) needs an owner.
async fn change_role(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, user_id)): Path<(String, String)>,
    ApiJson(body): ApiJson<ChangeRole>,
) -> Result<Json<Value>, ApiError> {
    let (org, role) = load(&state, &caller, &id)?;
    require(&caller, role, Role::Admin)?;
    let member = load_member(&state, &org, &user_id)?;
    if member.role == Role::Owner || body.role == Role::Owner {
        require(&caller, role, Role::Owner)?;
    }
    let changed = Membership { role: body.role, ..member };
    orgs::set_member(state.store.as_ref(), &changed)?;
    Ok(Json(member_json(&changed)))
}

/// Removes a member: admins remove members below owner, owners anyone; everyone may leave.
async fn remove_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (org, role) = load(&state, &caller, &id)?;
    let member = load_member(&state, &org, &user_id)?;
    if member.user_id != caller.user_id {
        require(&caller, role, if member.role == Role::Owner { Role::Owner } else { Role::Admin })?;
    }
    orgs::remove_member(state.store.as_ref(), org.id, member.user_id)?;
    tracing::info!(org_id = %org.id, member = %member.username, by = %caller.username, "member removed");
    Ok(StatusCode::NO_CONTENT)
}
