//! `/stacks`: Compose stacks and their immutable versions; `/stacks/validate` for editors.
//! Secret variables are write-only: answers name them, never show their values.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{ApiError, ApiJson, ApiQuery, Code};
use super::{AppState, Page, PageQuery, rfc3339_s};
use crate::auth::Caller;
use crate::compose::Diagnostic;
use crate::stacks::{self, Content, Saved, Stack, StackVersion};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(validate))
        .routes(routes!(show, update, remove))
        .routes(routes!(versions))
        .routes(routes!(show_version))
        .routes(routes!(render))
        .routes(routes!(analyze))
        .routes(routes!(clone))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StackSummary {
    id: Uuid,
    name: String,
    /// The current version.
    version: u32,
    created_by: String,
    created_at: String,
    updated_at: String,
}

impl From<&Stack> for StackSummary {
    fn from(stack: &Stack) -> Self {
        Self {
            id: stack.id,
            name: stack.name.clone(),
            version: stack.current_version,
            created_by: stack.created_by.clone(),
            created_at: rfc3339_s(stack.created_at_unix_s),
            updated_at: rfc3339_s(stack.updated_at_unix_s),
        }
    }
}

/// A stack with its current version's Compose file, variables and services.
#[derive(Debug, Serialize, ToSchema)]
pub struct StackView {
    #[serde(flatten)]
    summary: StackSummary,
    compose: String,
    variables: BTreeMap<String, String>,
    /// The names of the secret variables (their values are never shown).
    secrets: Vec<String>,
    /// Service names, in the order they start.
    services: Vec<String>,
    /// Keys WindFlow does not apply (only in the answer that saved a version).
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<Vec<Diagnostic>>,
}

/// One saved version.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionView {
    version: u32,
    compose: String,
    variables: BTreeMap<String, String>,
    secrets: Vec<String>,
    created_by: String,
    created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionSummary {
    version: u32,
    created_by: String,
    created_at: String,
}

fn view(stack: &Stack, version: &StackVersion, services: Vec<String>, warnings: Option<Vec<Diagnostic>>) -> StackView {
    StackView {
        summary: stack.into(),
        compose: version.compose.clone(),
        variables: version.variables.clone(),
        secrets: version.secrets.keys().cloned().collect(),
        services,
        warnings,
    }
}

fn saved_view(saved: Saved) -> StackView {
    let services = saved.spec.services.into_iter().map(|s| s.name).collect();
    view(&saved.stack, &saved.version, services, Some(saved.warnings))
}

/// One of the caller's organisation's stacks; any other id is not found.
pub fn load(state: &AppState, caller: &Caller, raw: &str) -> Result<Stack, ApiError> {
    let id = Uuid::try_parse(raw).map_err(|_| ApiError::not_found("stack"))?;
    stacks::get_in(state.store.as_ref(), caller.org_id, id)?.ok_or_else(|| ApiError::not_found("stack"))
}

fn current_version(state: &AppState, stack: &Stack) -> Result<StackVersion, ApiError> {
    stacks::version(state.store.as_ref(), stack.id, stack.current_version)?
        .ok_or_else(|| ApiError::not_found("stack version"))
}

/// The organisation's stacks.
#[utoipa::path(get, path = "/stacks", tag = "stacks", params(PageQuery),
    responses((status = 200, body = Page<StackSummary>)))]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<StackSummary>>, ApiError> {
    let all = stacks::list(state.store.as_ref(), caller.org_id)?.iter().map(StackSummary::from).collect();
    Ok(Json(query.apply(all)?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "blog",
    "compose": "services:\n  db:\n    image: mysql:8.4\n    environment:\n      MYSQL_ROOT_PASSWORD: ${DB_PASSWORD}\n  web:\n    image: wordpress:6.6\n    ports: [\"8080:80\"]\n    depends_on: [db]\n",
    "variables": {"TAG": "6.6"},
    "secrets": {"DB_PASSWORD": "s3cret-value"}
}))]
pub struct CreateStack {
    /// 1 to 64 characters, unique in the organisation.
    #[schema(min_length = 1, max_length = 64, pattern = r"\S")]
    name: String,
    /// Compose YAML, 1 MiB at most.
    compose: String,
    /// Values for `${NAME}` in the Compose file.
    #[serde(default)]
    variables: BTreeMap<String, String>,
    /// Like `variables`, but sealed at rest and never shown again.
    #[serde(default)]
    secrets: BTreeMap<String, String>,
}

