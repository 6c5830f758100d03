//! `/targets`: enrolled agents with their live state, connection tests, revocation; and
//! `/targets/join-tokens`, which make the one-liner that adds a target.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;
use windflow_protocol::{Capability, HostFacts, JobOutcome, JobOutput, JobPayload, Platform, SwarmState};

use super::error::{ApiError, ApiJson, ApiQuery, Code};
use super::{AppState, Page, PageQuery, rfc3339_ms, rfc3339_s};
use crate::agents::{self, Agent};
use crate::auth::Caller;
use crate::join_tokens::{self, JoinToken};
use crate::labels::Labels;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(create_join_token, list_join_tokens))
        .routes(routes!(revoke_join_token))
        .routes(routes!(show, update, remove))
        .routes(routes!(history))
        .routes(routes!(test))
        .routes(routes!(revoke))
        .routes(routes!(refresh_facts))
        .routes(routes!(refresh_all_facts))
}

/// A host running an agent.
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetView {
    id: Uuid,
    name: String,
    /// `swarm` (a Swarm manager), `docker`, `kubernetes` (cluster access), `libvirt` (a
    /// hypervisor alone) or `host` (nothing found).
    kind: &'static str,
    /// `connected`, `disconnected` or `revoked`.
    status: &'static str,
    connected: bool,
    enrolled_at: String,
    connected_since: Option<String>,
    last_seen: Option<String>,
    remote_address: Option<String>,
    revoked_at: Option<String>,
    /// Key–value labels (`env=prod`), for filtering and grouping.
    labels: Labels,
    facts: Option<FactsView>,
    /// What the agent can deploy to; empty before the target was ever seen.
    capabilities: Vec<CapabilityView>,
}

/// What the agent reported about its host.
#[derive(Debug, Serialize, ToSchema)]
pub struct FactsView {
    hostname: String,
    /// The operating system's pretty name.
    os: String,
    arch: String,
    kernel: String,
    cpus: u32,
    memory_bytes: u64,
    docker: Option<DockerView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DockerView {
    version: String,
    api_version: String,
    /// `inactive`, `manager`, `worker`, or the engine's own word (pending, locked…).
    swarm: String,
    swarm_node_id: Option<String>,
}

impl From<HostFacts> for FactsView {
    fn from(facts: HostFacts) -> Self {
        Self {
            hostname: facts.hostname,
            os: facts.os,
            arch: facts.arch,
            kernel: facts.kernel,
            cpus: facts.cpus,
            memory_bytes: facts.memory_bytes,
            docker: facts.docker.map(|docker| {
                let (swarm, swarm_node_id) = match docker.swarm {
                    SwarmState::Inactive => ("inactive".to_owned(), None),
                    SwarmState::Manager { node_id } => ("manager".to_owned(), Some(node_id)),
                    SwarmState::Worker { node_id } => ("worker".to_owned(), Some(node_id)),
                    SwarmState::Other(other) => (other, None),
                };
                DockerView { version: docker.version, api_version: docker.api_version, swarm, swarm_node_id }
            }),
        }
    }
}

/// What the target can drive: as its agent last reported, else as its facts tell (agents
/// older than capability reports); `None` before the target was ever seen.
pub(super) fn capabilities(state: &AppState, agent: &Agent) -> Option<Vec<Capability>> {
    let live = state.hub.status(agent.id);
    if let Some(reported) = live.as_ref().and_then(|l| l.capabilities.clone()).or_else(|| agent.capabilities.clone()) {
        return Some(reported);
    }
    let facts = live.map(|l| l.facts).or_else(|| agent.facts.clone())?;
    Some(Capability::of_engine(&facts).to_vec())
}

/// The platform a stack runs on by default on a target with these capabilities: Swarm
/// services on a manager, else containers, else Kubernetes objects.
pub(super) fn default_platform(capabilities: &[Capability]) -> Option<Platform> {
    [Platform::Swarm, Platform::Docker, Platform::Kubernetes]
        .into_iter()
        .find(|p| capabilities.iter().any(|c| c.platform == *p && c.available))
}

/// What the target is, for people and filters: its default platform, `libvirt` for a
/// hypervisor alone, `host` when nothing answers.
fn kind_of(capabilities: Option<&[Capability]>) -> &'static str {
    let capabilities = capabilities.unwrap_or_default();
    match default_platform(capabilities) {
        Some(platform) => platform.as_str(),
        None if capabilities.iter().any(|c| c.platform == Platform::Libvirt && c.available) => "libvirt",
        None => "host",
    }
}

