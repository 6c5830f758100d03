//! AI assistance: an organisation's provider settings (`/orgs/{id}/ai`, its admins) and usage,
//! generating a stack from a description (`/ai/generate`), diagnosing a deployment
//! (`/deployments/{id}/diagnose`) — both streamed as Server-Sent Events when asked — and
//! right-sizing one from measured usage (`/deployments/{id}/optimize`).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiJson, ApiQuery, Code, ErrorBody};
use super::{AppState, Items, rfc3339_s};
use crate::ai::diagnose::{ContainerFacts, Diagnosis, Evidence};
use crate::ai::generate::{self, Generated, Progress};
use crate::ai::redact::Redactor;
use crate::ai::wire::{ChatRequest, Message, ProviderKind};
use crate::ai::{AiConfig, AiError, Model, UsageMonth};
use crate::auth::Caller;
use crate::breaker::BreakerView;
use crate::orgs::{Org, Role};
use crate::stacks;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(show_ai, save_ai, remove_ai))
        .routes(routes!(test_ai))
        .routes(routes!(ai_usage))
        .routes(routes!(generate_stack))
        .routes(routes!(diagnose_deployment))
        .routes(routes!(optimize_deployment))
}

impl From<AiError> for ApiError {
    fn from(error: AiError) -> Self {
        let message = error.to_string();
        match error {
            AiError::NotConfigured => ApiError::new(Code::AiNotConfigured, message),
            AiError::Provider(_) => ApiError::new(Code::AiProviderFailed, message),
            AiError::CircuitOpen { retry_in, .. } => ApiError::new(Code::AiCircuitOpen, message)
                .with_details(json!({ "retry_in_s": retry_in.as_secs().max(1) })),
            AiError::InvalidAnswer { rounds, errors, last_answer } => ApiError::new(Code::AiAnswerInvalid, message)
                .with_details(json!({ "rounds": rounds, "errors": errors, "last_answer": last_answer })),
            AiError::Key(e) => ApiError::internal(e),
            AiError::Store(e) => e.into(),
        }
    }
}

fn load_org(state: &AppState, caller: &Caller, raw: &str, needed: Role) -> Result<Org, ApiError> {
    super::orgs::managed_by(state, caller, raw, needed, "AI settings are").map(|(org, _)| org)
}

/// An organisation's language model, without its key.
#[derive(Debug, Serialize, ToSchema)]
pub struct AiConfigView {
    kind: ProviderKind,
    base_url: String,
    model: String,
    has_api_key: bool,
    timeout_s: u64,
    max_tokens: u32,
    input_price_per_mtok: f64,
    output_price_per_mtok: f64,
    /// The provider's circuit breaker, as it stands.
    circuit: BreakerView,
    updated_by: String,
    updated_at: String,
}

fn view(state: &AppState, config: &AiConfig) -> AiConfigView {
    AiConfigView {
        kind: config.kind,
        base_url: config.base_url.clone(),
        model: config.model.clone(),
        has_api_key: config.api_key_sealed.is_some(),
        timeout_s: config.timeout_s,
        max_tokens: config.max_tokens,
        input_price_per_mtok: config.input_price_per_mtok,
        output_price_per_mtok: config.output_price_per_mtok,
        circuit: state.assistant.breaker_view(config),
        updated_by: config.updated_by.clone(),
        updated_at: rfc3339_s(config.updated_at_unix_s),
    }
}

/// The organisation's language model (admins).
#[utoipa::path(get, path = "/orgs/{id}/ai", tag = "ai", params(("id" = String, Path)),
    responses((status = 200, body = AiConfigView)))]
async fn show_ai(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AiConfigView>, ApiError> {
    let org = load_org(&state, &caller, &id, Role::Admin)?;
    let config = state.assistant.config(org.id)?.ok_or(AiError::NotConfigured)?;
    Ok(Json(view(&state, &config)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"kind": "openai", "base_url": "https://api.openai.com/v1", "model": "gpt-4o-mini", "api_key": "sk-…"}))]
