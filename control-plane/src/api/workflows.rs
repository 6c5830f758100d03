//! `/workflows`: an organisation's workflows with their versions, checked before they are saved
//! (each problem naming its node or edge), and their runs: start, follow, cancel, approve.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::error::{ApiError, Code};
use super::error::{ApiJson, ApiQuery};
use super::{AppState, Page, PageQuery};
use crate::auth::{Caller, now_unix_s};
use crate::store::{Record, RecordStore};
use crate::workflows::engine::{self, EngineError, LogLine, Run, RunStatus};
use crate::workflows::graph::{self, Graph, Problem};
use crate::workflows::plan::Step;
use crate::workflows::{self as model, Workflow, WorkflowVersion};

/// Most runs of one workflow at once.
const MAX_CONCURRENCY: u32 = 100;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(templates))
        .routes(routes!(validate))
        .routes(routes!(show, update, remove))
        .routes(routes!(versions))
        .routes(routes!(runs, start))
        .routes(routes!(run))
        .routes(routes!(run_logs))
        .routes(routes!(cancel))
        .routes(routes!(approve))
        .routes(routes!(run_events))
        .routes(routes!(webhook_secret))
        .routes(routes!(webhook))
}

use super::{rfc3339_ms as time_ms, rfc3339_s as time};

/// A workflow as it is written: its graph is JSON (see `docs/workflows.md`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowBody {
    name: String,
    #[serde(default)]
    description: String,
    /// `{nodes: [...], edges: [...]}`.
    #[schema(value_type = Object)]
    graph: serde_json::Map<String, serde_json::Value>,
    /// Runs at once at most (1 by default); more wait their turn.
    #[serde(default)]
    concurrency: Option<u32>,
    /// Whether its triggers fire (true by default).
    #[serde(default)]
    enabled: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowView {
    id: Uuid,
    name: String,
    description: String,
    version: u32,
    concurrency: u32,
    enabled: bool,
    graph: Graph,
    created_by: String,
    created_at: String,
    updated_at: String,
    /// The last run's status, if it ran.
    last_run: Option<RunStatus>,
}

fn view(state: &AppState, workflow: &Workflow) -> Result<WorkflowView, ApiError> {
    let graph = model::version(state.store.as_ref(), workflow.id, workflow.version)?
        .ok_or_else(|| ApiError::not_found("workflow version"))?
        .graph;
    let last_run = engine::runs_of(state.store.as_ref(), workflow.id)?.last().map(|r| r.status);
    Ok(WorkflowView {
        id: workflow.id,
        name: workflow.name.clone(),
        description: workflow.description.clone(),
        version: workflow.version,
        concurrency: workflow.concurrency,
        enabled: workflow.enabled,
        graph,
        created_by: workflow.created_by.clone(),
        created_at: time(workflow.created_at_unix_s),
        updated_at: time(workflow.updated_at_unix_s),
        last_run,
    })
}

fn load(state: &AppState, caller: &Caller, raw: &str) -> Result<Workflow, ApiError> {
    let id = Uuid::try_parse(raw).map_err(|_| ApiError::not_found("workflow"))?;
    model::get_in(state.store.as_ref(), caller.org_id, id)?.ok_or_else(|| ApiError::not_found("workflow"))
}

/// The graph, read and checked, or 422 with every problem by node.
fn checked(raw: &serde_json::Map<String, serde_json::Value>) -> Result<Graph, ApiError> {
    let refuse = |problems: Vec<Problem>| {
        let said: Vec<String> = problems
            .iter()
            .map(|p| match (&p.node, &p.edge) {
                (Some(node), _) => format!("node `{node}`: {}", p.message),
                (_, Some(edge)) => format!("edge {edge}: {}", p.message),
                _ => p.message.clone(),
            })
            .collect();
        ApiError::new(Code::InvalidWorkflow, said.join("; ")).with_details(serde_json::json!({ "problems": problems }))
    };
    let graph = graph::parse(&serde_json::Value::Object(raw.clone())).map_err(refuse)?;
    let problems = graph::check(&graph);
    if problems.is_empty() { Ok(graph) } else { Err(refuse(problems)) }
}

