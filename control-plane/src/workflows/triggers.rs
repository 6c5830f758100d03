//! What starts runs on its own: cron schedules and the organisation's events. Each occurrence
//! starts one run, exactly once (see [`Engine::start_once`]): a cron occurrence is its time, an
//! event is its audit-trail entry.
//!
//! Cron: every second, each enabled workflow's cron triggers fire for their latest occurrence
//! that has passed, if it came after the workflow's version was saved and has not fired. An
//! occurrence missed while the control plane was down fires once when it is back (only the
//! latest one missed).
//!
//! Events are read from the audit trail: live, and after a restart from where the last process
//! stopped (its cursor is stored), so none is lost in between.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::engine::Engine;
use super::graph::{Action, EventKind};
use super::{Workflow, schedule};
use crate::audit::{AuditLog, Entry};
use crate::store::{Record, RecordStore, Store, StoreError, Table};

/// How many audit entries one catch-up read takes.
const PAGE: usize = 1000;

/// The audit sequence number up to which events were handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct EventCursor {
    seq: u64,
}

impl Record for EventCursor {
    const TABLE: Table = Table::WorkflowFirings;
    const VERSION: u64 = 1;
    fn key(&self) -> Vec<u8> {
        // Firing keys start with a workflow id (16 bytes); this one is shorter.
        b"event-cursor".to_vec()
    }
}

/// The event an audit entry is, if workflows can start on it.
pub fn event_of(entry: &Entry) -> Option<EventKind> {
    Some(match entry.kind.as_str() {
        "deployment.applied" => EventKind::DeploymentSucceeded,
        "deployment.failed" => EventKind::DeploymentFailed,
        "deployment.drift_repaired" => EventKind::DriftRepaired,
        "agent.connected" => EventKind::AgentConnected,
        "agent.disconnected" => EventKind::AgentDisconnected,
        _ => return None,
    })
}

fn enabled_workflows(store: &dyn Store) -> Result<Vec<(Workflow, super::Graph, i64)>, StoreError> {
    let mut found = Vec::new();
    for workflow in store.load_all::<Workflow>()?.into_iter().filter(|w| w.enabled) {
        if let Some(version) = super::version(store, workflow.id, workflow.version)? {
            let saved = version.created_at_unix_s;
            found.push((workflow, version.graph, saved));
        }
    }
    Ok(found)
}

/// Fires every cron trigger whose latest occurrence up to `now_s` has not fired; answers how
/// many runs started.
pub fn fire_due(engine: &Arc<Engine>, store: &dyn Store, now_s: i64) -> Result<usize, StoreError> {
    let mut started = 0;
    for (workflow, graph, saved_at) in enabled_workflows(store)? {
        for node in &graph.nodes {
            let Action::Cron { schedule } = &node.action else { continue };
            let Ok(cron) = schedule::parse(schedule) else { continue };
            let Some(due) = schedule::latest_at_or_before(&cron, now_s) else { continue };
            if due < saved_at {
                continue;
            }
            let payload = serde_json::json!({ "scheduled_at": crate::api::rfc3339_s(due), "schedule": schedule });
            match engine.start_once(&workflow, &node.id, payload, "cron", &format!("cron:{due}")) {
                Ok(Some(_)) => started += 1,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(workflow = %workflow.id, node = %node.id, error = %e, "a cron trigger did not start")
                }
            }
        }
    }
    Ok(started)
}

/// Starts the runs an audit entry calls for; answers how many started.
pub fn on_entry(engine: &Arc<Engine>, store: &dyn Store, entry: &Entry) -> Result<usize, StoreError> {
    let (Some(kind), Some(org_id)) = (event_of(entry), entry.org_id) else { return Ok(0) };
    let mut started = 0;
    for (workflow, graph, _) in enabled_workflows(store)?.into_iter().filter(|(w, _, _)| w.org_id == org_id) {
        for node in &graph.nodes {
            let Action::Event { events } = &node.action else { continue };
            if !events.contains(&kind) {
                continue;
            }
            let mut payload = serde_json::json!({
                "event": kind,
                "object": entry.object,
                "detail": entry.detail,
                "at": crate::api::rfc3339_ms(entry.at_unix_ms),
            });
            if let Ok(id) = uuid::Uuid::try_parse(&entry.object)
                && let Some(deployment) = crate::deployments::get(store, id)?
            {
                payload["deployment_id"] = serde_json::json!(deployment.id);
                payload["stack_id"] = serde_json::json!(deployment.stack_id);
                payload["target_id"] = serde_json::json!(deployment.target_id);
                payload["project"] = serde_json::json!(deployment.project);
            }
            match engine.start_once(&workflow, &node.id, payload, "event", &format!("event:{}", entry.seq)) {
                Ok(Some(_)) => started += 1,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(workflow = %workflow.id, node = %node.id, error = %e, "an event trigger did not start")
                }
            }
        }
    }
    Ok(started)
}

/// Handles the audit entries after the stored cursor, and moves it on.
fn catch_up(engine: &Arc<Engine>, store: &dyn Store, cursor: &mut EventCursor) -> Result<(), StoreError> {
    loop {
        // Entries are keyed by their sequence number, from 1 without gaps: entry n is at n - 1.
        let (_, entries) = store.load_page::<Entry>(cursor.seq as usize, PAGE)?;
        if entries.is_empty() {
            return Ok(());
        }
        for entry in entries {
            on_entry(engine, store, &entry)?;
            cursor.seq = entry.seq;
        }
        store.save_relaxed(cursor)?;
    }
}

/// Runs the triggers until the process ends.
pub async fn run(engine: Arc<Engine>, store: Arc<dyn Store>, audit: Arc<AuditLog>) {
    // Subscribed before catching up, so that nothing falls between the two.
    let mut live = audit.subscribe();
    let mut cursor = match store.load::<EventCursor>(&EventCursor::default().key()) {
        Ok(Some(cursor)) => cursor,
        // A first start: events from before it are history, not triggers.
        _ => EventCursor { seq: store.page(Table::Audit, 0, 0).map(|(total, _)| total as u64).unwrap_or(0) },
    };
    if let Err(e) = catch_up(&engine, store.as_ref(), &mut cursor) {
        tracing::error!(error = %e, "workflow event triggers could not catch up");
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now_s = (engine.now_ms() / 1000) as i64;
                if let Err(e) = fire_due(&engine, store.as_ref(), now_s) {
                    tracing::error!(error = %e, "workflow cron triggers failed");
                }
            }
            received = live.recv() => match received {
                Ok(entry) if entry.seq > cursor.seq => {
                    if let Err(e) = on_entry(&engine, store.as_ref(), &entry) {
                        tracing::error!(error = %e, "a workflow event trigger failed");
                    }
                    cursor.seq = entry.seq;
                    let _ = store.save_relaxed(&cursor);
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if let Err(e) = catch_up(&engine, store.as_ref(), &mut cursor) {
                        tracing::error!(error = %e, "workflow event triggers could not catch up");
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}