pub struct AiConfigInput {
    kind: ProviderKind,
    /// `https://api.openai.com/v1` (or a LiteLLM, vLLM or Ollama `/v1` URL) for `openai`,
    /// `https://api.anthropic.com` for `anthropic`, `http://host:11434` for `ollama`.
    base_url: String,
    #[schema(min_length = 1, max_length = 200)]
    model: String,
    /// Left out, the current key is kept; empty, it is removed (a local Ollama needs none).
    api_key: Option<String>,
    /// How long one answer may take, 1 to 600 seconds (default 120).
    #[schema(minimum = 1, maximum = 600)]
    timeout_s: Option<u64>,
    /// The longest answer asked for, 64 to 65536 tokens (default 4096).
    #[schema(minimum = 64, maximum = 65536)]
    max_tokens: Option<u32>,
    /// US dollars per million input tokens, for the cost figures (default 0).
    #[schema(minimum = 0)]
    input_price_per_mtok: Option<f64>,
    #[schema(minimum = 0)]
    output_price_per_mtok: Option<f64>,
}

fn check_base_url(raw: &str) -> Result<String, ApiError> {
    let invalid = |why: &str| ApiError::invalid("base_url", format!("base_url {why}"));
    let url = reqwest::Url::parse(raw.trim()).map_err(|e| invalid(&format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("must be http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("must not carry credentials: put the key in api_key"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("must not have a query or a fragment"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    value: Option<T>,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ApiError> {
    let value = value.unwrap_or(default);
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::invalid(field, format!("{field} must be between {} and {}", range.start(), range.end())))
    }
}

/// Sets the organisation's language model (admins). The key is sealed at rest and never shown.
#[utoipa::path(put, path = "/orgs/{id}/ai", tag = "ai", params(("id" = String, Path)), request_body = AiConfigInput,
    responses((status = 200, body = AiConfigView)))]
async fn save_ai(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AiConfigInput>,
) -> Result<Json<AiConfigView>, ApiError> {
    let org = load_org(&state, &caller, &id, Role::Admin)?;
    let base_url = check_base_url(&body.base_url)?;
    let model = body.model.trim().to_owned();
    if model.is_empty() || model.len() > 200 {
        return Err(ApiError::invalid("model", "model must be 1 to 200 characters"));
    }
    let price = |field: &str, value: Option<f64>| match value {
        Some(v) if !v.is_finite() || v < 0.0 => Err(ApiError::invalid(field, format!("{field} must be 0 or more"))),
        v => Ok(v.unwrap_or(0.0)),
    };
    let current = state.assistant.config(org.id)?;
    let api_key_sealed = match body.api_key.as_deref().map(str::trim) {
        Some("") => None,
        Some(key) => Some(state.assistant.seal_key(org.id, key)),
        None => current.and_then(|c| c.api_key_sealed),
    };
    let config = AiConfig {
        org_id: org.id,
        kind: body.kind,
        base_url,
        model,
        api_key_sealed,
        timeout_s: in_range("timeout_s", body.timeout_s, 120, 1..=600)?,
        max_tokens: in_range("max_tokens", body.max_tokens, 4096, 64..=65536)?,
        input_price_per_mtok: price("input_price_per_mtok", body.input_price_per_mtok)?,
        output_price_per_mtok: price("output_price_per_mtok", body.output_price_per_mtok)?,
        updated_by: caller.username.clone(),
        updated_at_unix_s: crate::auth::now_unix_s(),
    };
    state.assistant.save(&config)?;
    tracing::info!(org_id = %org.id, kind = ?config.kind, base_url = %config.base_url, by = %caller.username, "AI provider configured");
    Ok(Json(view(&state, &config)))
}

/// Removes the organisation's language model; the analyser and the rules stay.
#[utoipa::path(delete, path = "/orgs/{id}/ai", tag = "ai", params(("id" = String, Path)),
    responses((status = 204, description = "Removed")))]
async fn remove_ai(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let org = load_org(&state, &caller, &id, Role::Admin)?;
    state.assistant.delete(org.id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// What the provider answered to a short question.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct AiTest {
    ok: bool,
    /// The provider's message, when it failed.
    error: Option<String>,
    answer: Option<String>,
    latency_ms: u64,
}

/// Asks the provider a one-word question; a provider that fails is a result (`ok: false` and its
/// message), not an error of this request.
#[utoipa::path(post, path = "/orgs/{id}/ai/test", tag = "ai", params(("id" = String, Path)),
    responses((status = 200, body = AiTest)))]
