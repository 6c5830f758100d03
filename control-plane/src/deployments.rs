//! Deployments: a stack version on a target with a desired state, the event log of everything
//! that happened to it, and the reconciler that makes targets agree with what is desired.
//!
//! The reconciler follows the controller pattern: each pass looks at every deployment, and one
//! whose desired generation is not yet settled, or whose observed state drifted, gets a signed
//! job when its target is connected. Link failures leave the deployment pending (retried when
//! the agent is back); engine failures settle it as failed and roll back to the last version
//! that ran.

use crate::sealing::MasterKey;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};
use uuid::Uuid;
use windflow_protocol::messages::{ContainerState, JobOutcome, JobOutput, StackStatus};
use windflow_protocol::stack::{RestartPolicy, StackSpec};
use windflow_protocol::{JobPayload, Platform, Workload};

use crate::audit::{AuditLog, Fact};
use crate::auth::now_unix_s;
use crate::hub::{Hub, HubError, unix_ms};
use crate::stacks;
use crate::store::{Record, RecordStore, Store, StoreError, Table};

/// How long one deploy job may take, pulls included.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How often the reconciler looks at everything even when nothing woke it.
const RESYNC: Duration = Duration::from_secs(5);
/// Drift on one deployment is repaired at most this often, so a crash-looping service does not
/// turn into a stream of jobs.
const REPAIR_BACKOFF: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Desired {
    Running,
    Removed { volumes: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Deploying,
    Running,
    Failed,
    Removing,
    Removed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Deploying => "deploying",
            State::Running => "running",
            State::Failed => "failed",
            State::Removing => "removing",
            State::Removed => "removed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: Uuid,
    /// The organisation of its stack and its target (deploying across organisations is refused).
    pub org_id: Uuid,
    pub stack_id: Uuid,
    pub target_id: Uuid,
    /// Fixed at creation, so renaming the stack never orphans containers.
    pub project: String,
    /// What runs it on the target, chosen at creation from what the target is.
    pub platform: Platform,
    /// Replicas set by hand per service, over the stack's own `deploy.replicas`.
    pub scale: BTreeMap<String, u32>,
    /// The stack version that should run.
    pub version: u32,
    pub desired: Desired,
    /// Bumped whenever `version` or `desired` change.
    pub generation: u64,
    /// The last generation that was applied, or that failed for good.
    pub settled_generation: u64,
    pub state: State,
    pub reason: Option<String>,
    /// The last version that deployed successfully: where a failed update rolls back to.
    pub running_version: Option<u32>,
    pub created_by: String,
    pub created_at_unix_s: i64,
    pub updated_at_unix_s: i64,
    /// The job sent to apply the current change, until its outcome comes back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobTicket>,
}

/// A job sent for a deployment whose outcome has not come back. When the link to the agent
/// breaks, the same job (same id) is sent again once it is back, and the agent's journal makes
/// sure it is applied once: it answers a job it already ran with the outcome it recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobTicket {
    pub id: Uuid,
    /// What the job does, e.g. `deploy:<generation>:<version>`: a different change is a new job.
    pub purpose: String,
    pub issued_at_unix_ms: u64,
}

/// How long a job is sent again under its first id; the agent's journal keeps ids far longer.
const REDELIVER_WITHIN: Duration = Duration::from_secs(86_400);

impl Deployment {
    /// A new deployment of `version` of a stack on a target, pending its first deploy.
    pub fn new(
        stack: &stacks::Stack,
        target_id: Uuid,
        platform: Platform,
        version: u32,
        created_by: &str,
        now_unix_s: i64,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            org_id: stack.org_id,
            stack_id: stack.id,
            target_id,
            project: crate::compose::project_name(&stack.name),
            platform,
            scale: BTreeMap::new(),
            version,
            desired: Desired::Running,
            generation: 1,
            settled_generation: 0,
            state: State::Pending,
            reason: None,
            running_version: None,
            created_by: created_by.to_owned(),
            created_at_unix_s: now_unix_s,
            updated_at_unix_s: now_unix_s,
            job: None,
        }
    }

    /// Whether the reconciler finished with the latest desired state.
    pub fn is_settled(&self) -> bool {
        self.settled_generation >= self.generation
    }
}

