//! What drives runs. Each run is one task that owns its state: it asks `plan` what may run,
//! starts those nodes (each in a task of its own, so branches run in parallel), and stores the
//! run after every change, so that a control plane started again resumes every run where it
//! was — a node that had finished is never run again; one that was in the middle of an attempt
//! runs that attempt again.
//!
//! Attempts, backoff (exponential, with jitter) and timeouts are per node; a workflow runs at
//! most `concurrency` runs at once, the others queued in order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use utoipa::ToSchema;
use uuid::Uuid;

use super::graph::{Action, Graph, Node, OUT, RetryPolicy};
use super::plan::{Outcome, Progress, StepStatus};
use super::{Workflow, expr};
use crate::store::{Check, Record, RecordStore, Store, StoreError, Table, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = WorkflowRunStatus)]
pub enum RunStatus {
    /// Waiting for one of the workflow's runs to end (its concurrency limit).
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn is_over(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: Uuid,
    pub workflow_id: Uuid,
    pub org_id: Uuid,
    /// The workflow version it runs.
    pub version: u32,
    pub status: RunStatus,
    /// The trigger node that started it.
    pub trigger: String,
    pub started_by: String,
    pub progress: Progress,
    /// Why it failed: the node, its attempts and its last error.
    pub error: Option<String>,
    pub created_at_ms: u64,
    pub finished_at_ms: Option<u64>,
}

impl Record for Run {
    const TABLE: Table = Table::WorkflowRuns;
    const VERSION: u64 = 1;
    fn key(&self) -> Vec<u8> {
        run_key(self.workflow_id, self.id)
    }
}

/// Finished runs kept per workflow, with their logs; older ones are deleted as new ones end (a
/// trigger every minute would otherwise add 1,440 runs a day, for ever).
pub const RUNS_KEPT: usize = 1000;

/// Deletes the oldest finished runs of a workflow beyond its newest `kept`, with their logs, in
/// one batch that fails (deleting nothing) if one of them changed meanwhile. Returns how many.
pub fn prune_runs(store: &dyn Store, workflow_id: Uuid, kept: usize) -> Result<usize, StoreError> {
    let (total, _) = store.page_prefix(Table::WorkflowRuns, workflow_id.as_bytes(), 0, 0)?;
    let excess = total.saturating_sub(kept);
    if excess == 0 {
        return Ok(0);
    }
    let (_, oldest) = store.page_prefix(Table::WorkflowRuns, workflow_id.as_bytes(), 0, excess)?;
    let (mut checks, mut writes) = (Vec::new(), Vec::new());
    for (key, bytes) in oldest {
        let run = Run::decode(&bytes)?;
        if !run.status.is_over() {
            continue;
        }
        for (line, _) in store.scan_prefix(Table::WorkflowLogs, run.id.as_bytes())? {
            writes.push(Write { table: Table::WorkflowLogs, key: line, value: None });
        }
        writes.push(Write { table: Table::WorkflowRuns, key: key.clone(), value: None });
        checks.push(Check { table: Table::WorkflowRuns, key, expected: Some(bytes) });
    }
    if checks.is_empty() || !store.atomic(&checks, &writes)? {
        return Ok(0);
    }
    Ok(checks.len())
}

fn run_key(workflow_id: Uuid, run_id: Uuid) -> Vec<u8> {
    let mut key = workflow_id.as_bytes().to_vec();
    key.extend_from_slice(run_id.as_bytes());
    key
}

/// One line a step wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    pub run_id: Uuid,
    pub seq: u64,
    pub node: String,
    pub at_ms: u64,
    pub message: String,
}

impl Record for LogLine {
    const TABLE: Table = Table::WorkflowLogs;
    const VERSION: u64 = 1;
    fn key(&self) -> Vec<u8> {
        let mut key = self.run_id.as_bytes().to_vec();
        key.extend_from_slice(&self.seq.to_be_bytes());
        key
    }
}