fn settings(body: &WorkflowBody) -> Result<(String, u32), ApiError> {
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError::invalid("name", "a name is 1 to 100 characters"));
    }
    let concurrency = body.concurrency.unwrap_or(1);
    if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
        return Err(ApiError::invalid("concurrency", format!("concurrency is 1 to {MAX_CONCURRENCY}")));
    }
    Ok((name, concurrency))
}

/// The organisation's workflows.
#[utoipa::path(get, path = "/workflows", tag = "workflows", params(PageQuery),
    responses((status = 200, body = Page<WorkflowView>)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(paging): ApiQuery<PageQuery>,
) -> Result<Json<Page<WorkflowView>>, ApiError> {
    let mut workflows = model::list_in(state.store.as_ref(), caller.org_id)?;
    workflows.sort_by(|a, b| a.name.cmp(&b.name));
    let views = workflows.iter().map(|w| view(&state, w)).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(paging.apply(views)?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowGraphBody {
    #[schema(value_type = Object)]
    graph: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowValidation {
    valid: bool,
    problems: Vec<Problem>,
}

/// The workflow templates shipped with WindFlow, ready to save as a workflow (edit the values
/// marked `CHANGE-ME` and the example URLs first).
#[utoipa::path(get, path = "/workflows/templates", tag = "workflows",
    responses((status = 200, body = super::Items<crate::workflows::catalog::WorkflowTemplate>)))]
async fn templates(_caller: Caller) -> Json<super::Items<crate::workflows::catalog::WorkflowTemplate>> {
    Json(super::Items { items: crate::workflows::catalog::templates().to_vec() })
}

/// Checks a graph without saving anything: every problem, with its node or edge.
#[utoipa::path(post, path = "/workflows/validate", tag = "workflows", request_body = WorkflowGraphBody,
    responses((status = 200, body = WorkflowValidation)))]
async fn validate(
    _caller: Caller,
    ApiJson(body): ApiJson<WorkflowGraphBody>,
) -> Result<Json<WorkflowValidation>, ApiError> {
    let problems = match graph::parse(&serde_json::Value::Object(body.graph)) {
        Ok(graph) => graph::check(&graph),
        Err(problems) => problems,
    };
    Ok(Json(WorkflowValidation { valid: problems.is_empty(), problems }))
}

/// Creates a workflow (version 1).
#[utoipa::path(post, path = "/workflows", tag = "workflows", request_body = WorkflowBody,
    responses((status = 201, body = WorkflowView),
        (status = 422, description = "`invalid_workflow`: `details.problems` name each node", body = super::error::ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<WorkflowBody>,
) -> Result<(StatusCode, Json<WorkflowView>), ApiError> {
    let (name, concurrency) = settings(&body)?;
    let graph = checked(&body.graph)?;
    let now = now_unix_s();
    let workflow = Workflow {
        id: Uuid::now_v7(),
        org_id: caller.org_id,
        name,
        description: body.description.clone(),
        version: 1,
        concurrency,
        enabled: body.enabled.unwrap_or(true),
        webhook_secret: None,
        created_by: caller.username.clone(),
        created_at_unix_s: now,
        updated_at_unix_s: now,
    };
    let version = WorkflowVersion {
        workflow_id: workflow.id,
        version: 1,
        graph,
        created_by: caller.username.clone(),
        created_at_unix_s: now,
    };
    model::save(state.store.as_ref(), None, &workflow, &version)?;
    Ok((StatusCode::CREATED, Json(view(&state, &workflow)?)))
}

/// A workflow and its latest graph.
#[utoipa::path(get, path = "/workflows/{id}", tag = "workflows", params(("id" = String, Path)),
    responses((status = 200, body = WorkflowView)))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<WorkflowView>, ApiError> {
    let workflow = load(&state, &caller, &id)?;
    Ok(Json(view(&state, &workflow)?))
}