async fn test_ai(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AiTest>, ApiError> {
    let org = load_org(&state, &caller, &id, Role::Admin)?;
    let model = state.assistant.model_for(org.id, Redactor::default())?;
    let request = ChatRequest {
        system: "Answer with one word.".into(),
        messages: vec![Message::user("Say OK.")],
        max_tokens: 16,
    };
    let started = Instant::now();
    let outcome = model.ask(&request, None).await;
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(Json(match outcome {
        Ok(answer) => AiTest { ok: true, answer: Some(answer.text), latency_ms, ..AiTest::default() },
        Err(error) => AiTest { ok: false, error: Some(error.to_string()), latency_ms, ..AiTest::default() },
    }))
}

/// The organisation's tokens and cost, month by month (admins).
#[utoipa::path(get, path = "/orgs/{id}/ai/usage", tag = "ai", params(("id" = String, Path)),
    responses((status = 200, body = Items<UsageMonth>)))]
async fn ai_usage(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Items<UsageMonth>>, ApiError> {
    let org = load_org(&state, &caller, &id, Role::Admin)?;
    Ok(Json(Items::from(state.assistant.usage(org.id)?)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"description": "WordPress with MySQL and a Redis cache"}))]
pub struct GenerateRequest {
    /// What the stack should run, in a few words or a paragraph.
    #[schema(min_length = 3, max_length = 4000)]
    description: String,
    /// Rounds of asking the model, the first included: 1 to 5 (default 3).
    #[schema(minimum = 1, maximum = 5)]
    rounds: Option<u32>,
}

fn wants_events(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/event-stream"))
}

fn error_event(error: ApiError) -> SseEvent {
    SseEvent::default().event("error").data(serde_json::to_string(&error.into_body()).unwrap_or_default())
}

/// Writes a Compose file for a description with the organisation's model; what the stack
/// pipeline refuses goes back to the model with the errors, for a few rounds. Nothing is saved.
/// With `Accept: text/event-stream` the answer streams: `round` (`{round}`), `delta`
/// (`{text}`), `rejected` (`{errors}`), then `result` (a `Generated`) or `error` (an error body).
#[utoipa::path(post, path = "/ai/generate", tag = "ai", request_body = GenerateRequest,
    responses((status = 200, description = "The accepted file; events with `Accept: text/event-stream`",
        content((Generated = "application/json"), (String = "text/event-stream"))),
        (status = 422, body = ErrorBody, description = "The model never wrote a valid stack (`ai_answer_invalid`)")))]
async fn generate_stack(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<GenerateRequest>,
) -> Result<Response, ApiError> {
    let description = body.description.trim().to_owned();
    if description.chars().count() < 3 || description.len() > 4000 {
        return Err(ApiError::invalid("description", "description must be 3 to 4000 characters"));
    }
    let rounds = in_range("rounds", body.rounds, generate::DEFAULT_ROUNDS, 1..=5)?;
    let model = state.assistant.model_for(caller.org_id, Redactor::default())?;
    if !wants_events(&headers) {
        let generated = generate::generate(&model, &description, rounds, false, &|_| {}).await?;
        return Ok(Json(generated).into_response());
    }
    let (events, receiver) = tokio::sync::mpsc::unbounded_channel::<SseEvent>();
    tokio::spawn(async move {
        let sender = events.clone();
        let progress = move |p: Progress<'_>| {
            let event = match p {
                Progress::Round(round) => {
                    SseEvent::default().event("round").data(json!({ "round": round }).to_string())
                }
                Progress::Delta(text) => SseEvent::default().event("delta").data(json!({ "text": text }).to_string()),
                Progress::Rejected(errors) => {
                    SseEvent::default().event("rejected").data(json!({ "errors": errors }).to_string())
                }
            };
            let _ = sender.send(event);
        };
        let last = match generate::generate(&model, &description, rounds, true, &progress).await {
            Ok(generated) => {
                SseEvent::default().event("result").data(serde_json::to_string(&generated).unwrap_or_default())
            }
            Err(error) => error_event(error.into()),
        };
        let _ = events.send(last);
    });
    Ok(event_stream(&state, receiver))
}

/// The events a task sends, as a Server-Sent Events answer that ends when the task is done.
fn event_stream(state: &AppState, receiver: tokio::sync::mpsc::UnboundedReceiver<SseEvent>) -> Response {
    let stream = stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|event| (Ok::<_, Infallible>(event), receiver))
    });
    Sse::new(crate::metrics::tracked(stream, state.hub.metrics.clone()))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Lines of log read for a diagnosis.
