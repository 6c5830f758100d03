//! Workflows: versioned graphs of typed nodes an organisation draws to automate its operations,
//! and their durable runs.
//!
//! `graph` is the model and its checks, `expr` the templates and expressions (minijinja),
//! `transform` the jq filters (jaq), `schedule` cron schedules, `plan` a run's progress as a pure
//! state machine, `triggers` what starts runs on their own (cron, events, webhooks), and `engine` what drives runs (persisting every step, resuming after a restart).
//! What the action nodes do to the world is `api::workflow_actions`, through the API's own
//! operations.

pub mod catalog;
pub mod engine;
pub mod expr;
pub mod graph;
pub mod plan;
pub mod schedule;
pub mod transform;
pub mod triggers;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::{Check, Record, RecordStore, Store, StoreError, Table, Write};
pub use graph::Graph;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    pub id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    pub description: String,
    /// The latest version; runs start from it.
    pub version: u32,
    /// Runs at once at most; more wait their turn.
    pub concurrency: u32,
    /// Off: its triggers do not fire (a manual run still starts).
    pub enabled: bool,
    /// The webhook trigger's secret, sealed.
    pub webhook_secret: Option<String>,
    pub created_by: String,
    pub created_at_unix_s: i64,
    pub updated_at_unix_s: i64,
}

impl Record for Workflow {
    const TABLE: Table = Table::Workflows;
    const VERSION: u64 = 1;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
}

/// One saved graph of a workflow; never changed once stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowVersion {
    pub workflow_id: Uuid,
    pub version: u32,
    pub graph: Graph,
    pub created_by: String,
    pub created_at_unix_s: i64,
}

impl Record for WorkflowVersion {
    const TABLE: Table = Table::WorkflowVersions;
    const VERSION: u64 = 1;
    fn key(&self) -> Vec<u8> {
        version_key(self.workflow_id, self.version)
    }
}

fn version_key(workflow_id: Uuid, version: u32) -> Vec<u8> {
    let mut key = workflow_id.as_bytes().to_vec();
    key.extend_from_slice(&version.to_be_bytes());
    key
}

pub fn get(store: &dyn Store, id: Uuid) -> Result<Option<Workflow>, StoreError> {
    store.load(id.as_bytes())
}

pub fn get_in(store: &dyn Store, org_id: Uuid, id: Uuid) -> Result<Option<Workflow>, StoreError> {
    Ok(get(store, id)?.filter(|w| w.org_id == org_id))
}

pub fn list_in(store: &dyn Store, org_id: Uuid) -> Result<Vec<Workflow>, StoreError> {
    Ok(store.load_all::<Workflow>()?.into_iter().filter(|w| w.org_id == org_id).collect())
}

pub fn version(store: &dyn Store, workflow_id: Uuid, version: u32) -> Result<Option<WorkflowVersion>, StoreError> {
    store.load(&version_key(workflow_id, version))
}

pub fn versions(store: &dyn Store, workflow_id: Uuid) -> Result<Vec<WorkflowVersion>, StoreError> {
    store.load_prefix(workflow_id.as_bytes())
}

/// Stores a workflow and its new version together; `previous` (the stored workflow, for an
/// update) must not have changed meanwhile. False when it had.
pub fn save(
    store: &dyn Store,
    previous: Option<&Workflow>,
    workflow: &Workflow,
    version: &WorkflowVersion,
) -> Result<bool, StoreError> {
    let check = Check { table: Table::Workflows, key: workflow.key(), expected: previous.map(Record::encode) };
    let checks = [check, Check { table: Table::WorkflowVersions, key: version.key(), expected: None }];
    let writes = [
        Write { table: Table::Workflows, key: workflow.key(), value: Some(workflow.encode()) },
        Write { table: Table::WorkflowVersions, key: version.key(), value: Some(version.encode()) },
    ];
    store.atomic(&checks, &writes)
}

/// Deletes a workflow with its versions, runs and their logs.
pub fn delete(store: &dyn Store, workflow: &Workflow) -> Result<(), StoreError> {
    let mut writes = vec![Write { table: Table::Workflows, key: workflow.key(), value: None }];
    for table in [Table::WorkflowVersions, Table::WorkflowFirings] {
        for (key, _) in store.scan_prefix(table, workflow.id.as_bytes())? {
            writes.push(Write { table, key, value: None });
        }
    }
    for run in engine::runs_of(store, workflow.id)? {
        writes.push(Write { table: Table::WorkflowRuns, key: run.key(), value: None });
        for (key, _) in store.scan_prefix(Table::WorkflowLogs, run.id.as_bytes())? {
            writes.push(Write { table: Table::WorkflowLogs, key, value: None });
        }
    }
    store.atomic(&[], &writes)?;
    Ok(())
}
#[cfg(test)]
mod tests;