/// Saves a new version (runs already started keep theirs).
#[utoipa::path(put, path = "/workflows/{id}", tag = "workflows", params(("id" = String, Path)), request_body = WorkflowBody,
    responses((status = 200, body = WorkflowView),
        (status = 422, description = "`invalid_workflow`: `details.problems` name each node", body = super::error::ErrorBody)))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<WorkflowBody>,
) -> Result<Json<WorkflowView>, ApiError> {
    let previous = load(&state, &caller, &id)?;
    let (name, concurrency) = settings(&body)?;
    let graph = checked(&body.graph)?;
    let now = now_unix_s();
    let workflow = Workflow {
        name,
        description: body.description.clone(),
        version: previous.version + 1,
        concurrency,
        enabled: body.enabled.unwrap_or(previous.enabled),
        updated_at_unix_s: now,
        ..previous.clone()
    };
    let version = WorkflowVersion {
        workflow_id: workflow.id,
        version: workflow.version,
        graph,
        created_by: caller.username.clone(),
        created_at_unix_s: now,
    };
    if !model::save(state.store.as_ref(), Some(&previous), &workflow, &version)? {
        return Err(ApiError::new(Code::Conflict, "the workflow changed meanwhile; read it again"));
    }
    Ok(Json(view(&state, &workflow)?))
}

/// Deletes a workflow with its versions and runs; its runs still going are cancelled first.
#[utoipa::path(delete, path = "/workflows/{id}", tag = "workflows", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted")))]
async fn remove(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let workflow = load(&state, &caller, &id)?;
    for run in engine::runs_of(state.store.as_ref(), workflow.id)?.iter().filter(|r| !r.status.is_over()) {
        let _ = state.workflows.cancel(workflow.id, run.id);
    }
    model::delete(state.store.as_ref(), &workflow)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowVersionView {
    version: u32,
    graph: Graph,
    created_by: String,
    created_at: String,
}

/// Every version, newest first.
#[utoipa::path(get, path = "/workflows/{id}/versions", tag = "workflows", params(("id" = String, Path)),
    responses((status = 200, body = super::Items<WorkflowVersionView>)))]
async fn versions(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<super::Items<WorkflowVersionView>>, ApiError> {
    let workflow = load(&state, &caller, &id)?;
    let items = model::versions(state.store.as_ref(), workflow.id)?
        .into_iter()
        .rev()
        .map(|v| WorkflowVersionView {
            version: v.version,
            graph: v.graph,
            created_by: v.created_by,
            created_at: time(v.created_at_unix_s),
        })
        .collect();
    Ok(Json(super::Items { items }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowRunView {
    id: Uuid,
    workflow_id: Uuid,
    version: u32,
    status: RunStatus,
    trigger: String,
    started_by: String,
    /// Every node's step: status, attempts, port, output, error, times.
    steps: std::collections::BTreeMap<String, Step>,
    /// Why it failed: the node, its attempts and its last error.
    error: Option<String>,
    created_at: String,
    finished_at: Option<String>,
}

pub fn run_view(run: &Run) -> WorkflowRunView {
    WorkflowRunView {
        id: run.id,
        workflow_id: run.workflow_id,
        version: run.version,
        status: run.status,
        trigger: run.trigger.clone(),
        started_by: run.started_by.clone(),
        steps: run.progress.steps.clone(),
        error: run.error.clone(),
        created_at: time_ms(run.created_at_ms),
        finished_at: run.finished_at_ms.map(time_ms),
    }
}

/// The workflow's runs, newest first.
#[utoipa::path(get, path = "/workflows/{id}/runs", tag = "workflows", params(("id" = String, Path), PageQuery),
    responses((status = 200, body = Page<WorkflowRunView>)))]
async fn runs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(paging): ApiQuery<PageQuery>,
) -> Result<Json<Page<WorkflowRunView>>, ApiError> {
    let workflow = load(&state, &caller, &id)?;
    let runs: Vec<WorkflowRunView> =
        engine::runs_of(state.store.as_ref(), workflow.id)?.iter().rev().map(run_view).collect();
    Ok(Json(paging.apply(runs)?))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowRunRequest {
    /// The manual trigger to start from (the workflow's first, by default).
    #[serde(default)]
    trigger: Option<String>,
    /// What the trigger hands on, as `trigger` in expressions.
    #[serde(default)]
    #[schema(value_type = Object)]
    input: serde_json::Value,
}

/// Starts a run from a manual trigger (queued when the workflow runs as many as it may).
#[utoipa::path(post, path = "/workflows/{id}/runs", tag = "workflows", params(("id" = String, Path)), request_body = WorkflowRunRequest,
    responses((status = 201, body = WorkflowRunView)))]
