//! Liveness, startup and readiness probes, and metrics. Unauthenticated by design: they reveal
//! no tenant data.
//!
//! - `/health` (liveness): the process answers.
//! - `/startup`: it has finished starting (store upgraded, workflow runs resumed, listening).
//! - `/ready`: it takes work: started, not stopping, and its store answers. A stopping control
//!   plane fails it first, so that a load balancer stops sending before the listeners close.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;
use crate::store::{RecordStore, Table};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/startup", get(startup))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
}

/// Where the control plane is in its life.
#[derive(Debug, Default)]
pub struct Lifecycle(std::sync::atomic::AtomicU8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Serving,
    Stopping,
}

impl Lifecycle {
    pub fn set(&self, phase: Phase) {
        self.0.store(phase as u8, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn phase(&self) -> Phase {
        match self.0.load(std::sync::atomic::Ordering::SeqCst) {
            0 => Phase::Starting,
            1 => Phase::Serving,
            _ => Phase::Stopping,
        }
    }
}

fn unavailable(status: &str) -> (StatusCode, Json<serde_json::Value>) {
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": status })))
}

async fn startup(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    match state.lifecycle.phase() {
        Phase::Starting => unavailable("starting"),
        Phase::Serving | Phase::Stopping => (StatusCode::OK, Json(json!({ "status": "started" }))),
    }
}

/// Ready when started, not stopping, and the store answers.
async fn ready(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    match state.lifecycle.phase() {
        Phase::Starting => return unavailable("starting"),
        Phase::Stopping => return unavailable("stopping"),
        Phase::Serving => {}
    }
    match state.store.get(Table::Users, b"admin") {
        Ok(_) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Err(e) => {
            tracing::error!(error = %e, "readiness check: store unavailable");
            unavailable("store unavailable")
        }
    }
}

async fn metrics(State(state): State<AppState>) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.hub.metrics.render(
            &[
                ("windflow_agents_connected", "Agents with a live session.", state.hub.connected_count() as u64),
                (
                    "windflow_log_follows_open",
                    "Agent log streams open for followers.",
                    state.logs.open_follows() as u64,
                ),
            ],
            &[
                ("windflow_deployments", "Deployments by state.", "state", deployments_by_state(&state)),
                (
                    "windflow_circuits_open",
                    "Circuit breakers open now, by what they guard.",
                    "kind",
                    circuits(&state, |t| t.0),
                ),
                (
                    "windflow_circuits_opened",
                    "Times circuit breakers opened since the start, by what they guard.",
                    "kind",
                    circuits(&state, |t| t.1),
                ),
            ],
        ),
    )
}

/// A figure of the circuit breakers by kind (language-model providers, the hosts workflows
/// call): `figure` picks open now (`.0`) or opened in all (`.1`).
fn circuits(state: &AppState, figure: fn((u64, u64)) -> u64) -> Vec<(String, u64)> {
    vec![
        ("llm".into(), figure(state.assistant.circuits())),
        ("webhook".into(), figure(state.outbound.totals(std::time::Instant::now()))),
        ("agent".into(), figure(state.hub.links.totals(std::time::Instant::now()))),
    ]
}

fn deployments_by_state(state: &AppState) -> Vec<(String, u64)> {
    let mut counts: std::collections::BTreeMap<&'static str, u64> =
        ["pending", "deploying", "running", "failed", "removing", "removed"].into_iter().map(|s| (s, 0)).collect();
    // Counted one record at a time: removed deployments are history, which keeps growing.
    let counted = state.store.load_where(|deployment: &crate::deployments::Deployment| {
        *counts.entry(deployment.state.as_str()).or_default() += 1;
        false
    });
    if let Err(error) = counted {
        tracing::warn!(%error, "deployments could not be counted for the metrics");
    }
    counts.into_iter().map(|(state, count)| (state.to_owned(), count)).collect()
}
