//! `/deployments` and `POST /stacks/{id}/deploy/{target_id}`: desired state in, observed state
//! and the event log out (JSON, or Server-Sent Events with `follow=true`).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;
use windflow_protocol::messages::{ContainerState, HealthState};

use super::error::{ApiError, ApiQuery};
use super::{AppState, Page, PageQuery, rfc3339_ms, rfc3339_s};
use crate::auth::{Caller, now_unix_s};
use crate::deployments::{self, Deployment, Desired, Event, Level, State as DeploymentState};
use crate::stacks;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/stacks/{id}/deploy/{target_id}", post(deploy))
        .route("/deployments", get(list))
        .route("/deployments/{id}", get(show).delete(remove))
        .route("/deployments/{id}/rollback", post(rollback))
        .route("/deployments/{id}/events", get(events))
        .route("/deployments/{id}/logs", get(logs))
}

/// One of the caller's organisation's deployments; any other id is not found.
fn load(state: &AppState, caller: &Caller, raw: &str) -> Result<Deployment, ApiError> {
    let id = Uuid::try_parse(raw).map_err(|_| ApiError::not_found("deployment"))?;
    deployments::get_in(state.store.as_ref(), caller.org_id, id)?.ok_or_else(|| ApiError::not_found("deployment"))
}

fn container_view(c: &windflow_protocol::messages::ContainerStatus) -> Value {
    let (state, exit_code) = match &c.state {
        ContainerState::Created => ("created".to_owned(), None),
        ContainerState::Running => ("running".to_owned(), None),
        ContainerState::Restarting => ("restarting".to_owned(), None),
        ContainerState::Paused => ("paused".to_owned(), None),
        ContainerState::Exited { code } => ("exited".to_owned(), Some(*code)),
        ContainerState::Dead => ("dead".to_owned(), None),
        ContainerState::Other(other) => (other.clone(), None),
    };
    let health = c.health.map(|h| match h {
        HealthState::Starting => "starting",
        HealthState::Healthy => "healthy",
        HealthState::Unhealthy => "unhealthy",
    });
    json!({ "name": c.name, "id": c.id, "state": state, "exit_code": exit_code, "health": health, "restart_count": c.restart_count })
}

/// The deployment with, per service, what is desired (from the stack version) next to what the
/// agent last observed.
pub fn view(state: &AppState, deployment: &Deployment) -> Value {
    let stack = stacks::get(state.store.as_ref(), deployment.stack_id).ok().flatten();
    let target = crate::agents::get(state.store.as_ref(), deployment.target_id).ok().flatten();
    let spec = stack.as_ref().and_then(|stack| {
        let version = stacks::version(state.store.as_ref(), stack.id, deployment.version).ok().flatten()?;
        stacks::spec_of(stack, &version).ok()
    });
    let observed = state.hub.observed(deployment.id);
    let removed = deployment.state == DeploymentState::Removed;
    let services: Vec<Value> = spec
        .iter()
        .flat_map(|spec| spec.services.iter())
        .map(|service| {
            let containers: Vec<Value> = observed
                .iter()
                .flat_map(|o| o.services.iter())
                .filter(|s| s.service == service.name && !removed)
                .flat_map(|s| s.containers.iter().map(container_view))
                .collect();
            json!({
                "name": service.name,
                "image": service.image,
                "desired_replicas": if removed { 0 } else { service.replicas },
                "containers": containers,
            })
        })
        .collect();
    let (desired, remove_volumes) = match deployment.desired {
        Desired::Running => ("running", None),
        Desired::Removed { volumes } => ("removed", Some(volumes)),
    };
    json!({
        "id": deployment.id,
        "stack_id": deployment.stack_id,
        "stack_name": stack.map(|s| s.name),
        "target_id": deployment.target_id,
        "target_name": target.map(|t| t.name),
        "target_connected": state.hub.is_connected(deployment.target_id),
        "project": deployment.project,
        "version": deployment.version,
        "running_version": deployment.running_version,
        "desired": desired,
        "remove_volumes": remove_volumes,
        "state": deployment.state.as_str(),
        "reason": deployment.reason,
        "services": services,
        "created_by": deployment.created_by,
        "created_at": rfc3339_s(deployment.created_at_unix_s),
        "updated_at": rfc3339_s(deployment.updated_at_unix_s),
    })
}