async fn start(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<WorkflowRunRequest>,
) -> Result<(StatusCode, Json<WorkflowRunView>), ApiError> {
    let workflow = load(&state, &caller, &id)?;
    let graph = model::version(state.store.as_ref(), workflow.id, workflow.version)?
        .ok_or_else(|| ApiError::not_found("workflow version"))?
        .graph;
    let manual: Vec<&str> =
        graph.nodes.iter().filter(|n| matches!(n.action, graph::Action::Manual {})).map(|n| n.id.as_str()).collect();
    let trigger = match &body.trigger {
        Some(wanted) if manual.contains(&wanted.as_str()) => wanted.clone(),
        Some(wanted) => {
            return Err(ApiError::invalid("trigger", format!("`{wanted}` is not a manual trigger of this workflow")));
        }
        None => manual.first().map(|t| t.to_string()).ok_or_else(|| {
            ApiError::invalid("trigger", "this workflow has no manual trigger: it starts from its other triggers")
        })?,
    };
    let run = state.workflows.start(&workflow, &trigger, body.input, &caller.username).map_err(engine_error)?;
    Ok((StatusCode::CREATED, Json(run_view(&run))))
}

fn engine_error(error: EngineError) -> ApiError {
    match error {
        EngineError::Store(e) => e.into(),
        EngineError::Over => ApiError::new(Code::Conflict, "the run is over"),
        other => ApiError::invalid("node", other.to_string()),
    }
}

fn load_run(state: &AppState, caller: &Caller, id: &str, run_id: &str) -> Result<(Workflow, Run), ApiError> {
    let workflow = load(state, caller, id)?;
    let run_id = Uuid::try_parse(run_id).map_err(|_| ApiError::not_found("run"))?;
    let run = engine::get_run(state.store.as_ref(), workflow.id, run_id)?.ok_or_else(|| ApiError::not_found("run"))?;
    Ok((workflow, run))
}

/// One run: every step's status, attempts, output and error.
#[utoipa::path(get, path = "/workflows/{id}/runs/{run_id}", tag = "workflows",
    params(("id" = String, Path), ("run_id" = String, Path)), responses((status = 200, body = WorkflowRunView)))]
async fn run(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, run_id)): Path<(String, String)>,
) -> Result<Json<WorkflowRunView>, ApiError> {
    let (_, run) = load_run(&state, &caller, &id, &run_id)?;
    Ok(Json(run_view(&run)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowLogLine {
    seq: u64,
    node: String,
    at_ms: u64,
    message: String,
}

/// What the run's steps wrote, in order.
#[utoipa::path(get, path = "/workflows/{id}/runs/{run_id}/logs", tag = "workflows",
    params(("id" = String, Path), ("run_id" = String, Path)), responses((status = 200, body = super::Items<WorkflowLogLine>)))]
async fn run_logs(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, run_id)): Path<(String, String)>,
) -> Result<Json<super::Items<WorkflowLogLine>>, ApiError> {
    let (_, run) = load_run(&state, &caller, &id, &run_id)?;
    let items = engine::logs_of(state.store.as_ref(), run.id)?
        .into_iter()
        .map(|LogLine { seq, node, at_ms, message, .. }| WorkflowLogLine { seq, node, at_ms, message })
        .collect();
    Ok(Json(super::Items { items }))
}