/// A platform the agent can or cannot drive, and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct CapabilityView {
    /// `docker`, `swarm`, `kubernetes` or `libvirt`.
    platform: &'static str,
    available: bool,
    /// The version found, or why the platform is absent.
    detail: String,
}

fn view(state: &AppState, agent: Agent) -> TargetView {
    let capabilities = capabilities(state, &agent);
    let live = state.hub.status(agent.id);
    let facts = live.as_ref().map(|l| l.facts.clone()).or(agent.facts);
    let status = match (&agent.revoked_at_unix_s, &live) {
        (Some(_), _) => "revoked",
        (None, Some(_)) => "connected",
        (None, None) => "disconnected",
    };
    TargetView {
        id: agent.id,
        name: agent.name,
        kind: kind_of(capabilities.as_deref()),
        status,
        connected: live.is_some(),
        enrolled_at: rfc3339_s(agent.enrolled_at_unix_s),
        connected_since: live.as_ref().map(|l| rfc3339_ms(l.connected_since_unix_ms)),
        last_seen: live.as_ref().map(|l| l.last_seen_unix_ms).or(agent.last_seen_unix_ms).map(rfc3339_ms),
        remote_address: live.as_ref().map(|l| l.remote_address.to_string()),
        revoked_at: agent.revoked_at_unix_s.map(rfc3339_s),
        labels: agent.labels,
        facts: facts.map(FactsView::from),
        capabilities: capabilities
            .unwrap_or_default()
            .into_iter()
            .map(|c| CapabilityView { platform: c.platform.as_str(), available: c.available, detail: c.detail })
            .collect(),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Targets whose name or host name contains this (any case).
    q: Option<String>,
    /// `connected`, `disconnected` or `revoked`.
    status: Option<String>,
    /// `docker`, `swarm`, `kubernetes`, `libvirt` or `host`.
    kind: Option<String>,
    /// Label selectors, comma separated: `env=prod,group` (a bare key: has that label).
    label: Option<String>,
    #[param(minimum = 1, maximum = 1000000)]
    page: Option<usize>,
    #[param(minimum = 1, maximum = 500)]
    per_page: Option<usize>,
}

/// The organisation's targets, with optional filters.
#[utoipa::path(get, path = "/targets", tag = "targets", params(ListQuery),
    responses((status = 200, body = Page<TargetView>)))]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<TargetView>>, ApiError> {
    let paging = PageQuery { page: query.page, per_page: query.per_page };
    let given = |filter: &Option<String>| filter.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
    let (q, status, kind, label) = (given(&query.q), given(&query.status), given(&query.kind), given(&query.label));
    if q.is_none() && status.is_none() && kind.is_none() && label.is_none() {
        // Paged in the store: a large fleet costs a request only the page it returns.
        let (_, per_page, offset) = paging.bounds()?;
        let (total, page) = agents::page(state.store.as_ref(), caller.org_id, offset, per_page)?;
        let items = page.into_iter().map(|a| view(&state, a)).collect();
        return Ok(Json(paging.paged(total, items)?));
    }
    if let Some(wanted) = &status
        && !["connected", "disconnected", "revoked"].contains(&wanted.as_str())
    {
        return Err(ApiError::invalid("status", "status must be connected, disconnected or revoked"));
    }
    let selectors: Vec<String> = label.iter().flat_map(|l| l.split(',')).map(str::to_owned).collect();
    let needle = q.map(|q| q.to_lowercase());
    let mut matching = Vec::new();
    for id in agents::ids_in(state.store.as_ref(), caller.org_id)? {
        let Some(agent) = agents::get(state.store.as_ref(), id)? else { continue };
        if !selectors.iter().all(|s| crate::labels::matches(&agent.labels, s)) {
            continue;
        }
        let target = view(&state, agent);
        let named = |n: &Option<String>| {
            n.as_ref().is_none_or(|n| {
                target.name.to_lowercase().contains(n)
                    || target.facts.as_ref().is_some_and(|f| f.hostname.to_lowercase().contains(n))
            })
        };
        if named(&needle)
            && status.as_deref().is_none_or(|s| target.status == s)
            && kind.as_deref().is_none_or(|k| target.kind == k)
        {
            matching.push(target);
        }
    }
    Ok(Json(paging.apply(matching)?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTarget {
    /// 1 to 253 characters.
    #[schema(min_length = 1, max_length = 253, pattern = r"\S")]
    name: Option<String>,
    /// Replaces every label.
    labels: Option<Labels>,
}

/// Renames a target or sets its labels.
#[utoipa::path(patch, path = "/targets/{id}", tag = "targets", params(("id" = String, Path)), request_body = UpdateTarget,
    responses((status = 200, body = TargetView)))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateTarget>,
) -> Result<Json<TargetView>, ApiError> {
    let agent = load(&state, &caller, &id)?;
    let name = body.name.as_deref().map(str::trim);
    if name.is_some_and(|n| n.is_empty() || n.len() > 253) {
        return Err(ApiError::invalid("name", "name must be 1 to 253 characters"));
    }
    if let Some(labels) = &body.labels {
        crate::labels::check(labels).map_err(|e| ApiError::invalid("labels", e.to_string()))?;
    }
    let agent = agents::update(state.store.as_ref(), agent.id, |a| {
        if let Some(name) = name {
            a.name = name.to_owned();
        }
        if let Some(labels) = body.labels {
            a.labels = labels;
        }
    })?
    .ok_or_else(|| ApiError::not_found("target"))?;
    Ok(Json(view(&state, agent)))
}

/// A moment of a target's connection history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryEntry {
    at: String,
    /// `agent.connected`, `agent.disconnected`, `agent.refused`, `agent.revoked`.
    kind: String,
    detail: Option<String>,
    remote: Option<String>,
}