impl Record for Deployment {
    const TABLE: Table = Table::Deployments;
    const VERSION: u64 = 2;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
    fn migrate(version: u64, mut record: serde_json::Value) -> Option<serde_json::Value> {
        // v2: the platform (every earlier deployment ran on the Docker engine) and scale.
        (version == 1).then(|| {
            record["platform"] = serde_json::json!("Docker");
            record["scale"] = serde_json::json!({});
            record
        })
    }
}

/// A stack version as a deployment runs it: secrets opened, the project fixed at the
/// deployment's creation, and the deployment's scale applied.
pub fn desired_spec(
    store: &dyn Store,
    key: &MasterKey,
    deployment: &Deployment,
    version: u32,
) -> Result<crate::compose::Parsed, String> {
    let stack = stacks::get(store, deployment.stack_id).map_err(|e| e.to_string())?.ok_or("the stack was deleted")?;
    let stored = stacks::version(store, stack.id, version)
        .map_err(|e| e.to_string())?
        .ok_or(format!("stack version {version} does not exist"))?;
    let mut parsed = stacks::parsed_of(key, &stack, &stored).map_err(|e| e.to_string())?;
    parsed.spec.project = deployment.project.clone();
    for service in &mut parsed.spec.services {
        if let Some(replicas) = deployment.scale.get(&service.name) {
            service.replicas = *replicas;
        }
    }
    Ok(parsed)
}

/// The job that applies `spec` for the deployment, on its platform.
fn deploy_payload(deployment: &Deployment, parsed: crate::compose::Parsed) -> Result<JobPayload, HubError> {
    let deployment_id = deployment.id;
    let crate::compose::Parsed { spec, swarm, helm, vms, .. } = parsed;
    Ok(match deployment.platform {
        Platform::Docker => JobPayload::DeployStack { deployment_id, spec },
        Platform::Swarm => JobPayload::DeployWorkload { deployment_id, workload: Workload::Swarm { spec, swarm } },
        Platform::Kubernetes => {
            let namespace = windflow_platforms::kubernetes::namespace_for(&spec.project);
            let workload = match helm {
                Some(chart) => Workload::Helm { project: spec.project, namespace, chart },
                None => Workload::Kubernetes { spec, orchestration: swarm, namespace },
            };
            JobPayload::DeployWorkload { deployment_id, workload }
        }
        Platform::Libvirt => {
            JobPayload::DeployWorkload { deployment_id, workload: Workload::Libvirt { project: spec.project, vms } }
        }
    })
}

fn remove_payload(deployment: &Deployment, remove_volumes: bool) -> JobPayload {
    let (deployment_id, project) = (deployment.id, deployment.project.clone());
    match deployment.platform {
        Platform::Docker => JobPayload::RemoveStack { deployment_id, project, remove_volumes },
        platform => JobPayload::RemoveWorkload { deployment_id, project, platform, remove_volumes },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Info,
    Progress,
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub deployment_id: Uuid,
    pub seq: u64,
    pub at_unix_ms: u64,
    pub level: Level,
    pub message: String,
    pub percent: Option<u8>,
    /// Set on the event that ends an operation: the state it ended in.
    #[serde(default)]
    pub outcome: Option<State>,
}

impl Record for Event {
    const TABLE: Table = Table::DeploymentEvents;
    const VERSION: u64 = 1;
    fn key(&self) -> Vec<u8> {
        let mut key = self.deployment_id.as_bytes().to_vec();
        key.extend_from_slice(&self.seq.to_be_bytes());
        key
    }
}

pub fn get(store: &dyn Store, id: Uuid) -> Result<Option<Deployment>, StoreError> {
    store.load(id.as_bytes())
}

/// An organisation's deployments.
pub fn list_in(store: &dyn Store, org_id: Uuid) -> Result<Vec<Deployment>, StoreError> {
    store.load_where(|d: &Deployment| d.org_id == org_id)
}

/// Removed, and meant to stay removed.
fn is_history(deployment: &Deployment) -> bool {
    deployment.state == State::Removed && matches!(deployment.desired, Desired::Removed { .. })
}

/// The deployment with this id if it belongs to the organisation (see [`crate::agents::get_in`]).
pub fn get_in(store: &dyn Store, org_id: Uuid, id: Uuid) -> Result<Option<Deployment>, StoreError> {
    Ok(get(store, id)?.filter(|d| d.org_id == org_id))
}

/// Applies `change` to the latest stored deployment, retrying if it changed concurrently.
pub fn modify(
    store: &dyn Store,
    id: Uuid,
    mut change: impl FnMut(&mut Deployment),
) -> Result<Option<Deployment>, StoreError> {
    loop {
        let Some(current) = get(store, id)? else { return Ok(None) };
        let mut next = current.clone();
        change(&mut next);
        next.updated_at_unix_s = now_unix_s();
        if store.replace(&current, &next)? {
            return Ok(Some(next));
        }
    }
}

/// The event log: stored, and fanned out live to followers.
pub struct Events {
    store: Arc<dyn Store>,
    next_seq: Mutex<HashMap<Uuid, u64>>,
    live: broadcast::Sender<Event>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Events")
    }
}