/// One occurrence of a trigger that started a run: what makes triggers fire exactly once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Firing {
    pub workflow_id: Uuid,
    pub node: String,
    /// `cron:<unix seconds>`, `event:<audit sequence>`, `webhook:<delivery id>`.
    pub occurrence: String,
    pub run_id: Uuid,
    pub at_ms: u64,
}

impl Record for Firing {
    const TABLE: Table = Table::WorkflowFirings;
    const VERSION: u64 = 1;
    fn key(&self) -> Vec<u8> {
        let mut key = self.workflow_id.as_bytes().to_vec();
        key.extend_from_slice(self.node.as_bytes());
        key.push(0);
        key.extend_from_slice(self.occurrence.as_bytes());
        key
    }
}

/// The runs of a workflow, oldest first (run ids are time-ordered).
pub fn runs_of(store: &dyn Store, workflow_id: Uuid) -> Result<Vec<Run>, StoreError> {
    store.load_prefix(workflow_id.as_bytes())
}

pub fn get_run(store: &dyn Store, workflow_id: Uuid, run_id: Uuid) -> Result<Option<Run>, StoreError> {
    store.load(&run_key(workflow_id, run_id))
}

pub fn logs_of(store: &dyn Store, run_id: Uuid) -> Result<Vec<LogLine>, StoreError> {
    store.load_prefix(run_id.as_bytes())
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("node `{0}` is not a trigger of this workflow")]
    NotATrigger(String),
    #[error("version {0} of the workflow does not exist")]
    NoVersion(u32),
    #[error("the run is over")]
    Over,
    #[error("node `{0}` is not waiting for an approval")]
    NotWaiting(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a node writes its log lines.
#[derive(Clone)]
pub struct StepLog {
    store: Arc<dyn Store>,
    run_id: Uuid,
    node: String,
    seq: Arc<AtomicU64>,
    clock: Clock,
}

impl StepLog {
    pub fn line(&self, message: impl Into<String>) {
        let line = LogLine {
            run_id: self.run_id,
            seq: self.seq.fetch_add(1, Ordering::SeqCst),
            node: self.node.clone(),
            at_ms: self.clock.now_ms(),
            message: message.into(),
        };
        if let Err(e) = self.store.save_relaxed(&line) {
            tracing::warn!(run = %self.run_id, error = %e, "a workflow log line was not stored");
        }
    }
}

/// What a node kind is given to do its work.
pub struct Call<'a> {
    pub run: &'a Run,
    /// The node, its settings' templates rendered.
    pub node: &'a Node,
    /// What its templates saw: `trigger`, `nodes`, `run`.
    pub context: &'a serde_json::Value,
    pub log: &'a StepLog,
}

/// Does the work of the node kinds that act on the world (deploy, HTTP, notify…).
pub trait Runner: Send + Sync + 'static {
    /// The node's output, or why the attempt failed.
    fn run<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<serde_json::Value, String>>;
}

/// Wall-clock milliseconds that follow Tokio's clock: a run's times stay consistent when tests
/// pause and advance time.
#[derive(Clone, Copy)]
pub struct Clock {
    wall_at_start_ms: u64,
    started: tokio::time::Instant,
}

impl Clock {
    pub fn new() -> Self {
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Self { wall_at_start_ms: wall.as_millis() as u64, started: tokio::time::Instant::now() }
    }

    pub fn now_ms(&self) -> u64 {
        self.wall_at_start_ms + self.started.elapsed().as_millis() as u64
    }

