//! `/targets`: enrolled agents with their live state, connection tests, revocation; and
//! `/targets/join-tokens`, which make the one-liner that adds a target.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use windflow_protocol::{HostFacts, JobOutcome, JobOutput, JobPayload, SwarmState};

use super::error::{ApiError, ApiJson, ApiQuery};
use super::{AppState, Page, PageQuery, rfc3339_ms, rfc3339_s};
use crate::agents::{self, Agent};
use crate::auth::Caller;
use crate::join_tokens::{self, JoinToken};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/targets", get(list))
        .route("/targets/join-tokens", post(create_join_token).get(list_join_tokens))
        .route("/targets/join-tokens/{id}", delete(revoke_join_token))
        .route("/targets/{id}", get(show).delete(remove))
        .route("/targets/{id}/test", post(test))
        .route("/targets/{id}/revoke", post(revoke))
        .route("/targets/{id}/facts", post(refresh_facts))
        .route("/targets/facts", post(refresh_all_facts))
}

#[derive(Debug, Serialize)]
struct TargetView {
    id: Uuid,
    name: String,
    kind: &'static str,
    status: &'static str,
    connected: bool,
    enrolled_at: String,
    connected_since: Option<String>,
    last_seen: Option<String>,
    remote_address: Option<String>,
    revoked_at: Option<String>,
    facts: Option<HostFacts>,
}

fn kind_of(facts: Option<&HostFacts>) -> &'static str {
    match facts.and_then(|f| f.docker.as_ref()) {
        Some(docker) if matches!(docker.swarm, SwarmState::Manager { .. }) => "swarm",
        Some(_) => "docker",
        None => "host",
    }
}

fn view(state: &AppState, agent: Agent) -> TargetView {
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
        kind: kind_of(facts.as_ref()),
        status,
        connected: live.is_some(),
        enrolled_at: rfc3339_s(agent.enrolled_at_unix_s),
        connected_since: live.as_ref().map(|l| rfc3339_ms(l.connected_since_unix_ms)),
        last_seen: live.as_ref().map(|l| l.last_seen_unix_ms).or(agent.last_seen_unix_ms).map(rfc3339_ms),
        remote_address: live.as_ref().map(|l| l.remote_address.to_string()),
        revoked_at: agent.revoked_at_unix_s.map(rfc3339_s),
        facts,
    }
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<TargetView>>, ApiError> {
    // Paged in the store: a large fleet costs a request only the page it returns.
    let (_, per_page, offset) = query.bounds()?;
    let (total, page) = agents::page(state.store.as_ref(), caller.org_id, offset, per_page)?;
    let items = page.into_iter().map(|a| view(&state, a)).collect();
    Ok(Json(query.paged(total, items)?))
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    // An id that is not a UUID cannot exist: answer exactly as for an unknown one.
    Uuid::try_parse(raw).map_err(|_| ApiError::not_found("target"))
}

/// One of the caller's organisation's targets; any other id is not found.
pub fn load(state: &AppState, caller: &Caller, raw: &str) -> Result<Agent, ApiError> {
    agents::get_in(state.store.as_ref(), caller.org_id, parse_id(raw)?)?.ok_or_else(|| ApiError::not_found("target"))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TargetView>, ApiError> {
    let agent = load(&state, &caller, &id)?;
    Ok(Json(view(&state, agent)))
}

async fn test(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let agent = load(&state, &caller, &id)?;
    let round_trip = state.hub.ping(agent.id).await?;
    Ok(Json(serde_json::json!({
        "ok": true,
        "latency_ms": round_trip.as_secs_f64() * 1000.0,
    })))
}

async fn refresh_facts(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<HostFacts>, ApiError> {
    let agent = load(&state, &caller, &id)?;
    match state.hub.run_job(agent.id, JobPayload::CollectFacts, Duration::from_secs(30)).await? {
        JobOutcome::Succeeded(JobOutput::Facts(facts)) => {
            agents::observe(state.store.as_ref(), agent.id, |a| a.facts = Some(facts.clone()))?;
            Ok(Json(facts))
        }
        JobOutcome::Succeeded(other) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "unexpected_job_output",
            format!("the agent answered {other:?}"),
        )),
        JobOutcome::Failed { message } => Err(ApiError::new(StatusCode::BAD_GATEWAY, "job_failed", message)),
    }
}

/// Refreshes the facts of every connected target at once, by signed jobs. Answers with how
/// many succeeded and how long they took (per target: p50, p99, max).
async fn refresh_all_facts(State(state): State<AppState>, caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
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
            Ok(other) => failures.push(serde_json::json!({ "target_id": agent_id, "error": format!("{other:?}") })),
            Err(error) => failures.push(serde_json::json!({ "target_id": agent_id, "error": error.to_string() })),
        }
    }
    durations.sort_by(f64::total_cmp);
    let percentile =
        |p: f64| durations.get(((durations.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);
    tracing::info!(targets = durations.len() + failures.len(), failed = failures.len(), by = %caller.username, "facts refreshed on every target");
    Ok(Json(serde_json::json!({
        "targets": durations.len() + failures.len(),
        "succeeded": durations.len(),
        "failures": failures,
        "duration_ms": elapsed.as_secs_f64() * 1000.0,
        "latency_ms": { "p50": percentile(0.5), "p99": percentile(0.99), "max": durations.last().copied().unwrap_or(0.0) },
    })))
}

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
async fn remove(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let agent = load(&state, &caller, &id)?;
    state.hub.revoke(agent.id);
    agents::delete(state.store.as_ref(), &agent)?;
    tracing::warn!(target_id = %agent.id, by = %caller.username, "target deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateJoinToken {
    #[serde(default = "one")]
    uses: u32,
    #[serde(default = "one_hour")]
    ttl_seconds: u64,
}

fn one() -> u32 {
    1
}

fn one_hour() -> u64 {
    3600
}

#[derive(Debug, Serialize)]
struct JoinTokenView {
    id: Uuid,
    created_by: String,
    created_at: String,
    expires_at: String,
    uses_allowed: u32,
    uses: u32,
    revoked: bool,
    usable: bool,
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

async fn create_join_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateJoinToken>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    if !(1..=100_000).contains(&body.uses) {
        return Err(ApiError::invalid("uses", "uses must be between 1 and 100000"));
    }
    if !(1..=30 * 86400).contains(&body.ttl_seconds) {
        return Err(ApiError::invalid("ttl_seconds", "ttl_seconds must be between 1 and 2592000 (30 days)"));
    }
    let (record, token) = join_tokens::create(
        state.store.as_ref(),
        caller.org_id,
        &caller.username,
        Duration::from_secs(body.ttl_seconds),
        body.uses,
    )?;
    tracing::info!(token_id = %record.id, uses = body.uses, by = %caller.username, "join token created");
    let command = one_liner(&state, &token);
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "id": record.id,
            "token": token,
            "expires_at": rfc3339_s(record.expires_at_unix_s),
            "uses_allowed": record.uses_allowed,
            "command": command,
        })),
    ))
}

async fn list_join_tokens(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<JoinTokenView>>, ApiError> {
    let all = join_tokens::list(state.store.as_ref(), caller.org_id)?.into_iter().map(JoinTokenView::from).collect();
    Ok(Json(query.apply(all)?))
}

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