/// The target's connection history, newest first.
#[utoipa::path(get, path = "/targets/{id}/history", tag = "targets", params(("id" = String, Path), PageQuery),
    responses((status = 200, body = Page<HistoryEntry>)))]
async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<HistoryEntry>>, ApiError> {
    let agent = load(&state, &caller, &id)?;
    let object = agent.id.to_string();
    let mut entries: Vec<HistoryEntry> = state
        .audit
        .entries()?
        .into_iter()
        .filter(|e| e.kind.starts_with("agent.") && e.object == object)
        .map(|e| HistoryEntry { at: rfc3339_ms(e.at_unix_ms), kind: e.kind, detail: e.detail, remote: e.remote })
        .collect();
    entries.reverse();
    Ok(Json(query.apply(entries)?))
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    // An id that is not a UUID cannot exist: answer exactly as for an unknown one.
    Uuid::try_parse(raw).map_err(|_| ApiError::not_found("target"))
}

/// One of the caller's organisation's targets; any other id is not found.
pub fn load(state: &AppState, caller: &Caller, raw: &str) -> Result<Agent, ApiError> {
    agents::get_in(state.store.as_ref(), caller.org_id, parse_id(raw)?)?.ok_or_else(|| ApiError::not_found("target"))
}

/// A target with its live state and host facts.
#[utoipa::path(get, path = "/targets/{id}", tag = "targets", params(("id" = String, Path)),
    responses((status = 200, body = TargetView)))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TargetView>, ApiError> {
    let agent = load(&state, &caller, &id)?;
    Ok(Json(view(&state, agent)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PingResult {
    ok: bool,
    /// The round trip through the agent.
    latency_ms: f64,
}

/// Round-trips a ping through the target's agent.
#[utoipa::path(post, path = "/targets/{id}/test", tag = "targets", params(("id" = String, Path)),
    responses((status = 200, body = PingResult)))]
async fn test(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<PingResult>, ApiError> {
    let agent = load(&state, &caller, &id)?;
    let round_trip = state.hub.ping(agent.id).await?;
    Ok(Json(PingResult { ok: true, latency_ms: round_trip.as_secs_f64() * 1000.0 }))
}

/// Has the agent collect its host's facts again, by a signed job.
#[utoipa::path(post, path = "/targets/{id}/facts", tag = "targets", params(("id" = String, Path)),
    responses((status = 200, body = FactsView)))]
