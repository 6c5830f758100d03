//! `/deployments` and `POST /stacks/{id}/deploy/{target_id}`: desired state in, observed state
//! and the event log out (JSON, or Server-Sent Events with `follow=true`).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;
use windflow_protocol::messages::{ContainerState, HealthState};
use windflow_protocol::{Capability, Platform};

use super::error::{ApiError, ApiJson, ApiQuery, Code};
use super::{AppState, Items, Page, PageQuery, rfc3339_ms, rfc3339_s};
use crate::auth::{Caller, now_unix_s};
use crate::deployments::{self, Deployment, Desired, Event, Level, State as DeploymentState};
use crate::stacks;
use crate::store::RecordStore;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(deploy))
        .routes(routes!(list))
        .routes(routes!(activity))
        .routes(routes!(changes))
        .routes(routes!(show, remove))
        .routes(routes!(rollback))
        .routes(routes!(scale))
        .routes(routes!(vm_action))
        .routes(routes!(events))
        .routes(routes!(logs))
}

/// One of the caller's organisation's deployments; any other id is not found.
pub(super) fn load(state: &AppState, caller: &Caller, raw: &str) -> Result<Deployment, ApiError> {
    let id = Uuid::try_parse(raw).map_err(|_| ApiError::not_found("deployment"))?;
    deployments::get_in(state.store.as_ref(), caller.org_id, id)?.ok_or_else(|| ApiError::not_found("deployment"))
}

/// A container as the agent last saw it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContainerView {
    name: String,
    id: String,
    /// `created`, `running`, `restarting`, `paused`, `exited`, `dead`, or the engine's word.
    state: String,
    exit_code: Option<i64>,
    /// `starting`, `healthy` or `unhealthy`, for services with a healthcheck.
    health: Option<&'static str>,
    restart_count: u32,
}

/// A container's state in words, and its exit code when it exited.
pub(super) fn state_and_exit(state: &ContainerState) -> (String, Option<i64>) {
    match state {
        ContainerState::Created => ("created".to_owned(), None),
        ContainerState::Running => ("running".to_owned(), None),
        ContainerState::Restarting => ("restarting".to_owned(), None),
        ContainerState::Paused => ("paused".to_owned(), None),
        ContainerState::Exited { code } => ("exited".to_owned(), Some(*code)),
        ContainerState::Dead => ("dead".to_owned(), None),
        ContainerState::Other(other) => (other.clone(), None),
    }
}

pub(super) fn health_word(health: HealthState) -> &'static str {
    match health {
        HealthState::Starting => "starting",
        HealthState::Healthy => "healthy",
        HealthState::Unhealthy => "unhealthy",
    }
}

fn container_view(c: &windflow_protocol::messages::ContainerStatus) -> ContainerView {
    let (state, exit_code) = state_and_exit(&c.state);
    let health = c.health.map(health_word);
    ContainerView { name: c.name.clone(), id: c.id.clone(), state, exit_code, health, restart_count: c.restart_count }
}

/// A service: what is desired next to what runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceView {
    name: String,
    image: String,
    desired_replicas: u32,
    containers: Vec<ContainerView>,
}

/// A deployment: a stack version on a target.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentView {
    id: Uuid,
    stack_id: Uuid,
    stack_name: Option<String>,
    target_id: Uuid,
    target_name: Option<String>,
    target_connected: bool,
    /// The Compose project name on the target.
    project: String,
    /// `docker` (the engine's containers) or `swarm` (Swarm services).
    platform: &'static str,
    /// Replicas set with `/deployments/{id}/scale`, over the stack's own.
    scale: std::collections::BTreeMap<String, u32>,
    /// The stack version that should run.
    version: u32,
    /// The version that last ran successfully.
    running_version: Option<u32>,
    /// `running` or `removed`.
    desired: &'static str,
    /// Whether removal takes the named volumes too.
    remove_volumes: Option<bool>,
    /// `pending`, `deploying`, `running`, `failed`, `removing` or `removed`.
    state: &'static str,
    reason: Option<String>,
    services: Vec<ServiceView>,
    created_by: String,
    created_at: String,
    updated_at: String,
    /// In answers to a change: the sequence number of the event that recorded it, from which
    /// `/deployments/{id}/events?after=` follows its progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    events_from: Option<u64>,
}

/// The deployment with, per service, what is desired (from the stack version) next to what the
/// agent last observed.
impl DeploymentView {
    pub(super) fn id(&self) -> Uuid {
        self.id
    }
}

