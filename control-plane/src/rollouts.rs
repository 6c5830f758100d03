//! Rolling a stack version out to several targets as one operation: a saga over one deployment
//! per target. Each part either updates the stack's deployment already on that target or
//! creates one. The rollout is done once every part runs the version; if a part fails (or the
//! rollout does not finish within its deadline), every part is compensated: a deployment the
//! rollout created is removed, one it updated is put back on the version it ran before. No
//! target is left on the new version while another could not take it.
//!
//! [`advance`] is the saga, a pure function of the rollout and what its deployments show;
//! [`run`] persists its decisions and carries them out by changing what the deployments desire,
//! never their state (the reconciler's alone), action first: an action lost to a crash is
//! decided again on the next pass.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::audit::{AuditLog, Fact};
use crate::auth::now_unix_s;
use crate::deployments::{self, Deployment, Desired, Level, Reconciler, State};
use crate::store::{Record, RecordStore, Store, StoreError, Table};

/// How long every part has to run before the rollout gives up and compensates.
pub const DEADLINE_S: i64 = 15 * 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// The parts are being deployed; waiting until every one runs.
    Deploying,
    /// A part failed: every part is being put back as it was.
    Compensating,
    /// Every target runs the version.
    Done,
    /// A part failed; every part was put back as it was before the rollout.
    Failed,
}

impl Step {
    pub fn is_over(self) -> bool {
        matches!(self, Step::Done | Step::Failed)
    }
}