async fn refresh_facts(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<FactsView>, ApiError> {
    let agent = load(&state, &caller, &id)?;
    match state.hub.run_job(agent.id, JobPayload::CollectFacts, Duration::from_secs(30)).await? {
        JobOutcome::Succeeded(JobOutput::Facts(facts)) => {
            agents::observe(state.store.as_ref(), agent.id, |a| a.facts = Some(facts.clone()))?;
            Ok(Json(facts.into()))
        }
        JobOutcome::Succeeded(other) => {
            Err(ApiError::new(Code::JobFailed, format!("the agent answered with something else: {other:?}")))
        }
        JobOutcome::Failed { message } => Err(ApiError::new(Code::JobFailed, message)),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FanOutFailure {
    target_id: Uuid,
    error: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FanOutResult {
    /// Connected targets asked.
    targets: usize,
    succeeded: usize,
    failures: Vec<FanOutFailure>,
    duration_ms: f64,
    /// Per target, in milliseconds.
    latency_ms: Latency,
}

/// Refreshes the facts of every connected target at once, by signed jobs. Answers with how
/// many succeeded and how long they took (per target: p50, p99, max).
#[utoipa::path(post, path = "/targets/facts", tag = "targets", responses((status = 200, body = FanOutResult)))]
async fn refresh_all_facts(State(state): State<AppState>, caller: Caller) -> Result<Json<FanOutResult>, ApiError> {
    let started = std::time::Instant::now();
    let connected: std::collections::HashSet<Uuid> = state.hub.connected_agents().into_iter().collect();
    let ours = agents::ids_in(state.store.as_ref(), caller.org_id)?.into_iter().filter(|id| connected.contains(id));
    let results = state.hub.fan_out(ours, JobPayload::CollectFacts, Duration::from_secs(60)).await;
    let elapsed = started.elapsed();
    let mut durations: Vec<f64> = Vec::with_capacity(results.len());
    let mut failures = Vec::new();
    for (agent_id, took, outcome) in results {
        match outcome {
            Ok(JobOutcome::Succeeded(JobOutput::Facts(facts))) => {
                durations.push(took.as_secs_f64() * 1000.0);
                state.hub.update_facts(agent_id, facts);
            }
            Ok(other) => failures.push(FanOutFailure { target_id: agent_id, error: format!("{other:?}") }),
            Err(error) => failures.push(FanOutFailure { target_id: agent_id, error: error.to_string() }),
        }
    }
    durations.sort_by(f64::total_cmp);
    let percentile =
        |p: f64| durations.get(((durations.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);
    tracing::info!(targets = durations.len() + failures.len(), failed = failures.len(), by = %caller.username, "facts refreshed on every target");
    Ok(Json(FanOutResult {
        targets: durations.len() + failures.len(),
        succeeded: durations.len(),
        duration_ms: elapsed.as_secs_f64() * 1000.0,
        latency_ms: Latency {
            p50: percentile(0.5),
            p99: percentile(0.99),
            max: durations.last().copied().unwrap_or(0.0),
        },
        failures,
    }))
}

/// Closes the agent's connection now and refuses it afterwards.
#[utoipa::path(post, path = "/targets/{id}/revoke", tag = "targets", params(("id" = String, Path)),
    responses((status = 200, body = TargetView)))]
async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TargetView>, ApiError> {
    let agent = load(&state, &caller, &id)?;
    let agent = agents::update(state.store.as_ref(), agent.id, |a| {
        a.revoked_at_unix_s.get_or_insert(crate::auth::now_unix_s());
    })?
    .ok_or_else(|| ApiError::not_found("target"))?;
    state.hub.revoke(agent.id);
    tracing::warn!(target_id = %agent.id, by = %caller.username, "target revoked");
    Ok(Json(view(&state, agent)))
}

/// Revokes and forgets a target.
#[utoipa::path(delete, path = "/targets/{id}", tag = "targets", params(("id" = String, Path)),
    responses((status = 204, description = "Revoked and forgotten")))]
async fn remove(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let agent = load(&state, &caller, &id)?;
    state.hub.revoke(agent.id);
    agents::delete(state.store.as_ref(), &agent)?;
    tracing::warn!(target_id = %agent.id, by = %caller.username, "target deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"uses": 10, "ttl_seconds": 86400}))]
pub struct CreateJoinToken {
    /// How many hosts may enrol with it: 1 to 100,000.
    #[serde(default = "one")]
    #[schema(default = 1, minimum = 1, maximum = 100000)]
    uses: u32,
    /// Lifetime: 1 s to 30 days.
    #[serde(default = "one_hour")]
    #[schema(default = 3600, minimum = 1, maximum = 2592000)]
    ttl_seconds: u64,
    /// The name of the target it enrolls (a token for one host), in place of the host's name.
    #[schema(min_length = 1, max_length = 253, pattern = r"\S")]
    name: Option<String>,
    /// Labels the targets it enrolls start with.
    #[serde(default)]
    labels: Labels,
}

fn one() -> u32 {
    1
}

fn one_hour() -> u64 {
    3600
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JoinTokenView {
    id: Uuid,
    created_by: String,
    created_at: String,
    expires_at: String,
    uses_allowed: u32,
    uses: u32,
    revoked: bool,
    usable: bool,
    /// The name the target it enrolls gets.
    name: Option<String>,
    labels: Labels,
}

impl From<JoinToken> for JoinTokenView {
    fn from(t: JoinToken) -> Self {
        Self {
            usable: t.is_usable(crate::auth::now_unix_s()),
            id: t.id,
            created_by: t.created_by,
            created_at: rfc3339_s(t.created_at_unix_s),
            expires_at: rfc3339_s(t.expires_at_unix_s),
            uses_allowed: t.uses_allowed,
            uses: t.uses,
            revoked: t.revoked,
            name: t.assign.name,
            labels: t.assign.labels,
        }
    }
}

/// The command a user pastes on a new server. The pin authenticates the control plane before
/// anything is downloaded; the token goes to `sh` in its environment, never over plain HTTP.
pub fn one_liner(state: &AppState, token: &str) -> String {
    format!(
        "curl -fsSL --pinnedpubkey '{pin}' -k '{url}/install.sh' | WINDFLOW_JOIN_TOKEN='{token}' sh",
        pin = state.pki.server_pin(),
        url = state.settings.public_url,
    )
}

/// The command that installs the agent into the Kubernetes cluster `kubectl` points at: the
/// manifests come over the pinned channel, the token is put in on the user's machine.
pub fn cluster_one_liner(state: &AppState, token: &str) -> String {
    format!(
        "curl -fsSL --pinnedpubkey '{pin}' -k '{url}/kubernetes/agent.yaml' | sed 's/@@JOIN_TOKEN@@/{token}/' | kubectl apply -f -",
        pin = state.pki.server_pin(),
        url = state.settings.public_url,
    )
}

/// A new join token: its secret and the one-liner that uses it, in this answer only.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedJoinToken {
    id: Uuid,
    token: String,
    expires_at: String,
    uses_allowed: u32,
    /// The command to paste on a new host.
    command: String,
    /// The command that installs the agent into a Kubernetes cluster (run where `kubectl` works).
    kubernetes_command: String,
}

/// Makes a join token and the one-liner that enrols a host with it.
#[utoipa::path(post, path = "/targets/join-tokens", tag = "targets", request_body = CreateJoinToken,
    responses((status = 201, body = CreatedJoinToken)))]
async fn create_join_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateJoinToken>,
) -> Result<(StatusCode, Json<CreatedJoinToken>), ApiError> {
    if !(1..=100_000).contains(&body.uses) {
        return Err(ApiError::invalid("uses", "uses must be between 1 and 100000"));
    }
    if !(1..=30 * 86400).contains(&body.ttl_seconds) {
        return Err(ApiError::invalid("ttl_seconds", "ttl_seconds must be between 1 and 2592000 (30 days)"));
    }
    let name = body.name.as_deref().map(str::trim).map(str::to_owned);
    if name.as_ref().is_some_and(|n| n.is_empty() || n.len() > 253) {
        return Err(ApiError::invalid("name", "name must be 1 to 253 characters"));
    }
    crate::labels::check(&body.labels).map_err(|e| ApiError::invalid("labels", e.to_string()))?;
    let (record, token) = join_tokens::create(
        state.store.as_ref(),
        caller.org_id,
        &caller.username,
        Duration::from_secs(body.ttl_seconds),
        body.uses,
        join_tokens::Assign { name, labels: body.labels },
    )?;
    tracing::info!(token_id = %record.id, uses = body.uses, by = %caller.username, "join token created");
    let command = one_liner(&state, &token);
    let kubernetes_command = cluster_one_liner(&state, &token);
    Ok((
        StatusCode::CREATED,
        Json(CreatedJoinToken {
            id: record.id,
            token,
            expires_at: rfc3339_s(record.expires_at_unix_s),
            uses_allowed: record.uses_allowed,
            command,
            kubernetes_command,
        }),
    ))
}

/// The organisation's join tokens (never their secrets).
#[utoipa::path(get, path = "/targets/join-tokens", tag = "targets", params(PageQuery),
    responses((status = 200, body = Page<JoinTokenView>)))]
async fn list_join_tokens(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<JoinTokenView>>, ApiError> {
    let all = join_tokens::list(state.store.as_ref(), caller.org_id)?.into_iter().map(JoinTokenView::from).collect();
    Ok(Json(query.apply(all)?))
}

/// Revokes a join token: hosts can no longer enrol with it.
#[utoipa::path(delete, path = "/targets/join-tokens/{id}", tag = "targets", params(("id" = String, Path)),
    responses((status = 204, description = "Revoked")))]
async fn revoke_join_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = Uuid::try_parse(&id).map_err(|_| ApiError::not_found("join token"))?;
    if !join_tokens::revoke(state.store.as_ref(), caller.org_id, id)? {
        return Err(ApiError::not_found("join token"));
    }
    tracing::info!(token_id = %id, by = %caller.username, "join token revoked");
    Ok(StatusCode::NO_CONTENT)
}