/// Saves a new stack as version 1, if its Compose file validates.
#[utoipa::path(post, path = "/stacks", tag = "stacks", request_body = CreateStack,
    responses((status = 201, description = "Created", body = StackView)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateStack>,
) -> Result<(StatusCode, Json<StackView>), ApiError> {
    let content = Content { compose: body.compose, variables: body.variables, secrets: body.secrets };
    let saved = stacks::create(
        state.store.as_ref(),
        &state.master_key,
        caller.org_id,
        body.name.trim(),
        content,
        &caller.username,
    )?;
    tracing::info!(stack_id = %saved.stack.id, name = %saved.stack.name, by = %caller.username, "stack created");
    Ok((StatusCode::CREATED, Json(saved_view(saved))))
}

/// A stack with its current version.
#[utoipa::path(get, path = "/stacks/{id}", tag = "stacks", params(("id" = String, Path)),
    responses((status = 200, body = StackView)))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<StackView>, ApiError> {
    let stack = load(&state, &caller, &id)?;
    let version = current_version(&state, &stack)?;
    let spec = stacks::spec_of(&state.master_key, &stack, &version)?;
    Ok(Json(view(&stack, &version, spec.services.into_iter().map(|s| s.name).collect(), None)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateStack {
    #[schema(min_length = 1, max_length = 64, pattern = r"\S")]
    name: Option<String>,
    /// The new Compose file; the current one when left out.
    compose: Option<String>,
    /// Replaces every variable; the current ones when left out.
    variables: Option<BTreeMap<String, String>>,
    /// Changes to secrets, one by one: a value sets one, `null` removes one; secrets left out
    /// keep their values.
    secrets: Option<BTreeMap<String, Option<String>>>,
}

/// Saves a new version (and optionally a new name), if it validates.
#[utoipa::path(put, path = "/stacks/{id}", tag = "stacks", params(("id" = String, Path)), request_body = UpdateStack,
    responses((status = 200, description = "The new version", body = StackView)))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateStack>,
) -> Result<Json<StackView>, ApiError> {
    let stack = load(&state, &caller, &id)?;
    let mut content = stacks::content_of(&state.master_key, &current_version(&state, &stack)?)?;
    if let Some(compose) = body.compose {
        content.compose = compose;
    }
    if let Some(variables) = body.variables {
        content.variables = variables;
    }
    for (name, value) in body.secrets.unwrap_or_default() {
        match value {
            Some(value) => content.secrets.insert(name, value),
            None => content.secrets.remove(&name),
        };
    }
    let name = body.name.as_deref().map(str::trim);
    let saved = stacks::update(state.store.as_ref(), &state.master_key, &stack, name, content, &caller.username)?;
    tracing::info!(stack_id = %stack.id, version = saved.version.version, by = %caller.username, "stack updated");
    Ok(Json(saved_view(saved)))
}

/// Deletes a stack and every version of it; refused while it is deployed.
#[utoipa::path(delete, path = "/stacks/{id}", tag = "stacks", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted")))]
async fn remove(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let stack = load(&state, &caller, &id)?;
    let active: Vec<String> = crate::deployments::list_in(state.store.as_ref(), caller.org_id)?
        .into_iter()
        .filter(|d| d.stack_id == stack.id && d.state != crate::deployments::State::Removed)
        .map(|d| d.id.to_string())
        .collect();
    if !active.is_empty() {
        return Err(ApiError::new(Code::StackInUse, "the stack is deployed; remove its deployments first")
            .with_details(serde_json::json!({ "deployments": active })));
    }
    stacks::delete(state.store.as_ref(), &stack)?;
    tracing::info!(stack_id = %stack.id, by = %caller.username, "stack deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Every saved version, newest first.
#[utoipa::path(get, path = "/stacks/{id}/versions", tag = "stacks", params(("id" = String, Path), PageQuery),
    responses((status = 200, body = Page<VersionSummary>)))]
async fn versions(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<VersionSummary>>, ApiError> {
    let stack = load(&state, &caller, &id)?;
    let all = stacks::versions(state.store.as_ref(), stack.id)?
        .into_iter()
        .rev()
        .map(|v| VersionSummary {
            version: v.version,
            created_by: v.created_by,
            created_at: rfc3339_s(v.created_at_unix_s),
        })
        .collect();
    Ok(Json(query.apply(all)?))
}

/// One version's Compose file and variables.
#[utoipa::path(get, path = "/stacks/{id}/versions/{version}", tag = "stacks",
    params(("id" = String, Path), ("version" = String, Path, description = "The version number")),
    responses((status = 200, body = VersionView)))]