/// Cancels a run: its running nodes stop, the rest is cancelled.
#[utoipa::path(post, path = "/workflows/{id}/runs/{run_id}/cancel", tag = "workflows",
    params(("id" = String, Path), ("run_id" = String, Path)), responses((status = 202, body = WorkflowRunView)))]
async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, run_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<WorkflowRunView>), ApiError> {
    let (workflow, run) = load_run(&state, &caller, &id, &run_id)?;
    let run = state.workflows.cancel(workflow.id, run.id).map_err(engine_error)?;
    tracing::info!(run = %run.id, by = %caller.username, "workflow run cancel asked");
    Ok((StatusCode::ACCEPTED, Json(run_view(&run))))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDecision {
    approved: bool,
}

/// Approves or rejects an approval node that waits.
#[utoipa::path(post, path = "/workflows/{id}/runs/{run_id}/approvals/{node}", tag = "workflows",
    params(("id" = String, Path), ("run_id" = String, Path), ("node" = String, Path)), request_body = ApprovalDecision,
    responses((status = 202, description = "Recorded; the run goes on")))]
async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, run_id, node)): Path<(String, String, String)>,
    ApiJson(body): ApiJson<ApprovalDecision>,
) -> Result<StatusCode, ApiError> {
    let (workflow, run) = load_run(&state, &caller, &id, &run_id)?;
    state.workflows.decide(workflow.id, run.id, &node, body.approved, &caller.username).map_err(engine_error)?;
    Ok(StatusCode::ACCEPTED)
}

/// A run as it changes, as Server-Sent Events: `run` events carrying the whole run (as
/// `GET …/runs/{run_id}` answers it), the first one at once, the last one when it is over.
#[utoipa::path(get, path = "/workflows/{id}/runs/{run_id}/events", tag = "workflows",
    params(("id" = String, Path), ("run_id" = String, Path)),
    responses((status = 200, description = "text/event-stream of `run` events", content_type = "text/event-stream")))]
async fn run_events(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, run_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    // Subscribed before reading the run: no change falls in between.
    let live = state.workflows.subscribe();
    let (_, run) = load_run(&state, &caller, &id, &run_id)?;
    let event = |run: &Run| {
        let data = serde_json::to_string(&run_view(run)).unwrap_or_default();
        Ok::<_, Infallible>(SseEvent::default().event("run").data(data))
    };
    let first = stream::iter([event(&run)]);
    let run_id = run.id;
    let over = run.status.is_over();
    let changes = stream::unfold((live, over), move |(mut live, over)| async move {
        if over {
            return None;
        }
        loop {
            match live.recv().await {
                Ok(changed) if changed.id == run_id => {
                    let over = changed.status.is_over();
                    return Some((event(&changed), (live, over)));
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(crate::metrics::tracked(first.chain(changes), state.hub.metrics.clone()))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn webhook_context(workflow_id: Uuid) -> String {
    format!("workflow-webhook:{workflow_id}")
}

/// A webhook secret, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookSecret {
    /// Sign each delivery's body with it: `X-WindFlow-Signature: sha256=<hex HMAC-SHA256>`.
    secret: String,
    /// Where to POST, `NODE` standing for the webhook trigger's node id.
    url: String,
}

/// Makes (or replaces) the workflow's webhook secret; the old one stops working at once.
#[utoipa::path(post, path = "/workflows/{id}/webhook-secret", tag = "workflows", params(("id" = String, Path)),
    responses((status = 201, body = WebhookSecret)))]
async fn webhook_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<WebhookSecret>), ApiError> {
    use base64::Engine as _;
    let workflow = load(&state, &caller, &id)?;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let sealed = state.master_key.seal(&webhook_context(workflow.id), secret.as_bytes());
    let updated = Workflow { webhook_secret: Some(sealed), updated_at_unix_s: now_unix_s(), ..workflow.clone() };
    if !state.store.replace(&workflow, &updated)? {
        return Err(ApiError::new(Code::Conflict, "the workflow changed meanwhile; try again"));
    }
    tracing::info!(workflow = %workflow.id, by = %caller.username, "workflow webhook secret made");
    let url =
        format!("{}/api/v1/hooks/workflows/{}/NODE", state.settings.public_url.trim_end_matches('/'), workflow.id);
    Ok((StatusCode::CREATED, Json(WebhookSecret { secret, url })))
}

/// What a webhook delivery started.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delivery {
    run_id: Uuid,
    /// The delivery (its `X-WindFlow-Delivery` id) had already started this run.
    duplicate: bool,
}

/// Starts a run from a webhook trigger. No bearer token: the body must be signed with the
/// workflow's webhook secret (`X-WindFlow-Signature: sha256=<hex HMAC-SHA256 of the body>`);
/// anything else is 401 and starts nothing. A delivery sent again with the same
/// `X-WindFlow-Delivery` id starts nothing more.
#[utoipa::path(post, path = "/hooks/workflows/{id}/{node}", tag = "workflows",
    params(("id" = String, Path), ("node" = String, Path)),
    request_body(content = Object, description = "Any body: JSON reaches the run as JSON (`trigger.body`), anything else as text"),
    responses((status = 202, body = Delivery), (status = 200, description = "A delivery seen before", body = Delivery),
        (status = 401, description = "No signature, or a wrong one", body = super::error::ErrorBody)))]