impl Events {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, next_seq: Mutex::new(HashMap::new()), live: broadcast::channel(4096).0 }
    }

    /// Appends an event and returns its sequence number.
    pub fn append(&self, deployment_id: Uuid, level: Level, message: impl Into<String>, percent: Option<u8>) -> u64 {
        self.record(deployment_id, level, message.into(), percent, None)
    }

    /// Appends the event that ends an operation, with the state it ended in.
    pub fn finish(&self, deployment_id: Uuid, level: Level, message: impl Into<String>, outcome: State) {
        self.record(deployment_id, level, message.into(), None, Some(outcome));
    }

    fn record(
        &self,
        deployment_id: Uuid,
        level: Level,
        message: String,
        percent: Option<u8>,
        outcome: Option<State>,
    ) -> u64 {
        let seq = {
            let mut next = self.next_seq.lock().unwrap_or_else(|e| e.into_inner());
            let seq = match next.get(&deployment_id) {
                Some(seq) => *seq,
                None => self.history(deployment_id, 0).ok().and_then(|h| h.last().map(|e| e.seq + 1)).unwrap_or(1),
            };
            next.insert(deployment_id, seq + 1);
            seq
        };
        let event = Event { deployment_id, seq, at_unix_ms: unix_ms(), level, message, percent, outcome };
        if let Err(error) = self.store.save(&event) {
            tracing::error!(%deployment_id, %error, "could not store a deployment event");
        }
        let _ = self.live.send(event);
        seq
    }

    /// Stored events with a sequence number above `after`.
    pub fn history(&self, deployment_id: Uuid, after: u64) -> Result<Vec<Event>, StoreError> {
        Ok(self.store.load_prefix::<Event>(deployment_id.as_bytes())?.into_iter().filter(|e| e.seq > after).collect())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    /// Drops the cached next sequence number of a deployment's events; the next event reads it
    /// from the store again.
    pub fn forget_next_seq(&self, deployment_id: Uuid) {
        self.next_seq.lock().unwrap_or_else(|e| e.into_inner()).remove(&deployment_id);
    }
}

/// Whether `deployment` was removed more than `retention` before `now_unix_s`: its record and
/// its events are then purged.
pub fn removal_expired(deployment: &Deployment, retention: Duration, now_unix_s: i64) -> bool {
    is_history(deployment)
        && now_unix_s.saturating_sub(deployment.updated_at_unix_s)
            > i64::try_from(retention.as_secs()).unwrap_or(i64::MAX)
}

/// Deletes a removed deployment and its events, in one batch, unless the deployment changed
/// since `deployment` was read (deployed again, say). Returns whether it was purged.
pub fn purge(store: &dyn Store, deployment: &Deployment) -> Result<bool, StoreError> {
    use crate::store::{Check, Write};
    let mut writes: Vec<Write> = store
        .scan_prefix(Table::DeploymentEvents, deployment.id.as_bytes())?
        .into_iter()
        .map(|(key, _)| Write { table: Table::DeploymentEvents, key, value: None })
        .collect();
    writes.push(Write { table: Table::Deployments, key: deployment.key(), value: None });
    store.atomic(
        &[Check { table: Table::Deployments, key: deployment.key(), expected: Some(deployment.encode()) }],
        &writes,
    )
}

