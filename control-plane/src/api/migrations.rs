//! `POST /deployments/{id}/migrate/{target_id}` and `/migrations`: moving a running deployment
//! to another target, possibly another platform, as a saga (`crate::migrations`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;
use windflow_protocol::Platform;

use super::deployments::{PlatformName, check_platform, choose_platform};
use super::error::{ApiError, ApiQuery, Code};
use super::{AppState, Items, Page, PageQuery, rfc3339_s};
use crate::auth::{Caller, now_unix_s};
use crate::deployments::{self, Deployment, Desired, Level, State as DeploymentState};
use crate::migrations::{self, Migration, Step};
use crate::stacks;
use crate::store::{Record, Write};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(migrate)).routes(routes!(list_migrations)).routes(routes!(show_migration))
}

/// A migration and where it stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct MigrationView {
    id: Uuid,
    /// The deployment being moved.
    source_id: Uuid,
    /// The deployment on the destination target, made by the migration.
    destination_id: Uuid,
    remove_source: bool,
    step: Step,
    /// Why it failed, or what went wrong on the way.
    reason: Option<String>,
    created_by: String,
    created_at: String,
    updated_at: String,
}

impl From<Migration> for MigrationView {
    fn from(m: Migration) -> Self {
        Self {
            id: m.id,
            source_id: m.source_id,
            destination_id: m.destination_id,
            remove_source: m.remove_source,
            step: m.step,
            reason: m.reason,
            created_by: m.created_by,
            created_at: rfc3339_s(m.created_at_unix_s),
            updated_at: rfc3339_s(m.updated_at_unix_s),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct MigrateQuery {
    /// What runs the stack on the destination; by default what the destination is.
    #[param(inline)]
    platform: Option<PlatformName>,
    /// Remove the source once the destination runs (its named volumes are kept).
    #[serde(default)]
    remove_source: bool,
}

/// Moves a running deployment to another target: the stack is checked against the
/// destination's platform (422 `incompatible_stack` with every reason), deployed there, and once
/// it runs the source is removed if asked. If the destination fails, it is removed and the
/// source left untouched. Each step is told in both deployments' events.
#[utoipa::path(post, path = "/deployments/{id}/migrate/{target_id}", tag = "deployments",
    params(("id" = String, Path), ("target_id" = String, Path), MigrateQuery),
    responses((status = 202, description = "Started", body = MigrationView),
        (status = 422, description = "The stack cannot run on the destination (`incompatible_stack`)", body = super::error::ErrorBody)))]
async fn migrate(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, target_id)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<MigrateQuery>,
) -> Result<(StatusCode, Json<MigrationView>), ApiError> {
    let store = state.store.as_ref();
    let source = super::deployments::load(&state, &caller, &id)?;
    let target = super::targets::load(&state, &caller, &target_id)?;
    if target.revoked_at_unix_s.is_some() {
        return Err(ApiError::new(Code::TargetRevoked, "the target is revoked"));
    }
    if target.id == source.target_id {
        return Err(ApiError::invalid("target_id", "the deployment already runs on this target"));
    }
    if source.desired != Desired::Running || source.state != DeploymentState::Running {
        return Err(ApiError::new(Code::Conflict, "only a running deployment can be migrated"));
    }
    if migrations::active_for(store, source.id)?.is_some() {
        return Err(ApiError::new(Code::Conflict, "the deployment is already being migrated"));
    }
    let taken = deployments::list_in(store, caller.org_id)?
        .into_iter()
        .any(|d| d.stack_id == source.stack_id && d.target_id == target.id && d.state != DeploymentState::Removed);
    if taken {
        return Err(ApiError::new(Code::Conflict, "the stack is already deployed on that target"));
    }
    let version = source.running_version.unwrap_or(source.version);
    let stack = stacks::get(store, source.stack_id)?.ok_or_else(|| ApiError::not_found("stack"))?;
    let stored = stacks::version(store, stack.id, version)?.ok_or_else(|| ApiError::not_found("stack version"))?;
    let parsed = stacks::parsed_of(&state.master_key, &stack, &stored).map_err(ApiError::internal)?;
    let platform = choose_platform(
        query.platform.map(Platform::from).or_else(|| super::deployments::natural_platform(&parsed)),
        super::targets::capabilities(&state, &target).as_deref(),
        None,
    )?;
    let notes = check_platform(platform, &parsed)?;

    let now = now_unix_s();
    let destination = Deployment {
        id: Uuid::now_v7(),
        target_id: target.id,
        platform,
        desired: Desired::Running,
        generation: 1,
        settled_generation: 0,
        state: DeploymentState::Pending,
        reason: None,
        running_version: None,
        version,
        created_by: caller.username.clone(),
        created_at_unix_s: now,
        updated_at_unix_s: now,
        job: None,
        ..source.clone()
    };
    let migration = Migration {
        id: Uuid::now_v7(),
        org_id: caller.org_id,
        source_id: source.id,
        destination_id: destination.id,
        remove_source: query.remove_source,
        step: Step::Deploying,
        reason: None,
        created_by: caller.username.clone(),
        created_at_unix_s: now,
        updated_at_unix_s: now,
    };
    let write = |table, key, value| Write { table, key, value: Some(value) };
    let writes = [
        write(Deployment::TABLE, destination.key(), destination.encode()),
        write(Migration::TABLE, migration.key(), migration.encode()),
    ];
    if !store.atomic(&[], &writes)? {
        return Err(ApiError::new(Code::Conflict, "the store changed meanwhile; try again"));
    }
    let events = &state.reconciler.events;
    let told = format!(
        "{} asked to migrate version {version} to {} ({}){}",
        caller.username,
        target.name,
        platform.as_str(),
        if query.remove_source { ", then remove the source" } else { "" }
    );
    events.append(source.id, Level::Info, format!("migration: {told}"), None);
    events.append(destination.id, Level::Info, format!("migration: {told}; this is the destination"), None);
    for note in notes {
        let message = format!("on {}, {}: {}", platform.as_str(), note.path, note.message);
        events.append(destination.id, Level::Warning, message, None);
    }
    state.reconciler.wake();
    tracing::info!(migration_id = %migration.id, source = %source.id, destination = %destination.id, by = %caller.username, "migration requested");
    Ok((StatusCode::ACCEPTED, Json(migration.into())))
}

/// The organisation's migrations, newest first.
#[utoipa::path(get, path = "/migrations", tag = "deployments", params(PageQuery),
    responses((status = 200, body = Items<MigrationView>)))]
async fn list_migrations(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<MigrationView>>, ApiError> {
    let mut all = migrations::list_in(state.store.as_ref(), caller.org_id)?;
    all.sort_by_key(|m| std::cmp::Reverse(m.id));
    Ok(Json(query.apply(all.into_iter().map(MigrationView::from).collect())?))
}

#[utoipa::path(get, path = "/migrations/{id}", tag = "deployments", params(("id" = String, Path)),
    responses((status = 200, body = MigrationView)))]
async fn show_migration(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<MigrationView>, ApiError> {
    let id = Uuid::try_parse(&id).map_err(|_| ApiError::not_found("migration"))?;
    let migration =
        migrations::get_in(state.store.as_ref(), caller.org_id, id)?.ok_or_else(|| ApiError::not_found("migration"))?;
    Ok(Json(migration.into()))
}