    fn until(&self, at_ms: u64) -> Duration {
        Duration::from_millis(at_ms.saturating_sub(self.now_ms()))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// The wait before attempt `attempt + 1`: doubling from the policy's backoff, capped, with
/// jitter (half of it random) so that many failing runs do not retry in step.
pub fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exponential = policy.backoff_ms.saturating_mul(1 << attempt.saturating_sub(1).min(30));
    let capped = exponential.min(policy.max_backoff_ms);
    let jitter = rand::rng().random_range(0..=capped / 2);
    Duration::from_millis(capped - capped / 2 + jitter)
}

enum Command {
    Cancel,
    Decide { node: String, approved: bool, by: String },
}

enum StepEvent {
    Attempt { node: String, attempt: u32 },
    Retry { node: String, error: String, at_ms: u64 },
    Finished { node: String, outcome: Outcome },
}

pub struct Engine {
    store: Arc<dyn Store>,
    runner: Arc<dyn Runner>,
    clock: Clock,
    updates: broadcast::Sender<Arc<Run>>,
    /// The command line of every run being driven.
    live: Mutex<HashMap<Uuid, (Uuid, mpsc::UnboundedSender<Command>)>>,
    /// Serialises admission (queued or running), so a concurrency limit holds under races.
    admission: Mutex<()>,
}

impl Engine {
    pub fn new(store: Arc<dyn Store>, runner: Arc<dyn Runner>) -> Arc<Self> {
        Arc::new(Self {
            store,
            runner,
            clock: Clock::new(),
            updates: broadcast::channel(1024).0,
            live: Mutex::new(HashMap::new()),
            admission: Mutex::new(()),
        })
    }

    /// Every change of every run, as it is stored.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Run>> {
        self.updates.subscribe()
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn running_count(&self, workflow_id: Uuid) -> usize {
        self.live.lock().expect("live runs").values().filter(|(w, _)| *w == workflow_id).count()
    }

    fn store_run(&self, run: &Run) -> Result<(), StoreError> {
        self.store.save(run)?;
        let _ = self.updates.send(Arc::new(run.clone()));
        Ok(())
    }

    /// Starts a run of the workflow's latest version from one of its triggers (or queues it).
    pub fn start(
        self: &Arc<Self>,
        workflow: &Workflow,
        trigger: &str,
        payload: serde_json::Value,
        by: &str,
    ) -> Result<Run, EngineError> {
        let run = self.begin(workflow, trigger, payload, by, None)?;
        run.ok_or_else(|| EngineError::Store(StoreError::Backend("a run without an occurrence always starts".into())))
    }

    /// Starts a run for one occurrence of a trigger (a cron time, an event, a webhook
    /// delivery) unless that occurrence already started one: the run and the record of the
    /// occurrence are written together, so each occurrence starts exactly one run, whatever
    /// restarts or repeats happen around it. `None` when it had already fired.
    pub fn start_once(
        self: &Arc<Self>,
        workflow: &Workflow,
        trigger: &str,
        payload: serde_json::Value,
        by: &str,
        occurrence: &str,
    ) -> Result<Option<Run>, EngineError> {
        self.begin(workflow, trigger, payload, by, Some(occurrence))
    }

    fn begin(
        self: &Arc<Self>,
        workflow: &Workflow,
        trigger: &str,
        payload: serde_json::Value,
        by: &str,
        occurrence: Option<&str>,
    ) -> Result<Option<Run>, EngineError> {
        let stored = super::version(self.store.as_ref(), workflow.id, workflow.version)?
            .ok_or(EngineError::NoVersion(workflow.version))?;
        if !stored.graph.nodes.iter().any(|n| n.id == trigger && n.action.is_trigger()) {
            return Err(EngineError::NotATrigger(trigger.to_owned()));
        }
        let now = self.clock.now_ms();
        let _admission = self.admission.lock().expect("admission");
        let status = if self.running_count(workflow.id) < workflow.concurrency.max(1) as usize {
            RunStatus::Running
        } else {
            RunStatus::Queued
        };
        let run = Run {
            id: Uuid::now_v7(),
            workflow_id: workflow.id,
            org_id: workflow.org_id,
            version: workflow.version,
            status,
            trigger: trigger.to_owned(),
            started_by: by.to_owned(),
            progress: Progress::start(&stored.graph, trigger, payload, now),
            error: None,
            created_at_ms: now,
            finished_at_ms: None,
        };
        match occurrence {
            None => self.store_run(&run)?,
            Some(occurrence) => {
                let firing = Firing {
                    workflow_id: workflow.id,
                    node: trigger.to_owned(),
                    occurrence: occurrence.to_owned(),
                    run_id: run.id,
                    at_ms: now,
                };
                let checks = [Check { table: Table::WorkflowFirings, key: firing.key(), expected: None }];
                let writes = [
                    Write { table: Table::WorkflowFirings, key: firing.key(), value: Some(firing.encode()) },
                    Write { table: Table::WorkflowRuns, key: run.key(), value: Some(run.encode()) },
                ];
                if !self.store.atomic(&checks, &writes)? {
                    return Ok(None);
                }
                let _ = self.updates.send(Arc::new(run.clone()));
            }
        }
        tracing::info!(workflow = %workflow.id, run = %run.id, trigger, by, queued = (status == RunStatus::Queued), "workflow run started");
        if status == RunStatus::Running {
            self.drive(run.clone(), stored.graph);
        }
        Ok(Some(run))
    }