/// Why a deployment's observed state is not what its spec asks for, if it is not. A Swarm or
/// a cluster restarts and reschedules tasks itself: there only a missing or changed service
/// is drift.
pub fn drift(spec: &StackSpec, observed: &StackStatus, platform: Platform) -> Option<String> {
    let orchestrated = matches!(platform, Platform::Swarm | Platform::Kubernetes);
    for service in &spec.services {
        let found = observed.services.iter().find(|s| s.service == service.name);
        let containers = found.map(|s| s.containers.as_slice()).unwrap_or_default();
        if orchestrated {
            if found.is_none() {
                return Some(format!("service {} is missing", service.name));
            }
        } else if containers.len() < service.replicas as usize {
            return Some(format!(
                "service {} has {} of {} containers",
                service.name,
                containers.len(),
                service.replicas
            ));
        }
        let one_shot = service.restart == RestartPolicy::No;
        for container in containers {
            match container.state {
                _ if orchestrated => {}
                ContainerState::Running | ContainerState::Restarting => {}
                ContainerState::Exited { code: 0 } if one_shot => {}
                ContainerState::Exited { code } if one_shot => {
                    return Some(format!("{} exited with code {code}", container.name));
                }
                ref other => return Some(format!("{} is {other:?}, not running", container.name)),
            }
            if container.config_hash != service.config_hash() {
                return Some(format!("{} does not have the deployed configuration", container.name));
            }
        }
    }
    None
}

pub struct Reconciler {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    pub events: Arc<Events>,
    wake: Notify,
    in_flight: Mutex<HashSet<Uuid>>,
    last_repair: Mutex<HashMap<Uuid, std::time::Instant>>,
    audit: Arc<AuditLog>,
    /// Opens stacks' secret variables when a spec is built for an agent.
    master_key: Arc<MasterKey>,
    /// How long a removed deployment stays listed, with its events, before it is purged.
    removed_retention: Duration,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reconciler")
    }
}