/// Ends a change of desired state: records the request in the deployment's events, wakes the
/// reconciler, and answers 202 with the deployment and `events_from`, the sequence number of
/// that event, from which the change's progress can be followed.
fn accepted(state: &AppState, deployment: &Deployment, request: String) -> (StatusCode, Json<Value>) {
    let events_from = state.reconciler.events.append(deployment.id, Level::Info, request, None);
    state.reconciler.wake();
    let mut view = view(state, deployment);
    view["events_from"] = json!(events_from);
    (StatusCode::ACCEPTED, Json(view))
}

#[derive(Debug, Deserialize)]
struct VersionQuery {
    version: Option<u32>,
}

async fn deploy(
    State(state): State<AppState>,
    caller: Caller,
    Path((stack_id, target_id)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<VersionQuery>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let stack = super::stacks::load(&state, &caller, &stack_id)?;
    let target = super::targets::load(&state, &caller, &target_id)?;
    if target.revoked_at_unix_s.is_some() {
        return Err(ApiError::new(StatusCode::CONFLICT, "target_revoked", "the target is revoked"));
    }
    let version = query.version.unwrap_or(stack.current_version);
    if stacks::version(state.store.as_ref(), stack.id, version)?.is_none() {
        return Err(ApiError::invalid("version", format!("stack version {version} does not exist")));
    }
    let existing = deployments::list_in(state.store.as_ref(), caller.org_id)?
        .into_iter()
        .find(|d| d.stack_id == stack.id && d.target_id == target.id && d.state != DeploymentState::Removed);
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
            let now = now_unix_s();
            let deployment = Deployment {
                id: Uuid::now_v7(),
                org_id: stack.org_id,
                stack_id: stack.id,
                target_id: target.id,
                project: crate::compose::project_name(&stack.name),
                version,
                desired: Desired::Running,
                generation: 1,
                settled_generation: 0,
                state: DeploymentState::Pending,
                reason: None,
                running_version: None,
                created_by: caller.username.clone(),
                created_at_unix_s: now,
                updated_at_unix_s: now,
            };
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
    tracing::info!(deployment_id = %deployment.id, stack = %stack.name, %version, target = %target.id, by = %caller.username, "deploy requested");
    Ok(accepted(
        &state,
        &deployment,
        format!("{} asked for version {version} of {}{note}", caller.username, stack.name),
    ))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    stack: Option<String>,
    target: Option<String>,
    state: Option<String>,
    page: Option<usize>,
    per_page: Option<usize>,
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<Value>>, ApiError> {
    let states = ["pending", "deploying", "running", "failed", "removing", "removed"];
    if let Some(wanted) = &query.state
        && !states.contains(&wanted.as_str())
    {
        return Err(ApiError::invalid("state", format!("state must be one of {}", states.join(", "))));
    }
    let all = deployments::list_in(state.store.as_ref(), caller.org_id)?
        .into_iter()
        .filter(|d| {
            query
                .stack
                .as_ref()
                .is_none_or(|s| d.stack_id.to_string() == *s || stack_name(&state, d).as_deref() == Some(s))
        })
        .filter(|d| query.target.as_ref().is_none_or(|t| d.target_id.to_string() == *t))
        .filter(|d| query.state.as_ref().is_none_or(|s| d.state.as_str() == s))
        .map(|d| view(&state, &d))
        .collect();
    Ok(Json(PageQuery { page: query.page, per_page: query.per_page }.apply(all)?))
}

fn stack_name(state: &AppState, deployment: &Deployment) -> Option<String> {
    stacks::get(state.store.as_ref(), deployment.stack_id).ok().flatten().map(|s| s.name)
}

async fn show(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let deployment = load(&state, &caller, &id)?;
    Ok(Json(view(&state, &deployment)))
}

#[derive(Debug, Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    volumes: bool,
}

async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<RemoveQuery>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let deployment = load(&state, &caller, &id)?;
    let deployment = deployments::modify(state.store.as_ref(), deployment.id, |d| {
        d.desired = Desired::Removed { volumes: query.volumes };
        d.generation += 1;
        if d.state != DeploymentState::Removed {
            d.state = DeploymentState::Removing;
        }
    })?
    .ok_or_else(|| ApiError::not_found("deployment"))?;
    Ok(accepted(
        &state,
        &deployment,
        format!("{} asked for removal{}", caller.username, if query.volumes { " with volumes" } else { "" }),
    ))
}

