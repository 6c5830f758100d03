//! `/orgs`: organisations and their members. Only members see an organisation (anyone else gets
//! 404, as for one that does not exist); admins manage members below owner; owners manage
//! owners, rename and delete. Installation administrators create organisations and see them all.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{ApiError, ApiJson, Code};
use super::{AppState, Items, rfc3339_s};
use crate::auth::Caller;
use crate::orgs::{self, Membership, Org, Role};
use crate::store::{RecordStore, Table, Write};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
        .routes(routes!(members, add_member))
        .routes(routes!(change_role, remove_member))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrgView {
    id: Uuid,
    name: String,
    created_at: String,
    /// Members act here only after signing in with a second factor.
    require_2fa: bool,
    /// The caller's role here (none for an installation administrator who is not a member).
    role: Option<Role>,
}

fn org_view(org: &Org, role: Option<Role>) -> OrgView {
    OrgView {
        id: org.id,
        name: org.name.clone(),
        created_at: rfc3339_s(org.created_at_unix_s),
        require_2fa: org.require_2fa,
        role,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    user_id: Uuid,
    username: String,
    role: Role,
    since: String,
}

impl From<&Membership> for MemberView {
    fn from(member: &Membership) -> Self {
        Self {
            user_id: member.user_id,
            username: member.username.clone(),
            role: member.role,
            since: rfc3339_s(member.since_unix_s),
        }
    }
}

fn forbidden(message: &str) -> ApiError {
    ApiError::forbidden(message)
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

/// The organisation `raw` names and the caller's role there, if it is at least `needed`
/// (installation administrators act as owners); other organisations are not found. `what` says
/// what that role manages (`"single sign-on is"`), for the refusal.
pub(super) fn managed_by(
    state: &AppState,
    caller: &Caller,
    raw: &str,
    needed: Role,
    what: &str,
) -> Result<(Org, Role), ApiError> {
    let (org, role) = load(state, caller, raw)?;
    match effective_role(caller, role) {
        None => Err(ApiError::not_found("organisation")),
        Some(role) if role < needed => {
            Err(ApiError::forbidden(format!("{what} managed by the organisation's {}s", needed.as_str())))
        }
        Some(role) => Ok((org, role)),
    }
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

/// The caller's organisations with their role (installation administrators see all).
#[utoipa::path(get, path = "/orgs", tag = "orgs", responses((status = 200, body = Items<OrgView>)))]
async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Items<OrgView>>, ApiError> {
    let mine: std::collections::HashMap<Uuid, Role> =
        orgs::memberships_of(state.store.as_ref(), caller.user_id)?.into_iter().map(|m| (m.org_id, m.role)).collect();
    let items: Vec<OrgView> = orgs::list(state.store.as_ref())?
        .iter()
        .filter(|o| caller.is_admin || mine.contains_key(&o.id))
        .map(|o| org_view(o, mine.get(&o.id).copied()))
        .collect();
    Ok(Json(items.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    /// 1 to 64 characters, unique.
    #[schema(min_length = 1, max_length = 64, pattern = r"\S")]
    name: String,
}

/// Creates an organisation owned by the caller (installation administrators).
#[utoipa::path(post, path = "/orgs", tag = "orgs", request_body = CreateOrg,
    responses((status = 201, body = OrgView)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateOrg>,
) -> Result<(StatusCode, Json<OrgView>), ApiError> {
    if !caller.is_admin {
        return Err(forbidden("organisations are created by installation administrators"));
    }
    let org = orgs::create(state.store.as_ref(), body.name.trim(), caller.user_id, &caller.username)?;
    tracing::info!(org_id = %org.id, name = %org.name, by = %caller.username, "organisation created");
    Ok((StatusCode::CREATED, Json(org_view(&org, Some(Role::Owner)))))
}

/// An organisation (members only).
#[utoipa::path(get, path = "/orgs/{id}", tag = "orgs", params(("id" = String, Path)),
    responses((status = 200, body = OrgView)))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<OrgView>, ApiError> {
    let (org, role) = load(&state, &caller, &id)?;
    Ok(Json(org_view(&org, role)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrg {
    /// A new name (owners).
    #[schema(min_length = 1, max_length = 64, pattern = r"\S")]
    name: Option<String>,
    /// Require a second factor of every member acting here (admins).
    require_2fa: Option<bool>,
}

/// Renames the organisation (owners) or changes whether it requires two-factor authentication
/// (admins).
#[utoipa::path(patch, path = "/orgs/{id}", tag = "orgs", params(("id" = String, Path)), request_body = UpdateOrg,
    responses((status = 200, body = OrgView)))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateOrg>,
) -> Result<Json<OrgView>, ApiError> {
    let (org, role) = load(&state, &caller, &id)?;
    if body.name.is_some() {
        require(&caller, role, Role::Owner)?;
    }
    if let Some(wanted) = body.require_2fa {
        require(&caller, role, Role::Admin)?;
        // Turning it on from a session without a second factor would lock the caller out.
        if wanted && !caller.second_factor {
            return Err(ApiError::new(
                Code::OrgRequiresSecondFactor,
                "sign in with a second factor before requiring one of everybody",
            )
            .on("require_2fa"));
        }
    }
    let name = body.name.as_deref().map(str::trim);
    let org = orgs::update(state.store.as_ref(), &org, |o| {
        if let Some(name) = name {
            o.name = name.to_owned();
        }
        o.require_2fa = body.require_2fa.unwrap_or(o.require_2fa);
    })?;
    tracing::info!(org_id = %org.id, name = %org.name, require_2fa = org.require_2fa, by = %caller.username, "organisation changed");
    Ok(Json(org_view(&org, role)))
}

/// Deletes an organisation that holds nothing any more (no targets, stacks or deployments),
/// with its members, join tokens, API tokens, single sign-on and AI settings and usage.
#[utoipa::path(delete, path = "/orgs/{id}", tag = "orgs", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted")))]
async fn remove(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let (org, role) = load(&state, &caller, &id)?;
    require(&caller, role, Role::Owner)?;
    let store = state.store.as_ref();
    let targets = crate::agents::ids_in(store, org.id)?.len();
    let stacks = crate::stacks::list(store, org.id)?.len();
    let deployments = crate::deployments::list_in(store, org.id)?.len();
    if targets + stacks + deployments > 0 {
        return Err(ApiError::new(
            Code::OrgNotEmpty,
            "the organisation still has targets, stacks or deployments; remove them first",
        )
        .with_details(serde_json::json!({ "targets": targets, "stacks": stacks, "deployments": deployments })));
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
    for table in [Table::SsoConfigs, Table::AiConfigs, Table::Orgs] {
        writes.push(Write { table, key: org.id.as_bytes().to_vec(), value: None });
    }
    for (key, _) in store.scan_prefix(Table::AiUsage, org.id.as_bytes())? {
        writes.push(Write { table: Table::AiUsage, key, value: None });
    }
    store.atomic(&[], &writes)?;
    tracing::warn!(org_id = %org.id, name = %org.name, by = %caller.username, "organisation deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The organisation's members.
#[utoipa::path(get, path = "/orgs/{id}/members", tag = "orgs", params(("id" = String, Path)),
    responses((status = 200, body = Items<MemberView>)))]
async fn members(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Items<MemberView>>, ApiError> {
    let (org, _) = load(&state, &caller, &id)?;
    let items: Vec<MemberView> = orgs::members(state.store.as_ref(), org.id)?.iter().map(MemberView::from).collect();
    Ok(Json(items.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    username: String,
    role: Role,
}

/// Adds an existing user to the organisation with a role. Granting ownership needs an owner.
#[utoipa::path(post, path = "/orgs/{id}/members", tag = "orgs", params(("id" = String, Path)), request_body = AddMember,
    responses((status = 201, body = MemberView)))]
async fn add_member(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AddMember>,
) -> Result<(StatusCode, Json<MemberView>), ApiError> {
    let (org, role) = load(&state, &caller, &id)?;
    require(&caller, role, Role::Admin)?;
    if body.role == Role::Owner {
        require(&caller, role, Role::Owner)?;
    }
    let user = state.auth.user(body.username.trim())?.ok_or_else(|| ApiError::not_found("user").on("username"))?;
    if orgs::membership(state.store.as_ref(), org.id, user.id)?.is_some() {
        return Err(ApiError::new(Code::AlreadyMember, format!("{} is already a member", user.username)).on("username"));
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
    Ok((StatusCode::CREATED, Json(MemberView::from(&member))))
}

fn load_member(state: &AppState, org: &Org, raw: &str) -> Result<Membership, ApiError> {
    let user_id = Uuid::try_parse(raw).map_err(|_| ApiError::not_found("member"))?;
    orgs::membership(state.store.as_ref(), org.id, user_id)?.ok_or_else(|| ApiError::not_found("member"))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRole {
    role: Role,
}

/// Changes a member's role. Touching ownership (making or unmaking an owner) needs an owner.
#[utoipa::path(patch, path = "/orgs/{id}/members/{user_id}", tag = "orgs",
    params(("id" = String, Path), ("user_id" = String, Path)), request_body = ChangeRole,
    responses((status = 200, body = MemberView)))]
async fn change_role(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, user_id)): Path<(String, String)>,
    ApiJson(body): ApiJson<ChangeRole>,
) -> Result<Json<MemberView>, ApiError> {
    let (org, role) = load(&state, &caller, &id)?;
    require(&caller, role, Role::Admin)?;
    let member = load_member(&state, &org, &user_id)?;
    if member.role == Role::Owner || body.role == Role::Owner {
        require(&caller, role, Role::Owner)?;
    }
    let changed = Membership { role: body.role, ..member };
    orgs::set_member(state.store.as_ref(), &changed)?;
    Ok(Json(MemberView::from(&changed)))
}

/// Removes a member: admins remove members below owner, owners anyone; everyone may leave.
#[utoipa::path(delete, path = "/orgs/{id}/members/{user_id}", tag = "orgs",
    params(("id" = String, Path), ("user_id" = String, Path)), responses((status = 204, description = "Removed")))]
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