    /// Drives again every run a previous process left running, then starts queued runs where
    /// there is room. Called once at start.
    pub fn resume_all(self: &Arc<Self>) -> Result<usize, EngineError> {
        let runs: Vec<Run> = self.store.load_all::<Run>()?;
        let mut resumed = 0;
        for run in runs.iter().filter(|r| r.status == RunStatus::Running) {
            let Some(stored) = super::version(self.store.as_ref(), run.workflow_id, run.version)? else { continue };
            tracing::info!(run = %run.id, "workflow run resumed");
            self.drive(run.clone(), stored.graph);
            resumed += 1;
        }
        let mut workflows: Vec<Uuid> =
            runs.iter().filter(|r| r.status == RunStatus::Queued).map(|r| r.workflow_id).collect();
        workflows.dedup();
        for workflow in workflows {
            self.admit_queued(workflow)?;
        }
        Ok(resumed)
    }

    /// Starts the oldest queued runs of a workflow while it has room.
    fn admit_queued(self: &Arc<Self>, workflow_id: Uuid) -> Result<(), EngineError> {
        let Some(workflow) = super::get(self.store.as_ref(), workflow_id)? else { return Ok(()) };
        let _admission = self.admission.lock().expect("admission");
        for mut run in runs_of(self.store.as_ref(), workflow_id)?.into_iter().filter(|r| r.status == RunStatus::Queued)
        {
            if self.running_count(workflow_id) >= workflow.concurrency.max(1) as usize {
                break;
            }
            let Some(stored) = super::version(self.store.as_ref(), workflow_id, run.version)? else { continue };
            run.status = RunStatus::Running;
            self.store_run(&run)?;
            self.drive(run, stored.graph);
        }
        Ok(())
    }

    /// Cancels a run: its running nodes are stopped, everything left is cancelled.
    pub fn cancel(&self, workflow_id: Uuid, run_id: Uuid) -> Result<Run, EngineError> {
        let mut run = get_run(self.store.as_ref(), workflow_id, run_id)?.ok_or(EngineError::Over)?;
        if run.status.is_over() {
            return Err(EngineError::Over);
        }
        if let Some((_, commands)) = self.live.lock().expect("live runs").get(&run_id) {
            let _ = commands.send(Command::Cancel);
            return Ok(run);
        }
        // Queued: never started.
        let now = self.clock.now_ms();
        run.progress.cancel(now);
        run.status = RunStatus::Cancelled;
        run.finished_at_ms = Some(now);
        self.store_run(&run)?;
        Ok(run)
    }

    /// A person approves or rejects an approval node that waits.
    pub fn decide(
        &self,
        workflow_id: Uuid,
        run_id: Uuid,
        node: &str,
        approved: bool,
        by: &str,
    ) -> Result<(), EngineError> {
        let run = get_run(self.store.as_ref(), workflow_id, run_id)?.ok_or(EngineError::Over)?;
        if run.status.is_over() {
            return Err(EngineError::Over);
        }
        let waiting =
            run.progress.step(node).is_some_and(|s| s.status == StepStatus::Waiting && s.wake_at_ms.is_none());
        let live = self.live.lock().expect("live runs");
        match (waiting, live.get(&run_id)) {
            (true, Some((_, commands))) => {
                let _ = commands.send(Command::Decide { node: node.to_owned(), approved, by: by.to_owned() });
                Ok(())
            }
            _ => Err(EngineError::NotWaiting(node.to_owned())),
        }
    }