async fn webhook(
    State(state): State<AppState>,
    Path((id, node)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Delivery>), ApiError> {
    let refused =
        || ApiError::new(Code::Unauthenticated, "the delivery is not signed with this workflow's webhook secret");
    let workflow = Uuid::try_parse(&id)
        .ok()
        .and_then(|id| model::get(state.store.as_ref(), id).ok().flatten())
        .ok_or_else(refused)?;
    let secret = workflow
        .webhook_secret
        .as_ref()
        .and_then(|sealed| state.master_key.open(&webhook_context(workflow.id), sealed).ok())
        .ok_or_else(refused)?;
    let signature = headers
        .get("x-windflow-signature")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .and_then(|v| hex::decode(v).ok())
        .ok_or_else(refused)?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&secret).map_err(ApiError::internal)?;
    mac.update(&body);
    mac.verify_slice(&signature).map_err(|_| refused())?;
    if !workflow.enabled {
        return Err(ApiError::new(Code::Conflict, "the workflow is disabled"));
    }
    let graph = model::version(state.store.as_ref(), workflow.id, workflow.version)?
        .ok_or_else(|| ApiError::not_found("workflow version"))?
        .graph;
    if !graph.nodes.iter().any(|n| n.id == node && matches!(n.action, graph::Action::Webhook {})) {
        return Err(ApiError::invalid("node", format!("`{node}` is not a webhook trigger of this workflow")));
    }
    let delivery = headers
        .get("x-windflow-delivery")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map_or_else(|| Uuid::now_v7().to_string(), str::to_owned);
    let payload = serde_json::json!({
        "body": serde_json::from_slice::<serde_json::Value>(&body)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())),
        "delivery": delivery,
    });
    let occurrence = format!("webhook:{delivery}");
    match state.workflows.start_once(&workflow, &node, payload, "webhook", &occurrence).map_err(engine_error)? {
        Some(run) => Ok((StatusCode::ACCEPTED, Json(Delivery { run_id: run.id, duplicate: false }))),
        None => {
            let firing: engine::Firing = state
                .store
                .load(
                    &engine::Firing { workflow_id: workflow.id, node, occurrence, run_id: Uuid::nil(), at_ms: 0 }.key(),
                )?
                .ok_or_else(|| ApiError::not_found("delivery"))?;
            Ok((StatusCode::OK, Json(Delivery { run_id: firing.run_id, duplicate: true })))
        }
    }
}