pub fn view(state: &AppState, deployment: &Deployment) -> DeploymentView {
    let stack = stacks::get(state.store.as_ref(), deployment.stack_id).ok().flatten();
    let target = crate::agents::get(state.store.as_ref(), deployment.target_id).ok().flatten();
    let parsed =
        deployments::desired_spec(state.store.as_ref(), &state.master_key, deployment, deployment.version).ok();
    let observed = state.hub.observed(deployment.id);
    let removed = deployment.state == DeploymentState::Removed;
    // What should run: the stack's services, or its VMs (one each, their template as image).
    let wanted: Vec<(String, String, u32)> = parsed
        .iter()
        .flat_map(|parsed| {
            let services = parsed.spec.services.iter().map(|s| (s.name.clone(), s.image.clone(), s.replicas));
            let vms = parsed.vms.iter().map(|vm| {
                let shape =
                    format!("{} ({} CPU, {} MiB, {} GiB)", vm.template.slug(), vm.cpus, vm.memory_mib, vm.disk_gib);
                (vm.name.clone(), shape, 1)
            });
            services.chain(vms).collect::<Vec<_>>()
        })
        .collect();
    let services = wanted
        .into_iter()
        .map(|(name, image, replicas)| ServiceView {
            desired_replicas: if removed { 0 } else { replicas },
            containers: observed
                .iter()
                .flat_map(|o| o.services.iter())
                .filter(|s| s.service == name && !removed)
                .flat_map(|s| s.containers.iter().map(container_view))
                .collect(),
            name,
            image,
        })
        .collect();
    let (desired, remove_volumes) = match deployment.desired {
        Desired::Running => ("running", None),
        Desired::Removed { volumes } => ("removed", Some(volumes)),
    };
    DeploymentView {
        id: deployment.id,
        stack_id: deployment.stack_id,
        stack_name: stack.map(|s| s.name),
        target_id: deployment.target_id,
        target_name: target.map(|t| t.name),
        target_connected: state.hub.is_connected(deployment.target_id),
        project: deployment.project.clone(),
        platform: deployment.platform.as_str(),
        scale: deployment.scale.clone(),
        version: deployment.version,
        running_version: deployment.running_version,
        desired,
        remove_volumes,
        state: deployment.state.as_str(),
        reason: deployment.reason.clone(),
        services,
        created_by: deployment.created_by.clone(),
        created_at: rfc3339_s(deployment.created_at_unix_s),
        updated_at: rfc3339_s(deployment.updated_at_unix_s),
        events_from: None,
    }
}