    fn drive(self: &Arc<Self>, run: Run, graph: Graph) {
        let (commands, receiver) = mpsc::unbounded_channel();
        self.live.lock().expect("live runs").insert(run.id, (run.workflow_id, commands));
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            let (workflow_id, run_id) = (run.workflow_id, run.id);
            if let Err(e) = engine.clone().drive_run(run, graph, receiver).await {
                tracing::error!(run = %run_id, error = %e, "a workflow run could not be stored; it resumes at the next start");
            }
            engine.live.lock().expect("live runs").remove(&run_id);
            engine.forget_if_orphaned(workflow_id, run_id);
            if let Err(e) = prune_runs(engine.store.as_ref(), workflow_id, RUNS_KEPT) {
                tracing::warn!(workflow = %workflow_id, error = %e, "old workflow runs could not be deleted");
            }
            if let Err(e) = engine.admit_queued(workflow_id) {
                tracing::error!(workflow = %workflow_id, error = %e, "queued workflow runs could not be started");
            }
        });
    }

    /// A run whose workflow was deleted while it ended (its last write came after the
    /// deletion) is deleted too, with its log.
    fn forget_if_orphaned(&self, workflow_id: Uuid, run_id: Uuid) {
        if !matches!(super::get(self.store.as_ref(), workflow_id), Ok(None)) {
            return;
        }
        let mut writes = vec![Write { table: Table::WorkflowRuns, key: run_key(workflow_id, run_id), value: None }];
        if let Ok(lines) = self.store.scan_prefix(Table::WorkflowLogs, run_id.as_bytes()) {
            writes.extend(lines.into_iter().map(|(key, _)| Write { table: Table::WorkflowLogs, key, value: None }));
        }
        if let Err(e) = self.store.atomic(&[], &writes) {
            tracing::warn!(run = %run_id, error = %e, "the run of a deleted workflow could not be deleted");
        }
    }

    async fn drive_run(
        self: Arc<Self>,
        mut run: Run,
        graph: Graph,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), StoreError> {
        let nodes: HashMap<String, Node> = graph.nodes.iter().map(|n| (n.id.clone(), n.clone())).collect();
        let seq = Arc::new(AtomicU64::new(logs_of(self.store.as_ref(), run.id)?.last().map_or(0, |l| l.seq + 1)));
        let (events, mut finished) = mpsc::unbounded_channel::<StepEvent>();
        let mut tasks = JoinSet::new();
        // What was in flight when the last process stopped goes on.
        let in_flight: Vec<String> = run
            .progress
            .steps
            .iter()
            .filter(|(_, s)| matches!(s.status, StepStatus::Running | StepStatus::Waiting))
            .map(|(id, _)| id.clone())
            .collect();
        for id in in_flight {
            if let Some(node) = nodes.get(&id) {
                self.launch(&mut run, node, &seq, &events, &mut tasks);
            }
        }
        loop {
            let now = self.clock.now_ms();
            // Conditions and switches end as they start, which may make more nodes ready.
            loop {
                let ready = run.progress.advance(&graph, now);
                if ready.is_empty() {
                    break;
                }
                for id in ready {
                    if let Some(node) = nodes.get(&id) {
                        self.launch(&mut run, node, &seq, &events, &mut tasks);
                    }
                }
            }
            if run.progress.is_done() {
                run.finished_at_ms = Some(now);
                match run.progress.unhandled_failure(&graph) {
                    Some((node, step)) => {
                        run.status = RunStatus::Failed;
                        run.error = Some(format!("node `{node}` {}", step.error.as_deref().unwrap_or("failed")));
                    }
                    None => run.status = RunStatus::Succeeded,
                }
                self.store_run(&run)?;
                tracing::info!(run = %run.id, status = ?run.status, "workflow run ended");
                return Ok(());
            }
            self.store_run(&run)?;
            tokio::select! {
                Some(event) = finished.recv() => self.apply(&mut run, event),
                command = commands.recv() => match command {
                    Some(Command::Decide { node, approved, by }) => {
                        let port = if approved { "approved" } else { "rejected" };
                        let log = self.step_log(&run, &node, &seq);
                        log.line(format!("{port} by {by}"));
                        let output = serde_json::json!({ "approved": approved, "by": by });
                        run.progress.finish(&node, Outcome::Succeeded { port: port.to_owned(), output }, self.clock.now_ms());
                    }
                    Some(Command::Cancel) | None => {
                        tasks.abort_all();
                        let now = self.clock.now_ms();
                        run.progress.cancel(now);
                        run.status = RunStatus::Cancelled;
                        run.finished_at_ms = Some(now);
                        self.store_run(&run)?;
                        tracing::info!(run = %run.id, "workflow run cancelled");
                        return Ok(());
                    }
                },
            }
        }
    }

    fn apply(&self, run: &mut Run, event: StepEvent) {
        let now = self.clock.now_ms();
        match event {
            StepEvent::Attempt { node, attempt } => {
                run.progress.begin(&node, StepStatus::Running, now);
                if let Some(step) = run.progress.step_mut(&node) {
                    step.attempts = attempt;
                    step.wake_at_ms = None;
                }
            }
            StepEvent::Retry { node, error, at_ms } => run.progress.retrying(&node, error, at_ms),
            StepEvent::Finished { node, outcome } => run.progress.finish(&node, outcome, now),
        }
    }

    fn step_log(&self, run: &Run, node: &str, seq: &Arc<AtomicU64>) -> StepLog {
        StepLog {
            store: Arc::clone(&self.store),
            run_id: run.id,
            node: node.to_owned(),
            seq: Arc::clone(seq),
            clock: self.clock,
        }
    }

    /// Starts (or resumes) one node: the run's own kinds here, the others in a task of their
    /// own through the runner, with attempts, backoff and timeouts.
    fn launch(
        self: &Arc<Self>,
        run: &mut Run,
        node: &Node,
        seq: &Arc<AtomicU64>,
        events: &mpsc::UnboundedSender<StepEvent>,
        tasks: &mut JoinSet<()>,
    ) {
        let now = self.clock.now_ms();
        let context = serde_json::json!({
            "trigger": run.progress.step(&run.trigger).and_then(|s| s.output.clone()),
            "nodes": run.progress.nodes_context(),
            "run": { "id": run.id, "workflow": run.workflow_id, "started_by": run.started_by },
        });
        let log = self.step_log(run, &node.id, seq);
        let step = run.progress.step(&node.id).cloned();
        let resumed = step.as_ref().is_some_and(|s| s.status != StepStatus::Pending);
        match &node.action {
            Action::Condition { expression } => {
                run.progress.begin(&node.id, StepStatus::Running, now);
                let outcome = match expr::truthy(expression, &context) {
                    Ok(value) => {
                        log.line(format!("{expression} → {value}"));
                        Outcome::Succeeded { port: value.to_string(), output: serde_json::json!({ "value": value }) }
                    }
                    Err(e) => Outcome::Failed { error: format!("its expression failed: {e}") },
                };
                run.progress.finish(&node.id, outcome, now);
            }
            Action::Switch { expression, cases } => {
                run.progress.begin(&node.id, StepStatus::Running, now);
                let outcome = match expr::eval(expression, &context) {
                    Ok(value) => {
                        let text = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
                        let port = cases.iter().find(|c| **c == text).cloned().unwrap_or_else(|| "default".to_owned());
                        log.line(format!("{expression} → {text}: {port}"));
                        Outcome::Succeeded { port, output: serde_json::json!({ "value": value }) }
                    }
                    Err(e) => Outcome::Failed { error: format!("its expression failed: {e}") },
                };
                run.progress.finish(&node.id, outcome, now);
            }
            Action::Approval { message } => {
                run.progress.begin(&node.id, StepStatus::Waiting, now);
                if !resumed {
                    let asked = expr::render(message, &context).unwrap_or_else(|_| message.clone());
                    log.line(format!("waiting for approval: {asked}"));
                }
            }
            Action::Wait { seconds } => {
                let wake_at =
                    step.and_then(|s| s.wake_at_ms).filter(|_| resumed).unwrap_or(now + seconds.saturating_mul(1000));
                run.progress.begin(&node.id, StepStatus::Waiting, now);
                if let Some(step) = run.progress.step_mut(&node.id) {
                    step.wake_at_ms = Some(wake_at);
                }
                let (events, id, clock) = (events.clone(), node.id.clone(), self.clock);
                tasks.spawn(async move {
                    tokio::time::sleep(clock.until(wake_at)).await;
                    let outcome = Outcome::Succeeded { port: OUT.to_owned(), output: serde_json::json!({}) };
                    let _ = events.send(StepEvent::Finished { node: id, outcome });
                });
            }
            _ => {
                // An attempt a stopped process was in the middle of is made again; a retry
                // that was waiting waits out the rest of its backoff.
                let (done, wake_at) = match &step {
                    Some(s) if s.status == StepStatus::Running => (s.attempts.saturating_sub(1), None),
                    Some(s) if s.status == StepStatus::Waiting => (s.attempts, s.wake_at_ms),
                    _ => (0, None),
                };
                run.progress.begin(&node.id, StepStatus::Running, now);
                let engine = Arc::clone(self);
                let (events, node, run_view) = (events.clone(), node.clone(), run.clone());
                tasks.spawn(async move {
                    if let Some(at) = wake_at {
                        tokio::time::sleep(engine.clock.until(at)).await;
                    }
                    engine.attempts(&run_view, &node, &context, &log, done, &events).await;
                });
            }
        }
    }

    async fn attempts(
        &self,
        run: &Run,
        node: &Node,
        context: &serde_json::Value,
        log: &StepLog,
        done: u32,
        events: &mpsc::UnboundedSender<StepEvent>,
    ) {
        let policy = node.retry.unwrap_or_default();
        let mut attempt = done;
        loop {
            attempt += 1;
            let _ = events.send(StepEvent::Attempt { node: node.id.clone(), attempt });
            let result = match render(node, context) {
                Ok(rendered) => {
                    let call = Call { run, node: &rendered, context, log };
                    match node.timeout_seconds {
                        Some(seconds) => tokio::time::timeout(Duration::from_secs(seconds), self.runner.run(call))
                            .await
                            .unwrap_or_else(|_| Err(format!("timed out after {seconds} s"))),
                        None => self.runner.run(call).await,
                    }
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(output) => {
                    let outcome = Outcome::Succeeded { port: OUT.to_owned(), output };
                    let _ = events.send(StepEvent::Finished { node: node.id.clone(), outcome });
                    return;
                }
                Err(error) if attempt < policy.attempts => {
                    let wait = backoff(&policy, attempt);
                    log.line(format!(
                        "attempt {attempt} of {} failed: {error}; next in {:.1} s",
                        policy.attempts,
                        wait.as_secs_f64()
                    ));
                    let at_ms = self.clock.now_ms() + wait.as_millis() as u64;
                    let _ = events.send(StepEvent::Retry { node: node.id.clone(), error, at_ms });
                    tokio::time::sleep(wait).await;
                }
                Err(error) => {
                    log.line(format!("attempt {attempt} of {} failed: {error}", policy.attempts));
                    let error = format!("failed after {attempt} attempt(s): {error}");
                    let _ =
                        events.send(StepEvent::Finished { node: node.id.clone(), outcome: Outcome::Failed { error } });
                    return;
                }
            }
        }
    }
}

/// The node with its settings' templates rendered over the run so far.
fn render(node: &Node, context: &serde_json::Value) -> Result<Node, String> {
    let settings = serde_json::to_value(&node.action).map_err(|e| e.to_string())?;
    let rendered = expr::render_leaves(&settings, context).map_err(|e| format!("a template failed: {e}"))?;
    let action = serde_json::from_value(rendered).map_err(|e| format!("its rendered settings do not read: {e}"))?;
    Ok(Node { action, ..node.clone() })
}
