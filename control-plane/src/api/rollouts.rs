//! `POST /stacks/{id}/rollouts` and `/rollouts`: a stack version rolled out to several targets
//! as one operation, a saga whose completed parts are put back if one fails
//! (`crate::rollouts`).

use std::collections::HashSet;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::deployments::{check_platform, choose_platform, natural_platform};
use super::error::{ApiError, ApiJson, ApiQuery, Code};
use super::{AppState, Page, PageQuery, rfc3339_s};
use crate::auth::{Caller, now_unix_s};
use crate::deployments::{self, Deployment, Desired, Level, State as DeploymentState};
use crate::rollouts::{self, Before, Part, PartState, Rollout, Step};
use crate::stacks;
use crate::store::{Check, Record, Write};

/// Most targets one rollout may name.
const MAX_TARGETS: usize = 100;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(start_rollout)).routes(routes!(list_rollouts)).routes(routes!(show_rollout))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRollout {
    /// The targets (ids), each running the stack's deployment afterwards.
    targets: Vec<String>,
    /// The stack version; its current one by default.
    #[schema(minimum = 1)]
    version: Option<u32>,
}

/// One target's part of a rollout.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = RolloutPart)]
pub struct PartView {
    target_id: Uuid,
    deployment_id: Uuid,
    /// What the deployment was before: what putting it back means.
    before: Before,
    state: PartState,
    reason: Option<String>,
}

/// A rollout and where it stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct RolloutView {
    id: Uuid,
    stack_id: Uuid,
    version: u32,
    step: Step,
    /// Why it failed.
    reason: Option<String>,
    parts: Vec<PartView>,
    created_by: String,
    created_at: String,
    updated_at: String,
}

impl From<Rollout> for RolloutView {
    fn from(r: Rollout) -> Self {
        Self {
            id: r.id,
            stack_id: r.stack_id,
            version: r.version,
            step: r.step,
            reason: r.reason,
            parts: r
                .parts
                .into_iter()
                .map(|p| PartView {
                    target_id: p.target_id,
                    deployment_id: p.deployment_id,
                    before: p.before,
                    state: p.state,
                    reason: p.reason,
                })
                .collect(),
            created_by: r.created_by,
            created_at: rfc3339_s(r.created_at_unix_s),
            updated_at: rfc3339_s(r.updated_at_unix_s),
        }
    }
}

/// Rolls a stack version out to several targets as one operation. Every target is checked first
/// (found, not revoked, able to run the stack: 422 `incompatible_stack` naming the target), and
/// nothing is written unless all pass. Then the stack's deployment on each target is updated, or
/// created; once every one runs the version the rollout is `done`. If one fails, every part is
/// put back (created deployments removed, updated ones returned to the version they ran) and the
/// rollout ends `failed` with the reason. Each step is told in every part's events.
#[utoipa::path(post, path = "/stacks/{id}/rollouts", tag = "deployments", params(("id" = String, Path)),
    request_body = StartRollout,
    responses((status = 202, description = "Started", body = RolloutView),
        (status = 422, description = "A target cannot take the stack (`incompatible_stack`)", body = super::error::ErrorBody)))]
