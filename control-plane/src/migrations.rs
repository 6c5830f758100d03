//! Moving a deployment to another target, and so possibly another platform (Docker → Swarm),
//! as a saga over two deployments: the destination is created and deployed by the reconciler
//! like any other; once it runs (healthy: the drivers wait for health and convergence), the
//! source is removed if asked; if the destination fails, or does not run within the deadline,
//! it is removed again and the source is left as it was.
//!
//! [`advance`] is the saga itself, a pure function of the migration and what its two
//! deployments show; [`run`] persists its decisions and carries them out by changing what the
//! deployments desire, never their state (the reconciler's alone).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::audit::{AuditLog, Fact};
use crate::auth::now_unix_s;
use crate::deployments::{self, Deployment, Desired, Level, Reconciler, State};
use crate::store::{Record, RecordStore, Store, StoreError, Table};

/// How long the destination has to run before the migration gives up and compensates.
pub const DEADLINE_S: i64 = 15 * 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// The destination is being deployed; waiting until it runs.
    Deploying,
    /// The destination runs; the source is being removed.
    RemovingSource,
    /// The destination failed; it is being removed, the source is untouched.
    Compensating,
    /// Done: the destination runs the stack.
    Done,
    /// Failed: the destination was removed, the source runs as before.
    Failed,
}

