//! `/stacks`: Compose stacks and their immutable versions; `/stacks/validate` for editors.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::{ApiError, ApiJson, ApiQuery};
use super::{AppState, Page, PageQuery, rfc3339_s};
use crate::auth::Caller;
use crate::compose::Diagnostic;
use crate::stacks::{self, Saved, Stack, StackVersion};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/stacks", get(list).post(create))
        .route("/stacks/validate", post(validate))
        .route("/stacks/{id}", get(show).put(update).delete(remove))
        .route("/stacks/{id}/versions", get(versions))
        .route("/stacks/{id}/versions/{version}", get(show_version))
        .route("/stacks/{id}/clone", post(clone))
}

fn summary(stack: &Stack) -> Value {
    json!({
        "id": stack.id,
        "name": stack.name,
        "version": stack.current_version,
        "created_by": stack.created_by,
        "created_at": rfc3339_s(stack.created_at_unix_s),
        "updated_at": rfc3339_s(stack.updated_at_unix_s),
    })
}

fn version_view(version: &StackVersion) -> Value {
    json!({
        "version": version.version,
        "compose": version.compose,
        "variables": version.variables,
        "created_by": version.created_by,
        "created_at": rfc3339_s(version.created_at_unix_s),
    })
}

/// A stack with one version's Compose file, variables and service names.
fn stack_view(stack: &Stack, version: &StackVersion, spec: &windflow_protocol::StackSpec) -> Value {
    let mut view = summary(stack);
    view["compose"] = json!(version.compose);
    view["variables"] = json!(version.variables);
    view["services"] = json!(spec.services.iter().map(|s| &s.name).collect::<Vec<_>>());
    view
}

fn saved_view(saved: &Saved) -> Value {
    let mut view = stack_view(&saved.stack, &saved.version, &saved.spec);
    view["warnings"] = json!(saved.warnings);
    view
}

/// One of the caller's organisation's stacks; any other id is not found.
pub fn load(state: &AppState, caller: &Caller, raw: &str) -> Result<Stack, ApiError> {
    let id = Uuid::try_parse(raw).map_err(|_| ApiError::not_found("stack"))?;
    stacks::get_in(state.store.as_ref(), caller.org_id, id)?.ok_or_else(|| ApiError::not_found("stack"))
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<Value>>, ApiError> {
    let all = stacks::list(state.store.as_ref(), caller.org_id)?.iter().map(summary).collect();
    Ok(Json(query.apply(all)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateStack {
    name: String,
    compose: String,
    #[serde(default)]
    variables: BTreeMap<String, String>,
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateStack>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let saved = stacks::create(
        state.store.as_ref(),
        caller.org_id,
        body.name.trim(),
        &body.compose,
        body.variables,
        &caller.username,
    )?;
    tracing::info!(stack_id = %saved.stack.id, name = %saved.stack.name, by = %caller.username, "stack created");
    Ok((StatusCode::CREATED, Json(saved_view(&saved))))
}

async fn show(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let stack = load(&state, &caller, &id)?;
    let version = stacks::version(state.store.as_ref(), stack.id, stack.current_version)?
        .ok_or_else(|| ApiError::not_found("stack version"))?;
    let spec = stacks::spec_of(&stack, &version)?;
    Ok(Json(stack_view(&stack, &version, &spec)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateStack {
    name: Option<String>,
    compose: Option<String>,
    variables: Option<BTreeMap<String, String>>,
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateStack>,
) -> Result<Json<Value>, ApiError> {
    let stack = load(&state, &caller, &id)?;
    let saved = stacks::update(
        state.store.as_ref(),
        &stack,
        body.name.as_deref().map(str::trim),
        body.compose.as_deref(),
        body.variables,
        &caller.username,
    )?;
    tracing::info!(stack_id = %stack.id, version = saved.version.version, by = %caller.username, "stack updated");
    Ok(Json(saved_view(&saved)))
}

async fn remove(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let stack = load(&state, &caller, &id)?;
    let active: Vec<String> = crate::deployments::list_in(state.store.as_ref(), caller.org_id)?
        .into_iter()
        .filter(|d| d.stack_id == stack.id && d.state != crate::deployments::State::Removed)
        .map(|d| d.id.to_string())
        .collect();
    if !active.is_empty() {
        return Err(ApiError {
            details: Some(json!({ "deployments": active })),
            ..ApiError::new(StatusCode::CONFLICT, "stack_in_use", "the stack is deployed; remove its deployments first")
        });
    }
    stacks::delete(state.store.as_ref(), &stack)?;
    tracing::info!(stack_id = %stack.id, by = %caller.username, "stack deleted");
    Ok(StatusCode::NO_CONTENT)
}

async fn versions(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<Value>>, ApiError> {
    let stack = load(&state, &caller, &id)?;
    let mut all: Vec<Value> = stacks::versions(state.store.as_ref(), stack.id)?
        .iter()
        .map(|v| json!({ "version": v.version, "created_by": v.created_by, "created_at": rfc3339_s(v.created_at_unix_s) }))
        .collect();
    all.reverse();
    Ok(Json(query.apply(all)?))
}

async fn show_version(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let stack = load(&state, &caller, &id)?;
    let number: u32 = version.parse().map_err(|_| ApiError::not_found("stack version"))?;
    let version =
        stacks::version(state.store.as_ref(), stack.id, number)?.ok_or_else(|| ApiError::not_found("stack version"))?;
    Ok(Json(version_view(&version)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CloneStack {
    name: String,
}

async fn clone(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CloneStack>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let stack = load(&state, &caller, &id)?;
    let version = stacks::version(state.store.as_ref(), stack.id, stack.current_version)?
        .ok_or_else(|| ApiError::not_found("stack version"))?;
    let saved = stacks::create(
        state.store.as_ref(),
        caller.org_id,
        body.name.trim(),
        &version.compose,
        version.variables,
        &caller.username,
    )?;
    tracing::info!(from = %stack.id, stack_id = %saved.stack.id, by = %caller.username, "stack cloned");
    Ok((StatusCode::CREATED, Json(saved_view(&saved))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidateStack {
    compose: String,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    name: Option<String>,
}

/// Checks a Compose file without saving anything: every error and warning with where it is.
async fn validate(_caller: Caller, ApiJson(body): ApiJson<ValidateStack>) -> Json<Value> {
    let name = body.name.unwrap_or_else(|| "stack".into());
    match crate::compose::parse(&body.compose, &name, &body.variables) {
        Ok(parsed) => Json(json!({
            "valid": true,
            "errors": Vec::<Diagnostic>::new(),
            "warnings": parsed.warnings,
            "services": parsed.spec.services.iter().map(|s| &s.name).collect::<Vec<_>>(),
        })),
        Err(invalid) => {
            Json(json!({ "valid": false, "errors": invalid.errors, "warnings": invalid.warnings, "services": [] }))
        }
    }
}