async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<VersionQuery>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let deployment = load(&state, &caller, &id)?;
    let target_version = match query.version {
        Some(version) => version,
        None => deployment.version.checked_sub(1).filter(|v| *v >= 1).ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "no_previous_version",
                "version 1 has no previous version; pass ?version=N",
            )
        })?,
    };
    if stacks::version(state.store.as_ref(), deployment.stack_id, target_version)?.is_none() {
        return Err(ApiError::invalid("version", format!("stack version {target_version} does not exist")));
    }
    let deployment = deployments::modify(state.store.as_ref(), deployment.id, |d| {
        d.version = target_version;
        d.desired = Desired::Running;
        d.generation += 1;
        d.state = DeploymentState::Pending;
        d.reason = None;
    })?
    .ok_or_else(|| ApiError::not_found("deployment"))?;
    Ok(accepted(&state, &deployment, format!("{} asked to roll back to version {target_version}", caller.username)))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    follow: bool,
}

fn event_json(event: &Event) -> Value {
    json!({
        "seq": event.seq,
        "at": rfc3339_ms(event.at_unix_ms),
        "level": event.level,
        "message": event.message,
        "percent": event.percent,
        "outcome": event.outcome.map(DeploymentState::as_str),
    })
}

async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    let deployment = load(&state, &caller, &id)?;
    let events = state.reconciler.events.clone();
    if !query.follow {
        let history: Vec<Value> = events.history(deployment.id, query.after)?.iter().map(event_json).collect();
        return Ok(Json(json!({ "items": history })).into_response());
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
    SseEvent::default().event("deployment").id(event.seq.to_string()).data(event_json(event).to_string())
}

/// Most lines sent in one `logs` event.
const LOG_BATCH: usize = 512;

#[derive(Debug, Deserialize)]
struct LogsQuery {
    service: Option<String>,
    tail: Option<u32>,
    /// Unix seconds or RFC 3339.
    since: Option<String>,
    #[serde(default = "yes")]
    timestamps: bool,
    #[serde(default)]
    follow: bool,
}

fn yes() -> bool {
    true
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

fn line_json(line: &crate::logs::LogLine, timestamps: bool) -> Value {
    let mut value = json!({
        "service": line.service,
        "container": line.container,
        "stream": match line.stream { windflow_protocol::messages::LogStream::Stdout => "stdout", windflow_protocol::messages::LogStream::Stderr => "stderr" },
        "line": line.text,
    });
    if timestamps {
        value["at"] = json!(rfc3339_ms(line.at_unix_ms));
    }
    value
}

/// Logs of a deployment's containers: the last lines as JSON, or with `follow=true` those
/// lines and then new ones as Server-Sent Events: `log` (one line), `logs` (an array of lines
/// that were waiting together), and `skipped` when this follower fell behind.
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
            .and_then(|(stack, version)| stacks::spec_of(&stack, &version).ok())
            .is_some_and(|spec| spec.services.iter().any(|s| &s.name == service));
        if !known {
            return Err(ApiError::invalid("service", format!("the deployment has no service {service:?}")));
        }
    }
    let source = crate::logs::Source {
        deployment_id: deployment.id,
        target_id: deployment.target_id,
        project: deployment.project.clone(),
        service: query.service.clone(),
    };
    let timestamps = query.timestamps;
    if !query.follow {
        let lines = state.logs.fetch(&source, Some(query.tail.unwrap_or(1000)), since).await?;
        return Ok(Json(json!({ "items": lines.iter().map(|l| line_json(l, timestamps)).collect::<Vec<_>>() }))
            .into_response());
    }
    // Subscribe first, then read the tail: a line may show twice, none goes missing.
    let live = state.logs.follow(&source).await?;
    let history = state.logs.fetch(&source, Some(query.tail.unwrap_or(100)), since).await?;
    let past = stream::iter(history.into_iter().map(move |l| {
        Ok::<_, Infallible>(SseEvent::default().event("log").data(line_json(&l, timestamps).to_string()))
    }));
    let future = stream::unfold(live, move |mut live| async move {
        match live.recv().await {
            Ok(line) => {
                // Lines already waiting go out together, as one `logs` event: a busy service
                // costs a follower one event per batch, not one per line.
                let mut batch = vec![line_json(&line, timestamps)];
                while batch.len() < LOG_BATCH {
                    match live.try_recv() {
                        Ok(line) => batch.push(line_json(&line, timestamps)),
                        Err(_) => break,
                    }
                }
                let event = match batch.len() {
                    1 => SseEvent::default().event("log").data(batch[0].to_string()),
                    _ => SseEvent::default().event("logs").data(Value::Array(batch).to_string()),
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