impl Reconciler {
    pub fn new(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        events: Arc<Events>,
        audit: Arc<AuditLog>,
        master_key: Arc<MasterKey>,
        removed_retention: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            hub,
            events,
            wake: Notify::new(),
            in_flight: Mutex::new(HashSet::new()),
            last_repair: Mutex::new(HashMap::new()),
            audit,
            master_key,
            removed_retention,
        })
    }

    /// Asks for a pass soon (after a change of desired state).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(error) = self.pass() {
                tracing::error!(%error, "reconciler pass failed");
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = self.hub.changed() => {}
                () = tokio::time::sleep(RESYNC) => {}
                () = &mut shutdown => return,
            }
        }
    }

    fn pass(self: &Arc<Self>) -> Result<(), StoreError> {
        // History (removed deployments) grows with every deploy: it is read one record at a time
        // and only its expired part kept, to be purged, so that neither memory nor the store
        // follow a fleet that deploys and removes all day.
        let now = now_unix_s();
        let (expired, active): (Vec<Deployment>, Vec<Deployment>) = self
            .store
            .load_where(|d: &Deployment| !is_history(d) || removal_expired(d, self.removed_retention, now))?
            .into_iter()
            .partition(is_history);
        for deployment in expired {
            if purge(self.store.as_ref(), &deployment)? {
                tracing::info!(deployment_id = %deployment.id, "purged a deployment removed longer ago than its retention");
            }
        }
        for listed in active {
            if !self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).insert(listed.id) {
                continue;
            }
            // Read again once claimed: a task that finished since the list was read may have
            // settled this deployment, and working from the stale copy would deploy it twice.
            let current = get(self.store.as_ref(), listed.id)?;
            let Some(deployment) = current.filter(|d| self.needs_work(d) && self.hub.is_connected(d.target_id)) else {
                self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&listed.id);
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let id = deployment.id;
                this.work(deployment).await;
                this.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                this.wake();
            });
        }
        Ok(())
    }

    fn needs_work(&self, deployment: &Deployment) -> bool {
        match deployment.desired {
            Desired::Removed { .. } => deployment.state != State::Removed,
            Desired::Running if deployment.settled_generation < deployment.generation => true,
            Desired::Running if deployment.state == State::Running => {
                let recently = self
                    .last_repair
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&deployment.id)
                    .is_some_and(|at| at.elapsed() < REPAIR_BACKOFF);
                !recently && self.drifted(deployment).is_some()
            }
            Desired::Running => false,
        }
    }

    fn spec(&self, deployment: &Deployment, version: u32) -> Result<crate::compose::Parsed, String> {
        desired_spec(self.store.as_ref(), &self.master_key, deployment, version)
    }

    fn drifted(&self, deployment: &Deployment) -> Option<String> {
        let observed = self.hub.observed(deployment.id)?;
        let parsed = self.spec(deployment, deployment.version).ok()?;
        // A VM stopped on purpose stays stopped; one that is gone is drift.
        let missing_vm = parsed.vms.iter().find(|vm| !observed.services.iter().any(|s| s.service == vm.name));
        if let Some(vm) = missing_vm {
            return Some(format!("vm {} is missing", vm.name));
        }
        drift(&parsed.spec, &observed, deployment.platform)
    }

    async fn work(&self, deployment: Deployment) {
        match deployment.desired {
            Desired::Running => self.deploy(deployment).await,
            Desired::Removed { volumes } => self.remove(deployment, volumes).await,
        }
    }

    fn audit(&self, kind: &'static str, deployment: &Deployment, detail: String) {
        self.audit.record(Fact {
            actor: "system".into(),
            kind,
            object: deployment.id.to_string(),
            detail: Some(detail),
            org_id: Some(deployment.org_id),
            ..Fact::default()
        });
    }

    fn set(&self, id: Uuid, change: impl FnMut(&mut Deployment)) {
        if let Err(error) = modify(self.store.as_ref(), id, change) {
            tracing::error!(deployment_id = %id, %error, "could not record a deployment's state");
        }
    }

    async fn deploy(&self, deployment: Deployment) {
        let id = deployment.id;
        let generation = deployment.generation;
        let repairing = deployment.settled_generation >= generation;
        if repairing {
            let why = self.drifted(&deployment).unwrap_or_default();
            self.last_repair.lock().unwrap_or_else(|e| e.into_inner()).insert(id, std::time::Instant::now());
            self.events.append(id, Level::Warning, format!("drift detected: {why}; repairing"), None);
        }
        let parsed = match self.spec(&deployment, deployment.version) {
            Ok(parsed) => parsed,
            Err(reason) => {
                self.set(id, |d| {
                    d.state = State::Failed;
                    d.reason = Some(reason.clone());
                    d.settled_generation = d.settled_generation.max(generation);
                });
                self.events.finish(id, Level::Error, format!("cannot deploy: {reason}"), State::Failed);
                return;
            }
        };
        if !repairing {
            self.set(id, |d| {
                d.state = State::Deploying;
                d.reason = None;
            });
            self.events.append(
                id,
                Level::Info,
                format!("deploying version {} of the stack", deployment.version),
                Some(0),
            );
        }
        // A repair is a new job each time: it answers what the agent reports now.
        let purpose = (!repairing).then(|| format!("deploy:{generation}:{}", deployment.version));
        match self.run_deploy(&deployment, purpose, parsed).await {
            Ok(()) => {
                let message = if repairing {
                    "drift repaired".to_owned()
                } else {
                    format!("version {} is running", deployment.version)
                };
                self.audit(
                    if repairing { "deployment.drift_repaired" } else { "deployment.applied" },
                    &deployment,
                    message.clone(),
                );
                self.set(id, |d| {
                    d.state = State::Running;
                    d.reason = None;
                    d.running_version = Some(deployment.version);
                    d.settled_generation = d.settled_generation.max(generation);
                });
                self.events.finish(id, Level::Info, message, State::Running);
            }
            Err(HubError::Link(_) | HubError::NotConnected | HubError::Timeout | HubError::CircuitOpen { .. })
                if repairing =>
            {
                self.events.append(id, Level::Warning, "repair interrupted: the target disconnected", None);
            }
            Err(HubError::Link(_) | HubError::NotConnected | HubError::Timeout | HubError::CircuitOpen { .. }) => {
                let reason = "the target disconnected; the deployment resumes when it is back".to_owned();
                self.set(id, |d| {
                    d.state = State::Pending;
                    d.reason = Some(reason.clone());
                });
                self.events.finish(id, Level::Warning, reason.clone(), State::Pending);
            }
            Err(error) => {
                let reason = error.to_string();
                let failure = format!("version {} failed: {reason}", deployment.version);
                self.audit("deployment.failed", &deployment, failure.clone());
                self.set(id, |d| {
                    d.state = State::Failed;
                    d.reason = Some(reason.clone());
                    d.settled_generation = d.settled_generation.max(generation);
                });
                match deployment.running_version.filter(|v| *v != deployment.version) {
                    Some(previous) => {
                        self.events.append(id, Level::Error, failure, None);
                        self.roll_back(&deployment, previous).await;
                    }
                    None => self.events.finish(id, Level::Error, failure, State::Failed),
                }
            }
        }
    }

    /// The id of the job for `purpose`: the one already sent for it if its outcome never came
    /// back, else a new one, stored before the job is sent.
    fn job_id(&self, deployment_id: Uuid, purpose: &str) -> Uuid {
        let now = unix_ms();
        let within = u64::try_from(REDELIVER_WITHIN.as_millis()).unwrap_or(u64::MAX);
        let fresh = Uuid::now_v7();
        let mut chosen = fresh;
        let stored = modify(self.store.as_ref(), deployment_id, |d| match &d.job {
            Some(ticket) if ticket.purpose == purpose && now.saturating_sub(ticket.issued_at_unix_ms) < within => {
                chosen = ticket.id;
            }
            _ => {
                chosen = fresh;
                d.job = Some(JobTicket { id: fresh, purpose: purpose.to_owned(), issued_at_unix_ms: now });
            }
        });
        if let Err(error) = stored {
            tracing::error!(%deployment_id, %error, "could not record a job before sending it");
        }
        chosen
    }

    /// Sends a deployment's job (under its stored id when it has a `purpose`) and, once its
    /// outcome is back, forgets the stored id.
    async fn run_deployment_job(
        &self,
        deployment: &Deployment,
        purpose: Option<String>,
        payload: JobPayload,
    ) -> Result<JobOutcome, HubError> {
        let id = deployment.id;
        let job_id = purpose.map_or_else(Uuid::now_v7, |purpose| self.job_id(id, &purpose));
        let events = self.events.clone();
        let outcome = self
            .hub
            .run_job_as(job_id, deployment.target_id, payload, DEPLOY_TIMEOUT, move |step, percent| {
                events.append(id, Level::Progress, step, percent);
            })
            .await?;
        self.set(id, |d| {
            if d.job.as_ref().is_some_and(|ticket| ticket.id == job_id) {
                d.job = None;
            }
        });
        Ok(outcome)
    }

    async fn run_deploy(
        &self,
        deployment: &Deployment,
        purpose: Option<String>,
        parsed: crate::compose::Parsed,
    ) -> Result<(), HubError> {
        let payload = deploy_payload(deployment, parsed)?;
        match self.run_deployment_job(deployment, purpose, payload).await? {
            JobOutcome::Succeeded(JobOutput::Stack(status)) => {
                self.hub.record_observed(status);
                Ok(())
            }
            JobOutcome::Succeeded(_) => Ok(()),
            JobOutcome::Failed { message } => Err(HubError::JobFailed(message)),
        }
    }

    /// Puts the last version that ran back in place after a failed update, so that services the
    /// failed deploy already changed return to what worked.
    async fn roll_back(&self, deployment: &Deployment, previous: u32) {
        let id = deployment.id;
        self.events.append(id, Level::Warning, format!("rolling back to version {previous}"), None);
        let parsed = match self.spec(deployment, previous) {
            Ok(parsed) => parsed,
            Err(reason) => {
                self.events.finish(id, Level::Error, format!("rollback impossible: {reason}"), State::Failed);
                return;
            }
        };
        let purpose = format!("rollback:{}:{previous}", deployment.generation);
        match self.run_deploy(deployment, Some(purpose), parsed).await {
            Ok(()) => self.events.finish(
                id,
                Level::Info,
                format!("rolled back: version {previous} is running again"),
                State::Failed,
            ),
            Err(error) => self.events.finish(
                id,
                Level::Error,
                format!("rollback to version {previous} failed: {error}"),
                State::Failed,
            ),
        }
    }

    async fn remove(&self, deployment: Deployment, volumes: bool) {
        let id = deployment.id;
        self.set(id, |d| d.state = State::Removing);
        self.events.append(
            id,
            Level::Info,
            if volumes { "removing containers, networks and volumes" } else { "removing containers and networks" },
            None,
        );
        let payload = remove_payload(&deployment, volumes);
        let purpose = format!("remove:{}:{volumes}", deployment.generation);
        let outcome = self.run_deployment_job(&deployment, Some(purpose), payload).await;
        match outcome {
            Ok(JobOutcome::Succeeded(_)) => {
                self.audit(
                    "deployment.removed",
                    &deployment,
                    if volumes { "with volumes".into() } else { "volumes kept".into() },
                );
                self.set(id, |d| {
                    d.state = State::Removed;
                    d.reason = None;
                    d.settled_generation = d.generation;
                });
                self.events.finish(id, Level::Info, "removed", State::Removed);
                // Nothing runs for it any more: what memory held for it goes (a fleet that
                // deploys and removes all day would otherwise keep it for every one).
                self.hub.forget_observed(id);
                self.events.forget_next_seq(id);
                self.last_repair.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            }
            Ok(JobOutcome::Failed { message }) => {
                self.set(id, |d| {
                    d.state = State::Failed;
                    d.reason = Some(message.clone());
                });
                self.events.finish(id, Level::Error, format!("removal failed: {message}"), State::Failed);
            }
            Err(error) => {
                self.events.append(
                    id,
                    Level::Warning,
                    format!("removal interrupted: {error}; retrying when the target is back"),
                    None,
                );
                self.set(id, |d| d.state = State::Removing);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use windflow_protocol::messages::{ContainerStatus, ServiceStatus};

    use super::*;

    fn spec() -> StackSpec {
        crate::compose::parse(
            "services:\n  init: { image: a }\n  web: { image: a, restart: always, deploy: { replicas: 2 } }\n",
            "p",
            &BTreeMap::new(),
        )
        .expect("valid")
        .spec
    }

    fn container(spec: &StackSpec, service: &str, n: u32, state: ContainerState) -> ContainerStatus {
        let hash = spec.services.iter().find(|s| s.name == service).expect("service").config_hash();
        ContainerStatus {
            name: format!("p-{service}-{n}"),
            id: format!("{service}{n}"),
            state,
            health: None,
            restart_count: 0,
            config_hash: hash,
        }
    }

    fn observed(spec: &StackSpec, web: Vec<ContainerStatus>, init: ContainerState) -> StackStatus {
        StackStatus {
            deployment_id: Uuid::nil(),
            project: "p".into(),
            services: vec![
                ServiceStatus { service: "init".into(), containers: vec![container(spec, "init", 1, init)] },
                ServiceStatus { service: "web".into(), containers: web },
            ],
        }
    }

    #[test]
    fn a_healthy_stack_has_no_drift_and_completed_one_shots_are_fine() {
        let spec = spec();
        let web = vec![
            container(&spec, "web", 1, ContainerState::Running),
            container(&spec, "web", 2, ContainerState::Running),
        ];
        assert_eq!(drift(&spec, &observed(&spec, web, ContainerState::Exited { code: 0 }), Platform::Docker), None);
    }

    #[test]
    fn a_missing_or_stopped_container_is_drift() {
        let spec = spec();
        let one = vec![container(&spec, "web", 1, ContainerState::Running)];
        assert_eq!(
            drift(&spec, &observed(&spec, one, ContainerState::Exited { code: 0 }), Platform::Docker),
            Some("service web has 1 of 2 containers".into())
        );
        let stopped = vec![
            container(&spec, "web", 1, ContainerState::Running),
            container(&spec, "web", 2, ContainerState::Exited { code: 137 }),
        ];
        assert!(
            drift(&spec, &observed(&spec, stopped, ContainerState::Exited { code: 0 }), Platform::Docker)
                .is_some_and(|d| d.contains("p-web-2"))
        );
    }

    #[test]
    fn a_failed_one_shot_is_drift() {
        let spec = spec();
        let web = vec![
            container(&spec, "web", 1, ContainerState::Running),
            container(&spec, "web", 2, ContainerState::Running),
        ];
        assert!(drift(&spec, &observed(&spec, web, ContainerState::Exited { code: 3 }), Platform::Docker).is_some());
    }

    #[test]
    fn on_swarm_only_a_missing_or_changed_service_is_drift() {
        let spec = spec();
        let starting = vec![container(&spec, "web", 1, ContainerState::Created)];
        let observed_swarm = observed(&spec, starting, ContainerState::Exited { code: 1 });
        assert_eq!(drift(&spec, &observed_swarm, Platform::Swarm), None, "Swarm restarts tasks itself");
        let mut without_web = observed_swarm.clone();
        without_web.services.retain(|s| s.service != "web");
        assert_eq!(drift(&spec, &without_web, Platform::Swarm), Some("service web is missing".into()));
        let mut changed = observed_swarm;
        changed.services[1].containers[0].config_hash = "other".into();
        assert!(drift(&spec, &changed, Platform::Swarm).is_some_and(|d| d.contains("deployed configuration")));
    }

    #[test]
    fn a_deployment_stored_before_platforms_existed_ran_on_docker() {
        let v1 = serde_json::json!({"v": 1, "record": {
            "id": Uuid::nil(), "org_id": Uuid::nil(), "stack_id": Uuid::nil(), "target_id": Uuid::nil(),
            "project": "p", "version": 1, "desired": {"state": "running"}, "generation": 1,
            "settled_generation": 1, "state": "running", "reason": null, "running_version": 1,
            "created_by": "admin", "created_at_unix_s": 0, "updated_at_unix_s": 0
        }});
        let deployment = Deployment::decode(&serde_json::to_vec(&v1).expect("json")).expect("migrates");
        assert_eq!((deployment.platform, deployment.scale), (Platform::Docker, BTreeMap::new()));
    }

    fn removed(store: &dyn Store, removed_at_unix_s: i64) -> Deployment {
        let stack = stacks::Stack {
            id: Uuid::now_v7(),
            org_id: Uuid::now_v7(),
            name: "shop".into(),
            current_version: 1,
            created_by: "alice".into(),
            created_at_unix_s: 0,
            updated_at_unix_s: 0,
        };
        let mut deployment = Deployment::new(&stack, Uuid::now_v7(), Platform::Docker, 1, "alice", 0);
        deployment.desired = Desired::Removed { volumes: false };
        deployment.state = State::Removed;
        deployment.updated_at_unix_s = removed_at_unix_s;
        store.save(&deployment).expect("save");
        for seq in 1..=3 {
            let event = Event {
                deployment_id: deployment.id,
                seq,
                at_unix_ms: 0,
                level: Level::Info,
                message: "step".into(),
                percent: None,
                outcome: None,
            };
            store.save(&event).expect("event");
        }
        deployment
    }

    #[test]
    fn a_deployment_removed_longer_ago_than_its_retention_is_purged_with_its_events_and_no_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::RedbStore::open(dir.path()).expect("store");
        let week = Duration::from_secs(7 * 86_400);
        let now = 100 * 86_400;
        let old = removed(&store, now - 8 * 86_400);
        let recent = removed(&store, now - 86_400);
        let mut running = removed(&store, now - 8 * 86_400);
        running.desired = Desired::Running;
        running.state = State::Running;
        store.save(&running).expect("save");

        assert!(removal_expired(&old, week, now));
        assert!(!removal_expired(&recent, week, now), "still within its retention");
        assert!(!removal_expired(&running, week, now), "never purged while it should run");

        assert!(purge(&store, &old).expect("purge"));
        assert_eq!(get(&store, old.id).expect("get"), None);
        assert!(store.scan_prefix(Table::DeploymentEvents, old.id.as_bytes()).expect("scan").is_empty());
        assert_eq!(store.scan_prefix(Table::DeploymentEvents, recent.id.as_bytes()).expect("scan").len(), 3);

        // Deployed again after it was read: the stale copy purges nothing.
        let stale = recent.clone();
        modify(&store, recent.id, |d| d.desired = Desired::Running).expect("modify");
        assert!(!purge(&store, &stale).expect("purge"));
        assert!(get(&store, recent.id).expect("get").is_some());
        assert_eq!(store.scan_prefix(Table::DeploymentEvents, recent.id.as_bytes()).expect("scan").len(), 3);
    }
}