const DIAGNOSIS_LOG_LINES: u32 = 60;

/// Why a deployment failed or is unhealthy: its events, each container's state, exit code and
/// health, and its last log lines, read by rules, and by the organisation's model when it has
/// one (secret values never leave the control plane). The answer names the probable cause,
/// the evidence and a fix, with a corrected Compose file when that is the fix. With
/// `Accept: text/event-stream`: `rules` (the rules' diagnosis, at once), `delta` (`{text}`,
/// the model's answer as it is written), then `result` (a `Diagnosis`) or `error`.
#[utoipa::path(post, path = "/deployments/{id}/diagnose", tag = "ai", params(("id" = String, Path)),
    responses((status = 200, description = "The diagnosis; events with `Accept: text/event-stream`",
        content((Diagnosis = "application/json"), (String = "text/event-stream")))))]
async fn diagnose_deployment(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let deployment = super::deployments::load(&state, &caller, &id)?;
    let prepared = Prepared::gather(&state, &caller, &deployment).await?;
    if !wants_events(&headers) {
        return Ok(Json(prepared.diagnose(None).await?).into_response());
    }
    let (events, receiver) = tokio::sync::mpsc::unbounded_channel::<SseEvent>();
    tokio::spawn(async move {
        let rules = serde_json::to_string(&prepared.by_rules()).unwrap_or_default();
        let _ = events.send(SseEvent::default().event("rules").data(rules));
        let sender = events.clone();
        let deltas = move |text: &str| {
            let _ = sender.send(SseEvent::default().event("delta").data(json!({ "text": text }).to_string()));
        };
        let last = match prepared.diagnose(Some(&deltas)).await {
            Ok(diagnosis) => {
                SseEvent::default().event("result").data(serde_json::to_string(&diagnosis).unwrap_or_default())
            }
            Err(error) => error_event(error),
        };
        let _ = events.send(last);
    });
    Ok(event_stream(&state, receiver))
}

/// The diagnosis of a deployment of the caller's organisation (also an MCP tool).
pub(super) async fn diagnose(
    state: &AppState,
    caller: &Caller,
    deployment: &crate::deployments::Deployment,
) -> Result<Diagnosis, ApiError> {
    Prepared::gather(state, caller, deployment).await?.diagnose(None).await
}

/// What a diagnosis is made from, gathered.
struct Prepared {
    evidence: Evidence,
    redactor: Redactor,
    model: Option<crate::ai::OrgModel>,
    stack_name: String,
    content: stacks::Content,
}