async fn show_version(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, version)): Path<(String, String)>,
) -> Result<Json<VersionView>, ApiError> {
    let stack = load(&state, &caller, &id)?;
    let number: u32 = version.parse().map_err(|_| ApiError::not_found("stack version"))?;
    let version =
        stacks::version(state.store.as_ref(), stack.id, number)?.ok_or_else(|| ApiError::not_found("stack version"))?;
    Ok(Json(VersionView {
        version: version.version,
        secrets: version.secrets.keys().cloned().collect(),
        compose: version.compose,
        variables: version.variables,
        created_by: version.created_by,
        created_at: rfc3339_s(version.created_at_unix_s),
    }))
}

/// A platform a stack can be rendered for.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RenderTarget {
    Swarm,
    Kubernetes,
    Libvirt,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct RenderQuery {
    /// The platform to render for.
    #[param(inline)]
    to: RenderTarget,
    /// A stack version; the current one when left out.
    #[param(minimum = 1)]
    version: Option<u32>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AnalyzeQuery {
    /// A stack version; the current one when left out.
    #[param(minimum = 1)]
    version: Option<u32>,
}

/// What the rule analyser found in a stack version, most severe first.
#[derive(Debug, Serialize, ToSchema)]
pub struct Analysis {
    version: u32,
    findings: Vec<crate::analyzer::Finding>,
    high: usize,
    medium: usize,
    low: usize,
}

/// Runs the rule analyser over a stack version (nothing is saved): unpinned images, no
/// healthcheck, no resource limits, privileged containers, the Docker socket mounted, secrets
/// written in the environment, ports on every interface, running as root, no restart policy.
#[utoipa::path(post, path = "/stacks/{id}/analyze", tag = "stacks", params(("id" = String, Path), AnalyzeQuery),
    responses((status = 200, body = Analysis)))]
async fn analyze(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<AnalyzeQuery>,
) -> Result<Json<Analysis>, ApiError> {
    let stack = load(&state, &caller, &id)?;
    analysis(&state, &stack, query.version)
}

/// The analyser's findings on a version of `stack` (the current one by default).
pub(super) fn analysis(state: &AppState, stack: &Stack, version: Option<u32>) -> Result<Json<Analysis>, ApiError> {
    let number = version.unwrap_or(stack.current_version);
    let version = stacks::version(state.store.as_ref(), stack.id, number)?
        .ok_or_else(|| ApiError::invalid("version", format!("stack version {number} does not exist")))?;
    let parsed = stacks::parsed_of(&state.master_key, stack, &version).map_err(ApiError::internal)?;
    let findings = crate::analyzer::analyze(&version.compose, &parsed.spec);
    let count = |severity| findings.iter().filter(|f| f.severity == severity).count();
    use crate::analyzer::Severity;
    let (high, medium, low) = (count(Severity::High), count(Severity::Medium), count(Severity::Low));
    Ok(Json(Analysis { version: number, findings, high, medium, low }))
}

/// What a stack version becomes on a platform, before anything is applied.
#[derive(Debug, Serialize, ToSchema)]
pub struct Rendering {
    to: RenderTarget,
    version: u32,
    /// The platform's own objects, as YAML documents; secret contents are left out.
    yaml: String,
    /// What the platform cannot do (`blocking`: a deploy is refused) or does differently.
    findings: Vec<FindingView>,
}

/// Something about a stack on a platform.
#[derive(Debug, Serialize, ToSchema)]
pub struct FindingView {
    /// Where in the Compose model, e.g. `services.web.privileged`.
    path: String,
    message: String,
    /// A deploy to the platform is refused until this is changed.
    blocking: bool,
}

impl From<windflow_platforms::Finding> for FindingView {
    fn from(f: windflow_platforms::Finding) -> Self {
        Self { path: f.path, message: f.message, blocking: f.blocking }
    }
}

/// Renders a stack version as the platform's own objects (Swarm services, networks, secrets
/// and configs; Kubernetes manifests), with what stands in the way of deploying it there.
#[utoipa::path(get, path = "/stacks/{id}/render", tag = "stacks", params(("id" = String, Path), RenderQuery),
    responses((status = 200, body = Rendering)))]