/// Ends a change of desired state: records the request in the deployment's events, wakes the
/// reconciler, and answers 202 with the deployment and `events_from`, the sequence number of
/// that event, from which the change's progress can be followed.
pub(super) fn accepted(
    state: &AppState,
    deployment: &Deployment,
    request: String,
) -> (StatusCode, Json<DeploymentView>) {
    let events_from = state.reconciler.events.append(deployment.id, Level::Info, request, None);
    state.reconciler.wake();
    (StatusCode::ACCEPTED, Json(DeploymentView { events_from: Some(events_from), ..view(state, deployment) }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct VersionQuery {
    /// A stack version; the current one (deploy) or the previous one (rollback) when left out.
    #[param(minimum = 1)]
    version: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PlatformName {
    Docker,
    Swarm,
    Kubernetes,
    Libvirt,
}

impl From<PlatformName> for Platform {
    fn from(name: PlatformName) -> Self {
        match name {
            PlatformName::Docker => Platform::Docker,
            PlatformName::Swarm => Platform::Swarm,
            PlatformName::Kubernetes => Platform::Kubernetes,
            PlatformName::Libvirt => Platform::Libvirt,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DeployQuery {
    /// A stack version; the current one when left out.
    #[param(minimum = 1)]
    version: Option<u32>,
    /// What runs the stack on the target: `swarm` (services; the target must be a Swarm
    /// manager) or `docker` (containers). By default, what the target is. A deployment keeps
    /// the platform it was created with.
    #[param(inline)]
    platform: Option<PlatformName>,
}

/// The platform a deploy runs on: the one asked for, else the target's own; refused when the
/// target reported it cannot drive it (driver missing, no cluster access), with its reason.
/// A deployment keeps its platform. A target never seen yet gets containers, pending until it
/// connects.
pub(super) fn choose_platform(
    asked: Option<Platform>,
    capabilities: Option<&[Capability]>,
    existing: Option<&Deployment>,
) -> Result<Platform, ApiError> {
    if let Some(existing) = existing {
        return match asked {
            Some(asked) if asked != existing.platform => Err(ApiError::invalid(
                "platform",
                format!(
                    "this deployment runs on {}; remove it before deploying the stack on {}",
                    existing.platform.as_str(),
                    asked.as_str()
                ),
            )),
            _ => Ok(existing.platform),
        };
    }
    let Some(capabilities) = capabilities else { return Ok(asked.unwrap_or(Platform::Docker)) };
    let platform = match asked.or_else(|| super::targets::default_platform(capabilities)) {
        Some(platform) => platform,
        None => {
            let reasons: Vec<String> =
                capabilities.iter().map(|c| format!("{}: {}", c.platform.as_str(), c.detail)).collect();
            return Err(ApiError::new(
                Code::PlatformUnavailable,
                format!("the target can run no stacks ({})", reasons.join("; ")),
            ));
        }
    };
    match capabilities.iter().find(|c| c.platform == platform) {
        Some(c) if c.available => Ok(platform),
        found => Err(ApiError::new(
            Code::PlatformUnavailable,
            format!(
                "the target cannot run {} workloads: {}",
                platform.as_str(),
                found.map_or("its agent does not report that platform", |c| c.detail.as_str())
            ),
        )),
    }
}

/// The only platform some stacks can run on: VMs on libvirt.
pub(super) fn natural_platform(parsed: &crate::compose::Parsed) -> Option<Platform> {
    (!parsed.vms.is_empty()).then_some(Platform::Libvirt)
}

/// Refuses a stack that uses what the platform cannot do, with every finding.
pub(super) fn check_platform(
    platform: Platform,
    parsed: &crate::compose::Parsed,
) -> Result<Vec<windflow_platforms::Finding>, ApiError> {
    let findings = match platform {
        _ if !parsed.vms.is_empty() || platform == Platform::Libvirt => {
            windflow_platforms::libvirt::check(&parsed.vms, parsed.spec.services.len(), platform)
        }
        _ if parsed.helm.is_some() => windflow_platforms::kubernetes::check_helm(platform),
        Platform::Docker => return Ok(vec![]),
        Platform::Swarm => windflow_platforms::swarm::check(&parsed.spec, &parsed.swarm),
        Platform::Kubernetes | Platform::Libvirt => windflow_platforms::kubernetes::check(&parsed.spec, &parsed.swarm),
    };
    let blocking: Vec<String> =
        findings.iter().filter(|f| f.blocking).map(|f| format!("{}: {}", f.path, f.message)).collect();
    if blocking.is_empty() {
        return Ok(findings);
    }
    Err(ApiError::new(
        Code::IncompatibleStack,
        format!("the stack cannot run on {}: {}", platform.as_str(), blocking.join("; ")),
    )
    .with_details(json!({ "findings": findings })))
}

/// Deploys a stack version to a target; deploying again to the same target updates it. The
/// reconciler does the work: follow it at `/deployments/{id}/events`.
#[utoipa::path(post, path = "/stacks/{id}/deploy/{target_id}", tag = "deployments",
    params(("id" = String, Path, description = "The stack"), ("target_id" = String, Path), DeployQuery),
    responses((status = 202, description = "Accepted", body = DeploymentView),
        (status = 422, description = "The stack uses what the platform cannot do (`incompatible_stack`)", body = super::error::ErrorBody)))]
async fn deploy(
    State(state): State<AppState>,
    caller: Caller,
    Path((stack_id, target_id)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<DeployQuery>,
) -> Result<(StatusCode, Json<DeploymentView>), ApiError> {
    let stack = super::stacks::load(&state, &caller, &stack_id)?;
    let target = super::targets::load(&state, &caller, &target_id)?;
    deploy_stack(&state, &caller, &stack, &target, query.version, query.platform.map(Platform::from))
}

/// Deploys a version of `stack` (its current one by default) to `target`, on `platform` or the
/// one the target and stack call for: the body of `POST /stacks/{id}/deploy/{target_id}`, also
/// used by the marketplace's one-click deploy.
pub(super) fn deploy_stack(
    state: &AppState,
    caller: &Caller,
    stack: &crate::stacks::Stack,
    target: &crate::agents::Agent,
    version: Option<u32>,
    asked: Option<Platform>,
) -> Result<(StatusCode, Json<DeploymentView>), ApiError> {
    if target.revoked_at_unix_s.is_some() {
        return Err(ApiError::new(Code::TargetRevoked, "the target is revoked"));
    }
    let version = version.unwrap_or(stack.current_version);
    let Some(stored) = stacks::version(state.store.as_ref(), stack.id, version)? else {
        return Err(ApiError::invalid("version", format!("stack version {version} does not exist")));
    };
    let existing = deployments::list_in(state.store.as_ref(), caller.org_id)?
        .into_iter()
        .find(|d| d.stack_id == stack.id && d.target_id == target.id && d.state != DeploymentState::Removed);
    let parsed = stacks::parsed_of(&state.master_key, stack, &stored).map_err(ApiError::internal)?;
    let platform = choose_platform(
        asked.or_else(|| natural_platform(&parsed)),
        super::targets::capabilities(state, target).as_deref(),
        existing.as_ref(),
    )?;
    let notes = check_platform(platform, &parsed)?;
    let deployment = match existing {
        Some(existing) => deployments::modify(state.store.as_ref(), existing.id, |d| {
            d.version = version;
            d.desired = Desired::Running;
            d.generation += 1;
            d.state = DeploymentState::Pending;
            d.reason = None;
        })?
        .ok_or_else(|| ApiError::not_found("deployment"))?,
        None => {
            let deployment = Deployment::new(stack, target.id, platform, version, &caller.username, now_unix_s());
            use crate::store::RecordStore;
            state.store.save(&deployment)?;
            deployment
        }
    };
    let note = if state.hub.is_connected(target.id) {
        ""
    } else {
        "; the target is disconnected, so it stays pending until the target is back"
    };
    for note in notes {
        let message = format!("on {}, {}: {}", platform.as_str(), note.path, note.message);
        state.reconciler.events.append(deployment.id, Level::Warning, message, None);
    }
    tracing::info!(deployment_id = %deployment.id, stack = %stack.name, %version, target = %target.id, by = %caller.username, "deploy requested");
    Ok(accepted(state, &deployment, format!("{} asked for version {version} of {}{note}", caller.username, stack.name)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// A stack id or name.
    stack: Option<String>,
    /// A target id.
    target: Option<String>,
    #[param(value_type = Option<String>, pattern = "^(pending|deploying|running|failed|removing|removed)?$")]
    /// `pending`, `deploying`, `running`, `failed`, `removing` or `removed`.
    state: Option<String>,
    #[param(minimum = 1, maximum = 1000000)]
    page: Option<usize>,
    #[param(minimum = 1, maximum = 500)]
    per_page: Option<usize>,
}

/// The organisation's deployments, with filters.
#[utoipa::path(get, path = "/deployments", tag = "deployments", params(ListQuery),
    responses((status = 200, body = Page<DeploymentView>)))]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<DeploymentView>>, ApiError> {
    // An empty filter (as a form sends it) filters nothing.
    let query = ListQuery {
        stack: query.stack.filter(|s| !s.is_empty()),
        target: query.target.filter(|s| !s.is_empty()),
        state: query.state.filter(|s| !s.is_empty()),
        ..query
    };
    let states = ["pending", "deploying", "running", "failed", "removing", "removed"];
    if let Some(wanted) = &query.state
        && !states.contains(&wanted.as_str())
    {
        return Err(ApiError::invalid("state", format!("state must be one of {}", states.join(", "))));
    }
    // Only the matching deployments are kept, and views (with live status) are built for the
    // page only: the list includes history, which keeps growing.
    let matching = state.store.load_where(|d: &deployments::Deployment| {
        d.org_id == caller.org_id
            && query.target.as_ref().is_none_or(|t| d.target_id.to_string() == *t)
            && query.state.as_ref().is_none_or(|s| d.state.as_str() == s)
            && query
                .stack
                .as_ref()
                .is_none_or(|s| d.stack_id.to_string() == *s || stack_name(&state, d).as_deref() == Some(s))
    })?;
    let page = PageQuery { page: query.page, per_page: query.per_page }.apply(matching)?;
    let items = page.items.iter().map(|d| view(&state, d)).collect();
    Ok(Json(Page { items, total: page.total, page: page.page, per_page: page.per_page }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ActivityQuery {
    /// Days back from today (UTC), 1 to 90; 14 by default.
    #[param(minimum = 1, maximum = 90)]
    days: Option<u32>,
}

/// What the organisation's deployments did on one day (UTC).
#[derive(Debug, Serialize, ToSchema)]
pub struct ActivityDay {
    #[schema(example = "2026-11-25")]
    day: String,
    applied: u64,
    failed: u64,
    drift_repaired: u64,
    removed: u64,
}

/// Deployment outcomes per day, oldest first, for the overview's chart.
#[utoipa::path(get, path = "/deployments/activity", tag = "deployments", params(ActivityQuery),
    responses((status = 200, body = Items<ActivityDay>)))]
async fn activity(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ActivityQuery>,
) -> Result<Json<Items<ActivityDay>>, ApiError> {
    let days = query.days.unwrap_or(14);
    if !(1..=90).contains(&days) {
        return Err(ApiError::invalid("days", "days must be between 1 and 90"));
    }
    const DAY_MS: u64 = 86_400_000;
    let today = crate::hub::unix_ms() / DAY_MS;
    let first = today + 1 - u64::from(days);
    let mut buckets: Vec<ActivityDay> = (first..=today)
        .map(|day| ActivityDay {
            day: rfc3339_ms(day * DAY_MS).get(..10).unwrap_or_default().to_owned(),
            applied: 0,
            failed: 0,
            drift_repaired: 0,
            removed: 0,
        })
        .collect();
    for entry in state.audit.entries()? {
        let day = entry.at_unix_ms / DAY_MS;
        if entry.org_id != Some(caller.org_id) || day < first {
            continue;
        }
        let Some(bucket) = buckets.get_mut((day - first) as usize) else { continue };
        match entry.kind.as_str() {
            "deployment.applied" => bucket.applied += 1,
            "deployment.failed" => bucket.failed += 1,
            "deployment.drift_repaired" => bucket.drift_repaired += 1,
            "deployment.removed" => bucket.removed += 1,
            _ => {}
        }
    }
    Ok(Json(buckets.into()))
}

/// What changed in the organisation, live, for every member: `change` events (an audit entry
/// about a target or a deployment: `agent.connected`, `deployment.failed`, …) and `progress`
/// events (a step of any of its deployments, with `deployment_id`).
#[utoipa::path(get, path = "/changes", tag = "deployments",
    responses((status = 200, description = "An endless event stream", content_type = "text/event-stream", body = String)))]
async fn changes(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let org = caller.org_id;
    let audit = stream::unfold(state.audit.subscribe(), move |mut live| async move {
        loop {
            match live.recv().await {
                Ok(entry)
                    if entry.org_id == Some(org)
                        && (entry.kind.starts_with("agent.") || entry.kind.starts_with("deployment.")) =>
                {
                    let data = json!({
                        "kind": entry.kind,
                        "object": entry.object,
                        "detail": entry.detail,
                        "at": rfc3339_ms(entry.at_unix_ms),
                    });
                    return Some((
                        Ok::<_, Infallible>(SseEvent::default().event("change").data(data.to_string())),
                        live,
                    ));
                }
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(skipped)) => {
                    let marker = SseEvent::default().event("lagged").data(json!({ "skipped": skipped }).to_string());
                    return Some((Ok(marker), live));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let store = state.store.clone();
    let progress = stream::unfold(state.reconciler.events.subscribe(), move |mut live| {
        let store = store.clone();
        async move {
            loop {
                match live.recv().await {
                    Ok(event) => {
                        let ours =
                            deployments::get_in(store.as_ref(), org, event.deployment_id).ok().flatten().is_some();
                        if ours {
                            let mut data = serde_json::to_value(event_view(&event)).unwrap_or_default();
                            data["deployment_id"] = json!(event.deployment_id);
                            return Some((Ok(SseEvent::default().event("progress").data(data.to_string())), live));
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    Ok(Sse::new(crate::metrics::tracked(stream::select(audit, progress), state.hub.metrics.clone()))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn stack_name(state: &AppState, deployment: &Deployment) -> Option<String> {
    stacks::get(state.store.as_ref(), deployment.stack_id).ok().flatten().map(|s| s.name)
}

/// A deployment with its services, desired next to observed.
#[utoipa::path(get, path = "/deployments/{id}", tag = "deployments", params(("id" = String, Path)),
    responses((status = 200, body = DeploymentView)))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeploymentView>, ApiError> {
    let deployment = load(&state, &caller, &id)?;
    Ok(Json(view(&state, &deployment)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct RemoveQuery {
    /// Also remove the named volumes (their data is lost).
    #[serde(default)]
    volumes: bool,
}

/// Stops and removes the deployment's containers and networks.
#[utoipa::path(delete, path = "/deployments/{id}", tag = "deployments", params(("id" = String, Path), RemoveQuery),
    responses((status = 202, description = "Accepted", body = DeploymentView)))]
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<RemoveQuery>,
) -> Result<(StatusCode, Json<DeploymentView>), ApiError> {
    remove_deployment(&state, &caller, &id, query.volumes)
}

/// The body of `DELETE /deployments/{id}`, also a workflow's remove node.
pub(super) fn remove_deployment(
    state: &AppState,
    caller: &Caller,
    id: &str,
    volumes: bool,
) -> Result<(StatusCode, Json<DeploymentView>), ApiError> {
    let deployment = load(state, caller, id)?;
    let deployment = deployments::modify(state.store.as_ref(), deployment.id, |d| {
        d.desired = Desired::Removed { volumes };
        d.generation += 1;
        if d.state != DeploymentState::Removed {
            d.state = DeploymentState::Removing;
        }
    })?
    .ok_or_else(|| ApiError::not_found("deployment"))?;
    Ok(accepted(
        state,
        &deployment,
        format!("{} asked for removal{}", caller.username, if volumes { " with volumes" } else { "" }),
    ))
}

/// Deploys the previous version again, or version N.
#[utoipa::path(post, path = "/deployments/{id}/rollback", tag = "deployments", params(("id" = String, Path), VersionQuery),
    responses((status = 202, description = "Accepted", body = DeploymentView)))]
async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<VersionQuery>,
) -> Result<(StatusCode, Json<DeploymentView>), ApiError> {
    rollback_deployment(&state, &caller, &id, query.version)
}

/// The body of `POST /deployments/{id}/rollback`, also a workflow's rollback node.
pub(super) fn rollback_deployment(
    state: &AppState,
    caller: &Caller,
    id: &str,
    version: Option<u32>,
) -> Result<(StatusCode, Json<DeploymentView>), ApiError> {
    let deployment = load(state, caller, id)?;
    let target_version = match version {
        Some(version) => version,
        None => deployment.version.checked_sub(1).filter(|v| *v >= 1).ok_or_else(|| {
            ApiError::new(Code::NoPreviousVersion, "version 1 has no previous version; pass ?version=N")
        })?,
    };
    let stack = stacks::get(state.store.as_ref(), deployment.stack_id)?.ok_or_else(|| ApiError::not_found("stack"))?;
    let Some(stored) = stacks::version(state.store.as_ref(), stack.id, target_version)? else {
        return Err(ApiError::invalid("version", format!("stack version {target_version} does not exist")));
    };
    let parsed = stacks::parsed_of(&state.master_key, &stack, &stored).map_err(ApiError::internal)?;
    check_platform(deployment.platform, &parsed)?;
    let deployment = deployments::modify(state.store.as_ref(), deployment.id, |d| {
        d.version = target_version;
        d.desired = Desired::Running;
        d.generation += 1;
        d.state = DeploymentState::Pending;
        d.reason = None;
    })?
    .ok_or_else(|| ApiError::not_found("deployment"))?;
    Ok(accepted(state, &deployment, format!("{} asked to roll back to version {target_version}", caller.username)))
}

/// Most replicas one service may be scaled to.
const MAX_REPLICAS: u32 = 1000;

/// What can be done to one VM of a libvirt deployment.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
enum VmActionName {
    Start,
    /// An ACPI shutdown: the guest stops itself.
    Stop,
    Reboot,
    /// Pulls the plug.
    PowerOff,
}

/// How long a VM action may take on the agent.
const VM_ACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts, stops, reboots or powers off one VM of a libvirt deployment, now, and answers with
/// the deployment as it is after. A VM stopped this way stays stopped (it is not drift).
#[utoipa::path(post, path = "/deployments/{id}/vms/{vm}/{action}", tag = "deployments",
    params(("id" = String, Path), ("vm" = String, Path), ("action" = inline(VmActionName), Path, description = "start, stop, reboot or power-off")),
    responses((status = 200, body = DeploymentView),
        (status = 422, description = "Not a VM deployment, or no such VM", body = super::error::ErrorBody)))]
async fn vm_action(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, vm, action)): Path<(String, String, String)>,
) -> Result<Json<DeploymentView>, ApiError> {
    let deployment = load(&state, &caller, &id)?;
    let action: VmActionName = serde_json::from_value(json!(action))
        .map_err(|_| ApiError::invalid("action", "the action is start, stop, reboot or power-off"))?;
    if deployment.platform != Platform::Libvirt {
        return Err(ApiError::invalid("vm", "only the deployments of a libvirt target have VMs"));
    }
    let parsed = deployments::desired_spec(state.store.as_ref(), &state.master_key, &deployment, deployment.version)
        .map_err(ApiError::internal)?;
    if !parsed.vms.iter().any(|v| v.name == vm) {
        return Err(ApiError::invalid("vm", format!("the stack has no VM {vm:?}")));
    }
    let agent_action = match action {
        VmActionName::Start => windflow_protocol::VmAction::Start,
        VmActionName::Stop => windflow_protocol::VmAction::Stop,
        VmActionName::Reboot => windflow_protocol::VmAction::Reboot,
        VmActionName::PowerOff => windflow_protocol::VmAction::PowerOff,
    };
    let payload = windflow_protocol::JobPayload::VmAction {
        project: deployment.project.clone(),
        vm: vm.clone(),
        action: agent_action,
    };
    let outcome = state.hub.run_job(deployment.target_id, payload, VM_ACTION_TIMEOUT).await?;
    let word = serde_json::to_value(action).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    match outcome {
        windflow_protocol::JobOutcome::Succeeded(output) => {
            if let windflow_protocol::JobOutput::Stack(status) = output {
                state.hub.record_observed(status);
            }
            let said = format!("{vm}: {word} by {}", caller.username);
            state.reconciler.events.append(deployment.id, Level::Info, said, None);
            Ok(Json(view(&state, &deployment)))
        }
        windflow_protocol::JobOutcome::Failed { message } => {
            Err(ApiError::new(Code::JobFailed, format!("{vm}: {word} failed: {message}")))
        }
    }
}

/// How many replicas of one service should run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"service": "web", "replicas": 3}))]
struct ScaleRequest {
    service: String,
    #[schema(maximum = 1000)]
    replicas: u32,
}

/// Sets how many replicas of a service run, over the stack's `deploy.replicas`; it stays set
/// across later deploys of the deployment. 0 stops the service without removing it.
#[utoipa::path(post, path = "/deployments/{id}/scale", tag = "deployments", params(("id" = String, Path)),
    request_body = ScaleRequest, responses((status = 202, description = "Accepted", body = DeploymentView)))]
async fn scale(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ScaleRequest>,
) -> Result<(StatusCode, Json<DeploymentView>), ApiError> {
    scale_deployment(&state, &caller, &id, &request.service, request.replicas)
}

/// The body of `POST /deployments/{id}/scale`, also a workflow's scale node.
pub(super) fn scale_deployment(
    state: &AppState,
    caller: &Caller,
    id: &str,
    service: &str,
    replicas: u32,
) -> Result<(StatusCode, Json<DeploymentView>), ApiError> {
    let deployment = load(state, caller, id)?;
    if deployment.desired != Desired::Running {
        return Err(ApiError::new(Code::Conflict, "the deployment is being removed or was removed"));
    }
    if replicas > MAX_REPLICAS {
        return Err(ApiError::invalid("replicas", format!("at most {MAX_REPLICAS} replicas")));
    }
    let crate::compose::Parsed { spec, swarm, .. } =
        deployments::desired_spec(state.store.as_ref(), &state.master_key, &deployment, deployment.version)
            .map_err(ApiError::internal)?;
    if !spec.services.iter().any(|s| s.name == service) {
        return Err(ApiError::invalid("service", format!("the stack has no service {service:?}")));
    }
    if deployment.platform == Platform::Swarm && swarm.services.get(service).is_some_and(|s| s.global) {
        return Err(ApiError::invalid("service", "a global service runs one task per node; it cannot be scaled"));
    }
    let deployment = deployments::modify(state.store.as_ref(), deployment.id, |d| {
        d.scale.insert(service.to_owned(), replicas);
        d.generation += 1;
        d.state = DeploymentState::Pending;
        d.reason = None;
    })?
    .ok_or_else(|| ApiError::not_found("deployment"))?;
    Ok(accepted(state, &deployment, format!("{} scaled {service} to {replicas} replicas", caller.username)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Only events after this sequence number.
    #[serde(default)]
    after: u64,
    /// Answer Server-Sent Events: the history, then new events as they happen.
    #[serde(default)]
    follow: bool,
}

/// A step of a deployment's history: progress, a drift repair, a failure.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    seq: u64,
    at: String,
    level: Level,
    message: String,
    /// Progress of the operation, 0 to 100, when known.
    percent: Option<u8>,
    /// On the event that ends an operation: the state it ended in.
    outcome: Option<&'static str>,
}

fn event_view(event: &Event) -> EventView {
    EventView {
        seq: event.seq,
        at: rfc3339_ms(event.at_unix_ms),
        level: event.level,
        message: event.message.clone(),
        percent: event.percent,
        outcome: event.outcome.map(DeploymentState::as_str),
    }
}

fn event_json(event: &Event) -> String {
    serde_json::to_string(&event_view(event)).unwrap_or_default()
}

/// The deployment's event log as JSON, or with `follow=true` as Server-Sent Events
/// (`deployment` events carrying an `EventView`; `lagged` when this follower fell behind).
#[utoipa::path(get, path = "/deployments/{id}/events", tag = "deployments", params(("id" = String, Path), EventsQuery),
    responses((status = 200, description = "The events; `text/event-stream` with follow=true",
        content((Items<EventView> = "application/json"), (String = "text/event-stream")))))]
async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    let deployment = load(&state, &caller, &id)?;
    let events = state.reconciler.events.clone();
    if !query.follow {
        let history: Vec<EventView> = events.history(deployment.id, query.after)?.iter().map(event_view).collect();
        return Ok(Json(Items::from(history)).into_response());
    }
    // Subscribe before reading history, then skip what history already had: no gap, no repeat.
    let live = events.subscribe();
    let history = events.history(deployment.id, query.after)?;
    let last = history.last().map_or(query.after, |e| e.seq);
    let id = deployment.id;
    let past = stream::iter(history.into_iter().map(|e| Ok::<_, Infallible>(sse(&e))));
    let future = stream::unfold((live, last), move |(mut live, mut last)| async move {
        loop {
            match live.recv().await {
                Ok(event) if event.deployment_id == id && event.seq > last => {
                    last = event.seq;
                    return Some((Ok(sse(&event)), (live, last)));
                }
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(skipped)) => {
                    let marker = SseEvent::default().event("lagged").data(json!({ "skipped": skipped }).to_string());
                    return Some((Ok(marker), (live, last)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(crate::metrics::tracked(past.chain(future), state.hub.metrics.clone()))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn sse(event: &Event) -> SseEvent {
    SseEvent::default().event("deployment").id(event.seq.to_string()).data(event_json(event))
}

/// Most lines sent in one `logs` event.
const LOG_BATCH: usize = 512;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LogsQuery {
    /// One service only.
    service: Option<String>,
    /// The last N lines (1,000 by default; 100 before following).
    tail: Option<u32>,
    /// Only lines from this time: Unix seconds or RFC 3339.
    since: Option<String>,
    /// Include each line's time (the default).
    #[serde(default = "yes")]
    timestamps: bool,
    /// Answer Server-Sent Events: the tail, then new lines as they come.
    #[serde(default)]
    follow: bool,
}

fn yes() -> bool {
    true
}

fn line_json(line: &crate::logs::LogLine, timestamps: bool) -> String {
    serde_json::to_string(&line_view(line, timestamps)).unwrap_or_default()
}

fn parse_since(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .or_else(|| {
            time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
                .ok()
                .map(|t| t.unix_timestamp())
        })
        .ok_or_else(|| ApiError::invalid("since", "since must be Unix seconds or an RFC 3339 time"))
}

/// One line of a container's output.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogLineView {
    service: String,
    container: String,
    /// `stdout` or `stderr`.
    stream: &'static str,
    line: String,
    /// When the container wrote it (unless `timestamps=false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    at: Option<String>,
}

fn line_view(line: &crate::logs::LogLine, timestamps: bool) -> LogLineView {
    LogLineView {
        service: line.service.clone(),
        container: line.container.clone(),
        stream: match line.stream {
            windflow_protocol::messages::LogStream::Stdout => "stdout",
            windflow_protocol::messages::LogStream::Stderr => "stderr",
        },
        line: line.text.clone(),
        at: timestamps.then(|| rfc3339_ms(line.at_unix_ms)),
    }
}

/// Where a deployment's logs come from: all its services, or one.
pub(super) fn log_source(deployment: &Deployment, service: Option<String>) -> crate::logs::Source {
    crate::logs::Source {
        deployment_id: deployment.id,
        target_id: deployment.target_id,
        project: deployment.project.clone(),
        platform: deployment.platform,
        service,
    }
}

/// Logs of a deployment's containers: the last lines as JSON, or with `follow=true` those
/// lines and then new ones as Server-Sent Events: `log` (one `LogLineView`), `logs` (an array
/// of lines that were waiting together), and `skipped` when this follower fell behind.
#[utoipa::path(get, path = "/deployments/{id}/logs", tag = "deployments", params(("id" = String, Path), LogsQuery),
    responses((status = 200, description = "The lines; `text/event-stream` with follow=true",
        content((Items<LogLineView> = "application/json"), (String = "text/event-stream")))))]
async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    let deployment = load(&state, &caller, &id)?;
    let since = query.since.as_deref().map(parse_since).transpose()?;
    if let Some(service) = &query.service {
        let known = stacks::get(state.store.as_ref(), deployment.stack_id)?
            .and_then(|stack| {
                stacks::version(state.store.as_ref(), stack.id, deployment.version).ok().flatten().map(|v| (stack, v))
            })
            .and_then(|(stack, version)| stacks::parsed_of(&state.master_key, &stack, &version).ok())
            .is_some_and(|parsed| {
                parsed.spec.services.iter().any(|s| &s.name == service)
                    || parsed.vms.iter().any(|vm| &vm.name == service)
            });
        if !known {
            return Err(ApiError::invalid("service", format!("the deployment has no service {service:?}")));
        }
    }
    let source = log_source(&deployment, query.service.clone());
    let timestamps = query.timestamps;
    if !query.follow {
        let lines = state.logs.fetch(&source, Some(query.tail.unwrap_or(1000)), since).await?;
        let lines: Vec<LogLineView> = lines.iter().map(|l| line_view(l, timestamps)).collect();
        return Ok(Json(Items::from(lines)).into_response());
    }
    // Subscribe first, then read the tail: a line may show twice, none goes missing.
    let live = state.logs.follow(&source).await?;
    let history = state.logs.fetch(&source, Some(query.tail.unwrap_or(100)), since).await?;
    let past = stream::iter(
        history
            .into_iter()
            .map(move |l| Ok::<_, Infallible>(SseEvent::default().event("log").data(line_json(&l, timestamps)))),
    );
    let future = stream::unfold(live, move |mut live| async move {
        match live.recv().await {
            Ok(line) => {
                // Lines already waiting go out together, as one `logs` event: a busy service
                // costs a follower one event per batch, not one per line.
                let mut batch = vec![line_view(&line, timestamps)];
                while batch.len() < LOG_BATCH {
                    match live.try_recv() {
                        Ok(line) => batch.push(line_view(&line, timestamps)),
                        Err(_) => break,
                    }
                }
                let event = match batch.as_slice() {
                    [one] => SseEvent::default().event("log").data(serde_json::to_string(one).unwrap_or_default()),
                    _ => SseEvent::default().event("logs").data(serde_json::to_string(&batch).unwrap_or_default()),
                };
                Some((Ok(event), live))
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(skipped)) => {
                Some((Ok(SseEvent::default().event("skipped").data(json!({ "skipped": skipped }).to_string())), live))
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    });
    Ok(Sse::new(crate::metrics::tracked(past.chain(future), state.hub.metrics.clone()))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