async fn start_rollout(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<StartRollout>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    let store = state.store.as_ref();
    let stack = super::stacks::load(&state, &caller, &id)?;
    if body.targets.is_empty() || body.targets.len() > MAX_TARGETS {
        return Err(ApiError::invalid("targets", format!("name between 1 and {MAX_TARGETS} targets")));
    }
    let version = body.version.unwrap_or(stack.current_version);
    let Some(stored) = stacks::version(store, stack.id, version)? else {
        return Err(ApiError::invalid("version", format!("stack version {version} does not exist")));
    };
    if rollouts::active_for(store, stack.id)?.is_some() {
        return Err(ApiError::new(Code::Conflict, "a rollout of this stack is under way"));
    }
    let parsed = stacks::parsed_of(&state.master_key, &stack, &stored).map_err(ApiError::internal)?;
    let existing_all = deployments::list_in(store, caller.org_id)?;
    let mut seen = HashSet::new();
    let now = now_unix_s();
    let (mut parts, mut checks, mut writes, mut notes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (index, raw) in body.targets.iter().enumerate() {
        let field = format!("targets[{index}]");
        let target = super::targets::load(&state, &caller, raw).map_err(|e| e.on(&field))?;
        if !seen.insert(target.id) {
            return Err(ApiError::invalid(&field, "the target is named twice"));
        }
        if target.revoked_at_unix_s.is_some() {
            return Err(ApiError::new(Code::TargetRevoked, format!("target {} is revoked", target.name)).on(&field));
        }
        let existing = existing_all
            .iter()
            .find(|d| d.stack_id == stack.id && d.target_id == target.id && d.state != DeploymentState::Removed);
        let platform = choose_platform(
            natural_platform(&parsed),
            super::targets::capabilities(&state, &target).as_deref(),
            existing,
        )
        .map_err(|e| e.on(&field))?;
        let findings = check_platform(platform, &parsed).map_err(|e| e.on(&field))?;
        let (deployment, before) = match existing {
            Some(current) => {
                let before = Before::Updated { version: current.running_version.unwrap_or(current.version) };
                checks.push(Check { table: Deployment::TABLE, key: current.key(), expected: Some(current.encode()) });
                let updated = Deployment {
                    version,
                    desired: Desired::Running,
                    generation: current.generation + 1,
                    state: DeploymentState::Pending,
                    reason: None,
                    updated_at_unix_s: now,
                    ..current.clone()
                };
                (updated, before)
            }
            None => {
                let created = Deployment::new(&stack, target.id, platform, version, &caller.username, now);
                checks.push(Check { table: Deployment::TABLE, key: created.key(), expected: None });
                (created, Before::Created)
            }
        };
        notes.extend(
            findings
                .into_iter()
                .map(|f| (deployment.id, format!("on {}, {}: {}", platform.as_str(), f.path, f.message))),
        );
        writes.push(Write { table: Deployment::TABLE, key: deployment.key(), value: Some(deployment.encode()) });
        parts.push(Part {
            target_id: target.id,
            deployment_id: deployment.id,
            before,
            state: PartState::Deploying,
            reason: None,
        });
    }
    let rollout = Rollout {
        id: Uuid::now_v7(),
        org_id: caller.org_id,
        stack_id: stack.id,
        version,
        parts,
        step: Step::Deploying,
        reason: None,
        created_by: caller.username.clone(),
        created_at_unix_s: now,
        updated_at_unix_s: now,
    };
    writes.push(Write { table: Rollout::TABLE, key: rollout.key(), value: Some(rollout.encode()) });
    // All the deployments and the rollout, or nothing.
    if !store.atomic(&checks, &writes)? {
        return Err(ApiError::new(Code::Conflict, "a deployment of the stack changed meanwhile; try again"));
    }
    let told = format!(
        "rollout: {} asked for version {version} of {} on {} targets",
        caller.username,
        stack.name,
        rollout.parts.len()
    );
    for part in &rollout.parts {
        state.reconciler.events.append(part.deployment_id, Level::Info, told.clone(), None);
    }
    for (deployment_id, note) in notes {
        state.reconciler.events.append(deployment_id, Level::Warning, note, None);
    }
    state.reconciler.wake();
    tracing::info!(rollout_id = %rollout.id, stack = %stack.name, %version, targets = rollout.parts.len(), by = %caller.username, "rollout requested");
    Ok((StatusCode::ACCEPTED, Json(rollout.into())))
}

/// The organisation's rollouts, newest first.
#[utoipa::path(get, path = "/rollouts", tag = "deployments", params(PageQuery),
    responses((status = 200, body = Page<RolloutView>)))]
async fn list_rollouts(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<RolloutView>>, ApiError> {
    let mut all = rollouts::list_in(state.store.as_ref(), caller.org_id)?;
    all.sort_by_key(|r| std::cmp::Reverse(r.id));
    Ok(Json(query.apply(all.into_iter().map(RolloutView::from).collect())?))
}

#[utoipa::path(get, path = "/rollouts/{id}", tag = "deployments", params(("id" = String, Path)),
    responses((status = 200, body = RolloutView)))]
async fn show_rollout(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, ApiError> {
    let id = Uuid::try_parse(&id).map_err(|_| ApiError::not_found("rollout"))?;
    let rollout =
        rollouts::get_in(state.store.as_ref(), caller.org_id, id)?.ok_or_else(|| ApiError::not_found("rollout"))?;
    Ok(Json(rollout.into()))
}