async fn render(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<RenderQuery>,
) -> Result<Json<Rendering>, ApiError> {
    let stack = load(&state, &caller, &id)?;
    let number = query.version.unwrap_or(stack.current_version);
    let version = stacks::version(state.store.as_ref(), stack.id, number)?
        .ok_or_else(|| ApiError::invalid("version", format!("stack version {number} does not exist")))?;
    let parsed = stacks::parsed_of(&state.master_key, &stack, &version).map_err(ApiError::internal)?;
    let services = parsed.spec.services.len();
    let (yaml, findings) = match (query.to, &parsed.helm) {
        (RenderTarget::Libvirt, _) => (
            windflow_platforms::libvirt::render(&parsed.spec.project, &parsed.vms),
            windflow_platforms::libvirt::check(&parsed.vms, services, windflow_protocol::Platform::Libvirt),
        ),
        (to, _) if !parsed.vms.is_empty() => {
            let platform = if matches!(to, RenderTarget::Swarm) {
                windflow_protocol::Platform::Swarm
            } else {
                windflow_protocol::Platform::Kubernetes
            };
            (String::new(), windflow_platforms::libvirt::check(&parsed.vms, services, platform))
        }
        (RenderTarget::Kubernetes, Some(chart)) => (
            windflow_platforms::kubernetes::render_helm(&parsed.spec.project, chart),
            windflow_platforms::kubernetes::check_helm(windflow_protocol::Platform::Kubernetes),
        ),
        (RenderTarget::Swarm, Some(_)) => {
            (String::new(), windflow_platforms::kubernetes::check_helm(windflow_protocol::Platform::Swarm))
        }
        (RenderTarget::Swarm, None) => (
            windflow_platforms::swarm::render(&parsed.spec, &parsed.swarm),
            windflow_platforms::swarm::check(&parsed.spec, &parsed.swarm),
        ),
        (RenderTarget::Kubernetes, None) => (
            windflow_platforms::kubernetes::render(&parsed.spec, &parsed.swarm, None),
            windflow_platforms::kubernetes::check(&parsed.spec, &parsed.swarm),
        ),
    };
    let findings = findings.into_iter().map(FindingView::from).collect();
    Ok(Json(Rendering { to: query.to, version: number, yaml, findings }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneStack {
    #[schema(min_length = 1, max_length = 64, pattern = r"\S")]
    name: String,
}

/// A new stack from this one's current version (secrets included).
#[utoipa::path(post, path = "/stacks/{id}/clone", tag = "stacks", params(("id" = String, Path)), request_body = CloneStack,
    responses((status = 201, description = "The new stack", body = StackView)))]
async fn clone(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CloneStack>,
) -> Result<(StatusCode, Json<StackView>), ApiError> {
    let stack = load(&state, &caller, &id)?;
    let content = stacks::content_of(&state.master_key, &current_version(&state, &stack)?)?;
    let saved = stacks::create(
        state.store.as_ref(),
        &state.master_key,
        caller.org_id,
        body.name.trim(),
        content,
        &caller.username,
    )?;
    tracing::info!(from = %stack.id, stack_id = %saved.stack.id, by = %caller.username, "stack cloned");
    Ok((StatusCode::CREATED, Json(saved_view(saved))))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateStack {
    compose: String,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    /// The stack's name (it names the project); `stack` when left out.
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Validation {
    valid: bool,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    services: Vec<String>,
}

/// Checks a Compose file without saving anything: every error and warning with where it is.
#[utoipa::path(post, path = "/stacks/validate", tag = "stacks", request_body = ValidateStack,
    responses((status = 200, body = Validation)))]
async fn validate(_caller: Caller, ApiJson(body): ApiJson<ValidateStack>) -> Result<Json<Validation>, ApiError> {
    let name = body.name.unwrap_or_else(|| "stack".into());
    let content = Content { compose: body.compose, variables: body.variables, secrets: body.secrets };
    Ok(Json(match stacks::validate(&name, &content) {
        Ok(parsed) => Validation {
            valid: true,
            errors: vec![],
            warnings: parsed.warnings,
            services: parsed.spec.services.into_iter().map(|s| s.name).collect(),
        },
        Err(stacks::StackError::Invalid(invalid)) => {
            Validation { valid: false, errors: invalid.errors, warnings: invalid.warnings, services: vec![] }
        }
        Err(other) => return Err(other.into()),
    }))
}