impl Step {
    pub fn is_over(self) -> bool {
        matches!(self, Step::Done | Step::Failed)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Migration {
    pub id: Uuid,
    pub org_id: Uuid,
    pub source_id: Uuid,
    pub destination_id: Uuid,
    /// Remove the source once the destination runs (its named volumes are kept).
    pub remove_source: bool,
    pub step: Step,
    /// Why it failed, or what went wrong on the way (a source that could not be removed).
    pub reason: Option<String>,
    pub created_by: String,
    pub created_at_unix_s: i64,
    pub updated_at_unix_s: i64,
}

impl Record for Migration {
    const TABLE: Table = Table::Migrations;
    const VERSION: u64 = 1;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
}

pub fn get_in(store: &dyn Store, org_id: Uuid, id: Uuid) -> Result<Option<Migration>, StoreError> {
    Ok(store.load::<Migration>(id.as_bytes())?.filter(|m| m.org_id == org_id))
}

pub fn list_in(store: &dyn Store, org_id: Uuid) -> Result<Vec<Migration>, StoreError> {
    Ok(store.load_all::<Migration>()?.into_iter().filter(|m| m.org_id == org_id).collect())
}

/// The unfinished migration of a deployment (as source or destination), if any.
pub fn active_for(store: &dyn Store, deployment_id: Uuid) -> Result<Option<Migration>, StoreError> {
    Ok(store
        .load_all::<Migration>()?
        .into_iter()
        .find(|m| !m.step.is_over() && (m.source_id == deployment_id || m.destination_id == deployment_id)))
}

/// What the saga does to a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    RemoveSource,
    RemoveDestination,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub step: Step,
    pub action: Option<Action>,
    pub level: Level,
    /// Told in both deployments' events.
    pub message: String,
    pub reason: Option<String>,
}

fn removed(d: Option<&Deployment>) -> bool {
    d.is_none_or(|d| d.state == State::Removed)
}

/// The saga's next step, from what its deployments show now; `None` while it waits.
pub fn advance(
    migration: &Migration,
    source: Option<&Deployment>,
    destination: Option<&Deployment>,
    now_unix_s: i64,
) -> Option<Decision> {
    let decide = |step, action, level, message: String, reason: Option<String>| {
        Some(Decision { step, action, level, message, reason })
    };
    let compensate = |why: String| {
        decide(
            Step::Compensating,
            Some(Action::RemoveDestination),
            Level::Error,
            format!("migration: {why}; removing the destination, the source is untouched"),
            Some(why),
        )
    };
    match migration.step {
        Step::Deploying => {
            let Some(destination) = destination else {
                return decide(
                    Step::Failed,
                    None,
                    Level::Error,
                    "migration: the destination deployment is gone".into(),
                    Some("the destination deployment is gone".into()),
                );
            };
            if matches!(destination.desired, Desired::Removed { .. }) {
                return compensate("the destination was removed".into());
            }
            match destination.state {
                State::Running if destination.is_settled() && migration.remove_source => decide(
                    Step::RemovingSource,
                    Some(Action::RemoveSource),
                    Level::Info,
                    "migration: the destination runs; removing the source (its named volumes are kept)".into(),
                    None,
                ),
                State::Running if destination.is_settled() => decide(
                    Step::Done,
                    None,
                    Level::Info,
                    "migration: done; the destination runs the stack and the source was left running".into(),
                    None,
                ),
                State::Failed if destination.is_settled() => compensate(format!(
                    "the destination failed: {}",
                    destination.reason.as_deref().unwrap_or("no reason given")
                )),
                _ if now_unix_s - migration.created_at_unix_s > DEADLINE_S => {
                    compensate(format!("the destination did not run within {} minutes", DEADLINE_S / 60))
                }
                _ => None,
            }
        }
        Step::RemovingSource => match source {
            _ if removed(source) => decide(
                Step::Done,
                None,
                Level::Info,
                "migration: done; the destination runs the stack and the source was removed".into(),
                None,
            ),
            Some(source) if source.state == State::Failed && source.is_settled() => {
                let why = format!(
                    "the source could not be removed: {}",
                    source.reason.as_deref().unwrap_or("no reason given")
                );
                decide(Step::Done, None, Level::Warning, format!("migration: done, but {why}"), Some(why))
            }
            _ => None,
        },
        Step::Compensating => match destination {
            _ if removed(destination) => decide(
                Step::Failed,
                None,
                Level::Error,
                "migration: failed; the destination was removed and the source runs as before".into(),
                migration.reason.clone(),
            ),
            Some(destination) if destination.state == State::Failed && destination.is_settled() => {
                let why = format!(
                    "{}; the destination could not be removed either: {}",
                    migration.reason.as_deref().unwrap_or("the migration failed"),
                    destination.reason.as_deref().unwrap_or("no reason given")
                );
                decide(Step::Failed, None, Level::Error, format!("migration: failed; {why}"), Some(why))
            }
            _ => None,
        },
        Step::Done | Step::Failed => None,
    }
}

/// Drives every unfinished migration until `shutdown`.
pub async fn run(
    store: Arc<dyn Store>,
    reconciler: Arc<Reconciler>,
    audit: Arc<AuditLog>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    crate::saga::run("migration", shutdown, || pass(store.as_ref(), &reconciler, &audit)).await
}

fn pass(store: &dyn Store, reconciler: &Reconciler, audit: &AuditLog) -> Result<(), StoreError> {
    for migration in store.load_all::<Migration>()?.into_iter().filter(|m| !m.step.is_over()) {
        let source = deployments::get(store, migration.source_id)?;
        let destination = deployments::get(store, migration.destination_id)?;
        let Some(decision) = advance(&migration, source.as_ref(), destination.as_ref(), now_unix_s()) else {
            continue;
        };
        // The action first: if it is lost to a crash, the next pass decides it again.
        match decision.action {
            Some(Action::RemoveSource) => crate::saga::remove(store, migration.source_id, false)?,
            Some(Action::RemoveDestination) => crate::saga::remove(store, migration.destination_id, true)?,
            None => {}
        }
        let next = Migration {
            step: decision.step,
            reason: decision.reason.clone().or_else(|| migration.reason.clone()),
            updated_at_unix_s: now_unix_s(),
            ..migration.clone()
        };
        if !store.replace(&migration, &next)? {
            continue;
        }
        for id in [migration.source_id, migration.destination_id] {
            reconciler.events.append(id, decision.level, decision.message.clone(), None);
        }
        if next.step.is_over() {
            audit.record(Fact {
                actor: "system".into(),
                kind: if next.step == Step::Done { "migration.done" } else { "migration.failed" },
                object: migration.id.to_string(),
                detail: Some(decision.message.clone()),
                org_id: Some(migration.org_id),
                ..Fact::default()
            });
        }
        reconciler.wake();
    }
    Ok(())
}

#[cfg(test)]
mod tests;