impl Prepared {
    async fn gather(
        state: &AppState,
        caller: &Caller,
        deployment: &crate::deployments::Deployment,
    ) -> Result<Self, ApiError> {
        let store = state.store.as_ref();
        let stack = stacks::get(store, deployment.stack_id)?.ok_or_else(|| ApiError::not_found("stack"))?;
        let version = stacks::version(store, stack.id, deployment.version)?
            .ok_or_else(|| ApiError::internal("a deployment's stack version is missing"))?;
        let content = stacks::content_of(&state.master_key, &version).map_err(ApiError::internal)?;
        let parsed = stacks::validate(&stack.name, &content).map_err(ApiError::from)?;
        let redactor = Redactor::new(content.secrets.values().cloned());

        let containers = state
            .hub
            .observed(deployment.id)
            .map(|status| {
                status
                    .services
                    .iter()
                    .flat_map(|service| {
                        service.containers.iter().map(|c| {
                            let (state, exit_code) = super::deployments::state_and_exit(&c.state);
                            ContainerFacts {
                                service: service.service.clone(),
                                name: c.name.clone(),
                                state,
                                exit_code,
                                health: c.health.map(|h| super::deployments::health_word(h).to_owned()),
                                restart_count: c.restart_count,
                            }
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let source = super::deployments::log_source(deployment, None);
        let (logs, logs_unavailable) = match tokio::time::timeout(
            Duration::from_secs(15),
            state.logs.fetch(&source, Some(DIAGNOSIS_LOG_LINES), None),
        )
        .await
        {
            Ok(Ok(lines)) => (lines.into_iter().map(|l| (l.container, l.text)).collect(), None),
            Ok(Err(error)) => (Vec::new(), Some(error.to_string())),
            Err(_) => (Vec::new(), Some("the agent did not send them in time".to_owned())),
        };
        let history = state.reconciler.events.history(deployment.id, 0)?;
        let events = history
            .iter()
            .rev()
            .take(30)
            .rev()
            .map(|e| format!("{:?}: {}", e.level, e.message).to_lowercase())
            .collect();
        let evidence = Evidence {
            stack: stack.name.clone(),
            state: deployment.state.as_str().to_owned(),
            reason: deployment.reason.clone(),
            events,
            containers,
            logs,
            logs_unavailable,
            findings: crate::analyzer::analyze(&content.compose, &parsed.spec),
            compose: content.compose.clone(),
        };
        let model = match state.assistant.model_for(caller.org_id, redactor.clone()) {
            Ok(model) => Some(model),
            Err(AiError::NotConfigured) => None,
            Err(error) => return Err(error.into()),
        };
        Ok(Self { evidence, redactor, model, stack_name: stack.name, content })
    }

    fn by_rules(&self) -> Diagnosis {
        crate::ai::diagnose::by_rules(&self.evidence.clone().redacted(&self.redactor))
    }

    async fn diagnose(&self, deltas: Option<&crate::ai::provider::DeltaSink<'_>>) -> Result<Diagnosis, ApiError> {
        let check = |compose: &str| {
            let proposed = stacks::Content { compose: compose.to_owned(), ..self.content.clone() };
            stacks::validate(&self.stack_name, &proposed).map(drop).map_err(|e| e.to_string())
        };
        let model = self.model.as_ref().map(|m| m as &dyn Model);
        Ok(crate::ai::diagnose::diagnose(model, self.evidence.clone(), &self.redactor, check, deltas).await?)
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct OptimizeQuery {
    /// Readings of each container: 2 to 30 (default 5).
    #[param(minimum = 2, maximum = 30)]
    samples: Option<u32>,
    /// Time between readings: 200 to 10000 ms (default 1000).
    #[param(minimum = 200, maximum = 10000)]
    interval_ms: Option<u32>,
}

/// Measures what a deployment's containers use (CPU and memory, a few readings apart) and
/// proposes limits from it, with headroom, and the mechanical fixes of the analyser's findings,
/// as a Compose file to review. Nothing is saved. Docker deployments only.
#[utoipa::path(post, path = "/deployments/{id}/optimize", tag = "ai", params(("id" = String, Path), OptimizeQuery),
    responses((status = 200, body = crate::ai::optimize::Optimization)))]
async fn optimize_deployment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<OptimizeQuery>,
) -> Result<Json<crate::ai::optimize::Optimization>, ApiError> {
    use windflow_protocol::{JobOutcome, JobOutput, JobPayload, Platform};
    let deployment = super::deployments::load(&state, &caller, &id)?;
    let samples = in_range("samples", query.samples, 5, 2..=30)?;
    let interval_ms = in_range("interval_ms", query.interval_ms, 1000, 200..=10_000)?;
    if deployment.platform != Platform::Docker {
        return Err(ApiError::invalid(
            "id",
            format!(
                "usage is measured on the Docker engine's containers; this deployment runs on {}",
                deployment.platform.as_str()
            ),
        ));
    }
    let store = state.store.as_ref();
    let stack = stacks::get(store, deployment.stack_id)?.ok_or_else(|| ApiError::not_found("stack"))?;
    let version = stacks::version(store, stack.id, deployment.version)?
        .ok_or_else(|| ApiError::internal("a deployment's stack version is missing"))?;
    let parsed = stacks::parsed_of(&state.master_key, &stack, &version).map_err(ApiError::internal)?;
    let payload = JobPayload::SampleUsage { project: deployment.project.clone(), samples, interval_ms };
    let window = Duration::from_millis(u64::from(samples) * u64::from(interval_ms));
    let usage = match state.hub.run_job(deployment.target_id, payload, window + Duration::from_secs(30)).await? {
        JobOutcome::Succeeded(JobOutput::Usage(usage)) => usage,
        JobOutcome::Succeeded(_) => {
            return Err(ApiError::internal("the agent answered a usage job with something else"));
        }
        JobOutcome::Failed { message } => {
            return Err(ApiError::new(Code::JobFailed, format!("measuring the usage failed: {message}")));
        }
    };
    Ok(Json(crate::ai::optimize::optimize(&version.compose, &parsed.spec, &usage, samples, interval_ms)))
}