/// What a part's deployment was before the rollout: what compensating it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Before {
    /// The rollout created it: compensating removes it (with its volumes, which it made).
    Created,
    /// It ran `version` before: compensating deploys that version again.
    Updated { version: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PartState {
    Deploying,
    Running,
    Failed,
    /// Put back as it was (removed, or on its previous version).
    Compensated,
    /// Could not be put back: its reason says why.
    CompensationFailed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    pub target_id: Uuid,
    pub deployment_id: Uuid,
    pub before: Before,
    pub state: PartState,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: Uuid,
    pub org_id: Uuid,
    pub stack_id: Uuid,
    pub version: u32,
    pub parts: Vec<Part>,
    pub step: Step,
    pub reason: Option<String>,
    pub created_by: String,
    pub created_at_unix_s: i64,
    pub updated_at_unix_s: i64,
}

impl Record for Rollout {
    const TABLE: Table = Table::Rollouts;
    const VERSION: u64 = 1;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
}

pub fn get_in(store: &dyn Store, org_id: Uuid, id: Uuid) -> Result<Option<Rollout>, StoreError> {
    Ok(store.load::<Rollout>(id.as_bytes())?.filter(|r| r.org_id == org_id))
}

pub fn list_in(store: &dyn Store, org_id: Uuid) -> Result<Vec<Rollout>, StoreError> {
    Ok(store.load_all::<Rollout>()?.into_iter().filter(|r| r.org_id == org_id).collect())
}

/// The unfinished rollout of a stack, if any.
pub fn active_for(store: &dyn Store, stack_id: Uuid) -> Result<Option<Rollout>, StoreError> {
    Ok(store.load_all::<Rollout>()?.into_iter().find(|r| !r.step.is_over() && r.stack_id == stack_id))
}

/// What the saga does to one part's deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Remove,
    Deploy { version: u32 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub step: Step,
    /// The parts as they stand after this decision.
    pub parts: Vec<Part>,
    /// For each part (by index), what to do to its deployment.
    pub actions: Vec<(usize, Action)>,
    pub level: Level,
    /// Told in every part's events.
    pub message: String,
    pub reason: Option<String>,
}

fn why(d: &Deployment) -> String {
    d.reason.clone().unwrap_or_else(|| "no reason given".into())
}

/// A part's state and why.
type Standing = (PartState, Option<String>);

/// How a part stands while the rollout deploys.
fn deploying(part: &Part, deployment: Option<&Deployment>, version: u32) -> Standing {
    match deployment {
        None => (PartState::Failed, Some("its deployment is gone".into())),
        Some(d) if matches!(d.desired, Desired::Removed { .. }) => (PartState::Failed, Some("it was removed".into())),
        Some(d) if d.is_settled() && d.state == State::Running && d.running_version == Some(version) => {
            (PartState::Running, None)
        }
        Some(d) if d.is_settled() && d.state == State::Failed => (PartState::Failed, Some(why(d))),
        Some(_) => (part.state, part.reason.clone()),
    }
}

/// How a part stands while the rollout compensates.
fn compensating(part: &Part, deployment: Option<&Deployment>) -> Standing {
    if matches!(part.state, PartState::Compensated | PartState::CompensationFailed) {
        return (part.state, part.reason.clone());
    }
    let reason = part.reason.clone();
    match (part.before, deployment) {
        (Before::Created, None) => (PartState::Compensated, reason),
        (Before::Created, Some(d)) if d.state == State::Removed => (PartState::Compensated, reason),
        (Before::Updated { version }, Some(d))
            if d.is_settled() && d.state == State::Running && d.running_version == Some(version) =>
        {
            (PartState::Compensated, reason)
        }
        (Before::Updated { .. }, None) => (PartState::CompensationFailed, Some("its deployment is gone".into())),
        (_, Some(d)) if d.is_settled() && d.state == State::Failed => {
            (PartState::CompensationFailed, Some(format!("could not be put back: {}", why(d))))
        }
        _ => (part.state, reason),
    }
}

/// The compensation of a part: what undoes what the rollout did to it.
fn undo(part: &Part) -> Action {
    match part.before {
        Before::Created => Action::Remove,
        Before::Updated { version } => Action::Deploy { version },
    }
}

/// The saga's next step, from what the parts' deployments show now (`deployments[i]` is part
/// `i`'s); `None` while nothing changed.
pub fn advance(rollout: &Rollout, deployments: &[Option<&Deployment>], now_unix_s: i64) -> Option<Decision> {
    let observed = |judge: &dyn Fn(&Part, Option<&Deployment>) -> Standing| -> Vec<Part> {
        rollout
            .parts
            .iter()
            .zip(deployments.iter().copied().chain(std::iter::repeat(None)))
            .map(|(part, deployment)| {
                let (state, reason) = judge(part, deployment);
                Part { state, reason, ..part.clone() }
            })
            .collect()
    };
    let decision = match rollout.step {
        Step::Deploying => {
            let parts = observed(&|part, deployment| deploying(part, deployment, rollout.version));
            let failed: Vec<String> = parts
                .iter()
                .filter(|p| p.state == PartState::Failed)
                .map(|p| format!("target {}: {}", p.target_id, p.reason.as_deref().unwrap_or("failed")))
                .collect();
            let late = now_unix_s - rollout.created_at_unix_s > DEADLINE_S;
            if !failed.is_empty() || (late && parts.iter().any(|p| p.state != PartState::Running)) {
                let why = if failed.is_empty() {
                    format!("not every target ran version {} within {} minutes", rollout.version, DEADLINE_S / 60)
                } else {
                    failed.join("; ")
                };
                Decision {
                    actions: parts.iter().enumerate().map(|(i, p)| (i, undo(p))).collect(),
                    step: Step::Compensating,
                    parts,
                    level: Level::Error,
                    message: format!("rollout of version {}: {why}; putting every target back", rollout.version),
                    reason: Some(why),
                }
            } else if parts.iter().all(|p| p.state == PartState::Running) {
                Decision {
                    step: Step::Done,
                    message: format!("rollout of version {}: every target runs it", rollout.version),
                    parts,
                    actions: vec![],
                    level: Level::Info,
                    reason: None,
                }
            } else {
                Decision {
                    step: Step::Deploying,
                    message: String::new(),
                    parts,
                    actions: vec![],
                    level: Level::Info,
                    reason: None,
                }
            }
        }
        Step::Compensating => {
            let parts = observed(&compensating);
            let over = parts.iter().all(|p| matches!(p.state, PartState::Compensated | PartState::CompensationFailed));
            let stuck: Vec<String> = parts
                .iter()
                .filter(|p| p.state == PartState::CompensationFailed)
                .map(|p| format!("target {}: {}", p.target_id, p.reason.as_deref().unwrap_or("failed")))
                .collect();
            let reason = match (&rollout.reason, stuck.is_empty()) {
                (reason, true) => reason.clone(),
                (reason, false) => {
                    Some(format!("{}; and {}", reason.as_deref().unwrap_or("the rollout failed"), stuck.join("; ")))
                }
            };
            Decision {
                step: if over { Step::Failed } else { Step::Compensating },
                message: if !over {
                    String::new()
                } else if stuck.is_empty() {
                    format!("rollout of version {}: failed; every target is back as it was", rollout.version)
                } else {
                    format!("rollout of version {}: failed, and some targets could not be put back", rollout.version)
                },
                level: if stuck.is_empty() { Level::Error } else { Level::Warning },
                parts,
                actions: vec![],
                reason,
            }
        }
        Step::Done | Step::Failed => return None,
    };
    (decision.step != rollout.step || decision.parts != rollout.parts).then_some(decision)
}

/// Drives every unfinished rollout until `shutdown`.
pub async fn run(
    store: Arc<dyn Store>,
    reconciler: Arc<Reconciler>,
    audit: Arc<AuditLog>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    crate::saga::run("rollout", shutdown, || pass(store.as_ref(), &reconciler, &audit)).await
}

fn pass(store: &dyn Store, reconciler: &Reconciler, audit: &AuditLog) -> Result<(), StoreError> {
    for rollout in store.load_all::<Rollout>()?.into_iter().filter(|r| !r.step.is_over()) {
        let deployments: Vec<Option<Deployment>> =
            rollout.parts.iter().map(|p| deployments::get(store, p.deployment_id)).collect::<Result<_, _>>()?;
        let views: Vec<Option<&Deployment>> = deployments.iter().map(Option::as_ref).collect();
        let Some(decision) = advance(&rollout, &views, now_unix_s()) else { continue };
        // The actions first: if they are lost to a crash, the next pass decides them again.
        for (index, action) in &decision.actions {
            let id = rollout.parts[*index].deployment_id;
            match *action {
                Action::Remove => crate::saga::remove(store, id, true)?,
                Action::Deploy { version } => crate::saga::deploy(store, id, version)?,
            }
        }
        let next = Rollout {
            step: decision.step,
            parts: decision.parts.clone(),
            reason: decision.reason.clone().or_else(|| rollout.reason.clone()),
            updated_at_unix_s: now_unix_s(),
            ..rollout.clone()
        };
        if !store.replace(&rollout, &next)? {
            continue;
        }
        if !decision.message.is_empty() {
            for part in &rollout.parts {
                reconciler.events.append(part.deployment_id, decision.level, decision.message.clone(), None);
            }
        }
        if next.step.is_over() {
            audit.record(Fact {
                actor: "system".into(),
                kind: if next.step == Step::Done { "rollout.done" } else { "rollout.failed" },
                object: rollout.id.to_string(),
                detail: Some(decision.message.clone()),
                org_id: Some(rollout.org_id),
                ..Fact::default()
            });
        }
        reconciler.wake();
    }
    Ok(())
}

#[cfg(test)]
mod tests;
