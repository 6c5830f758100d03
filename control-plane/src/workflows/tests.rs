//! The engine with Tokio's clock paused: retries and backoff, timeouts, on-failure edges,
//! parallel branches, cancellation, approvals, the concurrency limit, and a restart in the
//! middle of a run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::json;
use uuid::Uuid;

use super::engine::{Call, Engine, Run, RunStatus, Runner, get_run, logs_of, prune_runs};
use super::plan::StepStatus;
use super::{Workflow, WorkflowVersion, graph};
use crate::store::{RecordStore, RedbStore, Store};

/// What a scripted node does on each attempt.
#[derive(Clone)]
enum Script {
    /// Fails this many attempts, then succeeds.
    FailFirst(u32),
    AlwaysFail,
    /// Takes this long, then succeeds.
    Take(Duration),
    /// Never ends.
    Hang,
}

#[derive(Default)]
struct Scripted {
    scripts: HashMap<String, Script>,
    calls: Mutex<Vec<String>>,
}

impl Scripted {
    fn with(scripts: &[(&str, Script)]) -> Arc<Self> {
        Arc::new(Self { scripts: scripts.iter().map(|(n, s)| (n.to_string(), s.clone())).collect(), ..Self::default() })
    }

    fn calls(&self, node: &str) -> usize {
        self.calls.lock().expect("calls").iter().filter(|c| *c == node).count()
    }
}

impl Runner for Scripted {
    fn run<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<serde_json::Value, String>> {
        Box::pin(async move {
            let node = call.node.id.clone();
            let attempt = {
                let mut calls = self.calls.lock().expect("calls");
                calls.push(node.clone());
                calls.iter().filter(|c| **c == node).count() as u32
            };
            match self.scripts.get(&node).cloned().unwrap_or(Script::FailFirst(0)) {
                Script::FailFirst(n) if attempt <= n => Err(format!("boom {attempt}")),
                Script::FailFirst(_) => Ok(json!({ "node": node, "attempt": attempt })),
                Script::AlwaysFail => Err("boom".to_owned()),
                Script::Take(time) => {
                    tokio::time::sleep(time).await;
                    Ok(json!({ "node": node }))
                }
                Script::Hang => std::future::pending().await,
            }
        })
    }
}

fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("store")).expect("store"));
    (dir, store)
}

/// A node run by the runner (an HTTP node; the scripted runner does what its id says).
fn step(id: &str) -> serde_json::Value {
    json!({"id": id, "type": "http", "config": {"url": "http://127.0.0.1/"}})
}

fn workflow(store: &dyn Store, graph: serde_json::Value, concurrency: u32) -> Workflow {
    let graph = graph::parse(&graph).expect("a graph");
    assert_eq!(graph::check(&graph), [], "the test's graph is valid");
    let workflow = Workflow {
        id: Uuid::now_v7(),
        org_id: Uuid::now_v7(),
        name: "test".into(),
        description: String::new(),
        version: 1,
        concurrency,
        enabled: true,
        webhook_secret: None,
        created_by: "test".into(),
        created_at_unix_s: 0,
        updated_at_unix_s: 0,
    };
    let version = WorkflowVersion {
        workflow_id: workflow.id,
        version: 1,
        graph,
        created_by: "test".into(),
        created_at_unix_s: 0,
    };
    assert!(super::save(store, None, &workflow, &version).expect("saved"));
    workflow
}

/// A chain: a manual trigger, then each node after the one before.
fn chain(nodes: Vec<serde_json::Value>) -> serde_json::Value {
    let mut all = vec![json!({"id": "start", "type": "manual", "config": {}})];
    all.extend(nodes);
    let edges: Vec<serde_json::Value> =
        all.windows(2).map(|pair| json!({"from": pair[0]["id"], "to": pair[1]["id"]})).collect();
    json!({"nodes": all, "edges": edges})
}

async fn until(store: &dyn Store, run: &Run, done: impl Fn(&Run) -> bool) -> Run {
    let mut now = run.clone();
    for _ in 0..100_000 {
        now = get_run(store, run.workflow_id, run.id).expect("store").expect("the run is stored");
        if done(&now) {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the run never got there: {now:#?}");
}

/// The run once one of its nodes is in `status`.
async fn until_step(store: &dyn Store, run: &Run, node: &str, status: StepStatus) -> Run {
    until(store, run, |r| r.progress.step(node).expect("a node of the graph").status == status).await
}

async fn over(store: &dyn Store, run: &Run) -> Run {
    until(store, run, |r| r.status.is_over()).await
}

#[tokio::test(start_paused = true)]
async fn a_failed_attempt_is_retried_after_a_growing_jittered_backoff() {
    let (_dir, store) = store();
    let mut flaky = step("flaky");
    flaky["retry"] = json!({"attempts": 3, "backoff_ms": 1000});
    let workflow = workflow(store.as_ref(), chain(vec![flaky]), 1);
    let runner = Scripted::with(&[("flaky", Script::FailFirst(2))]);
    let engine = Engine::new(store.clone(), runner.clone());
    let started = tokio::time::Instant::now();
    let run = over(store.as_ref(), &engine.start(&workflow, "start", json!({}), "ops").expect("starts")).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(run.progress.step("flaky").expect("a node of the graph").attempts, 3);
    // Waits of 0.5–1 s, then 1–2 s.
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1500) && waited <= Duration::from_millis(3100), "{waited:?}");
    let logs: Vec<String> = logs_of(store.as_ref(), run.id).expect("logs").into_iter().map(|l| l.message).collect();
    assert!(logs[0].starts_with("attempt 1 of 3 failed: boom 1; next in"), "{logs:?}");
}

#[tokio::test(start_paused = true)]
async fn a_node_failing_past_its_retries_fails_the_run_naming_the_node_attempts_and_error() {
    let (_dir, store) = store();
    let mut broken = step("broken");
    broken["retry"] = json!({"attempts": 2, "backoff_ms": 100});
    let workflow = workflow(store.as_ref(), chain(vec![broken, step("after")]), 1);
    let runner = Scripted::with(&[("broken", Script::AlwaysFail)]);
    let engine = Engine::new(store.clone(), runner.clone());
    let run = over(store.as_ref(), &engine.start(&workflow, "start", json!({}), "ops").expect("starts")).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.as_deref(), Some("node `broken` failed after 2 attempt(s): boom"));
    assert_eq!(run.progress.step("after").expect("a node of the graph").status, StepStatus::Skipped);
    assert_eq!(runner.calls("after"), 0);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_that_takes_too_long_times_out() {
    let (_dir, store) = store();
    let mut slow = step("slow");
    slow["timeout_seconds"] = json!(1);
    let workflow = workflow(store.as_ref(), chain(vec![slow]), 1);
    let engine = Engine::new(store.clone(), Scripted::with(&[("slow", Script::Take(Duration::from_secs(60)))]));
    let started = tokio::time::Instant::now();
    let run = over(store.as_ref(), &engine.start(&workflow, "start", json!({}), "ops").expect("starts")).await;
    assert_eq!(run.error.as_deref(), Some("node `slow` failed after 1 attempt(s): timed out after 1 s"));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_failure_with_an_on_failure_edge_runs_the_handler_and_the_run_succeeds() {
    let (_dir, store) = store();
    let graph = json!({
        "nodes": [{"id": "start", "type": "manual", "config": {}}, step("deploy"), step("rollback"), step("notify")],
        "edges": [
            {"from": "start", "to": "deploy"},
            {"from": "deploy", "to": "notify"},
            {"from": "deploy", "port": "failure", "to": "rollback"}
        ]
    });
    let workflow = workflow(store.as_ref(), graph, 1);
    let runner = Scripted::with(&[("deploy", Script::AlwaysFail)]);
    let engine = Engine::new(store.clone(), runner.clone());
    let run = over(store.as_ref(), &engine.start(&workflow, "start", json!({}), "ops").expect("starts")).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!((runner.calls("rollback"), runner.calls("notify")), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn parallel_branches_run_at_the_same_time_and_join() {
    let (_dir, store) = store();
    let graph = json!({
        "nodes": [{"id": "start", "type": "manual", "config": {}}, step("left"), step("right"), step("join")],
        "edges": [
            {"from": "start", "to": "left"}, {"from": "start", "to": "right"},
            {"from": "left", "to": "join"}, {"from": "right", "to": "join"}
        ]
    });
    let workflow = workflow(store.as_ref(), graph, 1);
    let five = Script::Take(Duration::from_secs(5));
    let runner = Scripted::with(&[("left", five.clone()), ("right", five)]);
    let engine = Engine::new(store.clone(), runner.clone());
    let started = tokio::time::Instant::now();
    let run = over(store.as_ref(), &engine.start(&workflow, "start", json!({}), "ops").expect("starts")).await;
    assert_eq!(run.status, RunStatus::Succeeded);
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(6), "both branches at once: {took:?}");
    assert_eq!(runner.calls("join"), 1, "the join runs once");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_run_stops_its_running_nodes_and_cancels_the_rest() {
    let (_dir, store) = store();
    let workflow = workflow(store.as_ref(), chain(vec![step("stuck"), step("after")]), 1);
    let engine = Engine::new(store.clone(), Scripted::with(&[("stuck", Script::Hang)]));
    let run = engine.start(&workflow, "start", json!({}), "ops").expect("starts");
    until_step(store.as_ref(), &run, "stuck", StepStatus::Running).await;
    engine.cancel(workflow.id, run.id).expect("cancels");
    let run = over(store.as_ref(), &run).await;
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.progress.step("stuck").expect("a node of the graph").status, StepStatus::Cancelled);
    assert_eq!(run.progress.step("after").expect("a node of the graph").status, StepStatus::Cancelled);
    assert!(engine.cancel(workflow.id, run.id).is_err(), "an ended run cannot be cancelled");
}

#[tokio::test(start_paused = true)]
async fn conditions_choose_a_branch_and_approvals_wait_for_a_person() {
    let (_dir, store) = store();
    let graph = json!({
        "nodes": [
            {"id": "start", "type": "manual", "config": {}},
            {"id": "check", "type": "condition", "config": {"expression": "trigger.env == 'production'"}},
            {"id": "approve", "type": "approval", "config": {"message": "Deploy to {{ trigger.env }}?"}},
            step("deploy"), step("skip"), step("rejected")
        ],
        "edges": [
            {"from": "start", "to": "check"},
            {"from": "check", "port": "true", "to": "approve"},
            {"from": "check", "port": "false", "to": "skip"},
            {"from": "approve", "port": "approved", "to": "deploy"},
            {"from": "approve", "port": "rejected", "to": "rejected"}
        ]
    });
    let workflow = workflow(store.as_ref(), graph, 1);
    let runner = Scripted::with(&[]);
    let engine = Engine::new(store.clone(), runner.clone());
    let run = engine.start(&workflow, "start", json!({"env": "production"}), "ops").expect("starts");
    until_step(store.as_ref(), &run, "approve", StepStatus::Waiting).await;
    assert!(engine.decide(workflow.id, run.id, "deploy", true, "boss").is_err(), "only a waiting approval is decided");
    engine.decide(workflow.id, run.id, "approve", true, "boss").expect("decides");
    let run = over(store.as_ref(), &run).await;
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.progress.step("approve").expect("a node of the graph").port.as_deref(), Some("approved"));
    assert_eq!((runner.calls("deploy"), runner.calls("skip"), runner.calls("rejected")), (1, 0, 0));
    let logs: Vec<String> = logs_of(store.as_ref(), run.id).expect("logs").into_iter().map(|l| l.message).collect();
    assert!(logs.contains(&"waiting for approval: Deploy to production?".to_owned()), "{logs:?}");
}

#[tokio::test(start_paused = true)]
async fn runs_beyond_the_concurrency_limit_wait_their_turn() {
    let (_dir, store) = store();
    let workflow = workflow(store.as_ref(), chain(vec![step("work")]), 1);
    let engine = Engine::new(store.clone(), Scripted::with(&[("work", Script::Take(Duration::from_secs(10)))]));
    let first = engine.start(&workflow, "start", json!({}), "ops").expect("starts");
    let second = engine.start(&workflow, "start", json!({}), "ops").expect("starts");
    assert_eq!((first.status, second.status), (RunStatus::Running, RunStatus::Queued));
    let first = over(store.as_ref(), &first).await;
    let second = over(store.as_ref(), &second).await;
    assert_eq!((first.status, second.status), (RunStatus::Succeeded, RunStatus::Succeeded));
    let first_end = first.finished_at_ms.expect("finished");
    assert!(
        second.progress.step("work").expect("a node of the graph").started_at_ms.expect("started") >= first_end,
        "one at a time"
    );
}

#[test]
fn a_restart_in_the_middle_of_a_run_resumes_it_without_repeating_a_finished_node() {
    let (_dir, store) = store();
    let graph = chain(vec![
        step("first"),
        step("second"),
        { json!({"id": "pause", "type": "wait", "config": {"seconds": 30}}) },
        step("third"),
    ]);
    let workflow = workflow(store.as_ref(), graph, 1);
    let paused =
        || tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("a runtime");

    // The first process: `first` finishes, `second` is in the middle of its attempt; then the
    // process dies (its runtime and every task with it).
    let before = Scripted::with(&[("second", Script::Hang)]);
    let run = paused().block_on(async {
        let engine = Engine::new(store.clone(), before.clone());
        let run = engine.start(&workflow, "start", json!({"n": 1}), "ops").expect("starts");
        until_step(store.as_ref(), &run, "second", StepStatus::Running).await
    });
    assert_eq!(run.progress.step("first").expect("a node of the graph").status, StepStatus::Succeeded);

    // The second process resumes it.
    let after = Scripted::with(&[]);
    let run = paused().block_on(async {
        let engine = Engine::new(store.clone(), after.clone());
        assert_eq!(engine.resume_all().expect("resumes"), 1);
        over(store.as_ref(), &run).await
    });
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!((before.calls("first"), after.calls("first")), (1, 0), "a finished node is not run again");
    assert_eq!(after.calls("second"), 1, "the interrupted attempt is made again");
    assert_eq!(run.progress.step("second").expect("a node of the graph").attempts, 1, "as the same attempt");
    assert_eq!(after.calls("third"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_wait_node_goes_on_at_the_wake_time_it_stored() {
    let (_dir, store) = store();
    let graph = chain(vec![json!({"id": "pause", "type": "wait", "config": {"seconds": 60}}), step("after")]);
    let workflow = workflow(store.as_ref(), graph, 1);
    let engine = Engine::new(store.clone(), Scripted::with(&[]));
    let run = engine.start(&workflow, "start", json!({}), "ops").expect("starts");
    let waiting = until_step(store.as_ref(), &run, "pause", StepStatus::Waiting).await;
    let wake = waiting.progress.step("pause").expect("a node of the graph").wake_at_ms.expect("a wake time");
    assert!(wake >= waiting.created_at_ms + 60_000);
    let run = over(store.as_ref(), &run).await;
    assert_eq!(run.status, RunStatus::Succeeded);
    assert!(run.progress.step("after").expect("a node of the graph").started_at_ms.expect("started") >= wake);
}

#[tokio::test(start_paused = true)]
async fn each_cron_occurrence_starts_one_run_even_across_a_restart() {
    use super::triggers::fire_due;
    let (_dir, store) = store();
    let graph = json!({
        "nodes": [{"id": "every5", "type": "cron", "config": {"schedule": "*/5 * * * *"}}, step("work")],
        "edges": [{"from": "every5", "to": "work"}]
    });
    let workflow = workflow(store.as_ref(), graph, 5);
    // 2026-11-26T10:20:00Z, an occurrence.
    let at = 1_795_688_400;
    let engine = Engine::new(store.clone(), Scripted::with(&[]));
    assert_eq!(fire_due(&engine, store.as_ref(), at + 30).expect("fires"), 1);
    assert_eq!(fire_due(&engine, store.as_ref(), at + 59).expect("fires"), 0, "10:20 fired already");
    let restarted = Engine::new(store.clone(), Scripted::with(&[]));
    assert_eq!(fire_due(&restarted, store.as_ref(), at + 120).expect("fires"), 0, "nor after a restart");
    assert_eq!(fire_due(&restarted, store.as_ref(), at + 300).expect("fires"), 1, "10:25 is another");
    let runs = super::engine::runs_of(store.as_ref(), workflow.id).expect("runs");
    let times: Vec<serde_json::Value> = runs
        .iter()
        .map(|r| {
            r.progress.step("every5").expect("the trigger").output.clone().expect("payload")["scheduled_at"].clone()
        })
        .collect();
    assert_eq!(times, [json!("2026-11-26T10:20:00Z"), json!("2026-11-26T10:25:00Z")]);
}

#[tokio::test(start_paused = true)]
async fn an_event_starts_the_workflows_waiting_for_it_once() {
    use super::triggers::on_entry;
    let (_dir, store) = store();
    let graph = json!({
        "nodes": [{"id": "failed", "type": "event", "config": {"events": ["deployment_failed"]}}, step("page")],
        "edges": [{"from": "failed", "to": "page"}]
    });
    let workflow = workflow(store.as_ref(), graph, 5);
    let engine = Engine::new(store.clone(), Scripted::with(&[]));
    let mut entry = crate::audit::Entry {
        seq: 7,
        at_unix_ms: 0,
        actor: "system".into(),
        kind: "deployment.failed".into(),
        object: Uuid::nil().to_string(),
        status: None,
        detail: Some("exit 1".into()),
        remote: None,
        org_id: Some(workflow.org_id),
        prev_hash: String::new(),
        hash: String::new(),
    };
    assert_eq!(on_entry(&engine, store.as_ref(), &entry).expect("handled"), 1);
    assert_eq!(on_entry(&engine, store.as_ref(), &entry).expect("handled"), 0, "the same event, again");
    entry.seq = 8;
    entry.kind = "deployment.applied".into();
    assert_eq!(on_entry(&engine, store.as_ref(), &entry).expect("handled"), 0, "not an event it waits for");
    entry.kind = "deployment.failed".into();
    entry.org_id = Some(Uuid::now_v7());
    assert_eq!(on_entry(&engine, store.as_ref(), &entry).expect("handled"), 0, "another organisation's event");
    let run = &super::engine::runs_of(store.as_ref(), workflow.id).expect("runs")[0];
    let payload = run.progress.step("failed").expect("the trigger").output.clone().expect("payload");
    assert_eq!((payload["event"].as_str(), payload["detail"].as_str()), (Some("deployment_failed"), Some("exit 1")));
}

#[tokio::test(start_paused = true)]
async fn deleting_a_workflow_leaves_none_of_its_runs_behind_even_one_ending_just_after() {
    let (_dir, store) = store();
    let workflow = workflow(store.as_ref(), chain(vec![step("stuck")]), 1);
    let engine = Engine::new(store.clone(), Scripted::with(&[("stuck", Script::Hang)]));
    let run = engine.start(&workflow, "start", json!({}), "ops").expect("starts");
    until_step(store.as_ref(), &run, "stuck", StepStatus::Running).await;
    // As the API does: cancel, then delete at once, before the run has written its end.
    engine.cancel(workflow.id, run.id).expect("cancels");
    super::delete(store.as_ref(), &workflow).expect("deleted");
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(super::engine::runs_of(store.as_ref(), workflow.id).expect("runs"), []);
    assert_eq!(logs_of(store.as_ref(), run.id).expect("logs"), []);
}

#[tokio::test(start_paused = true)]
async fn only_the_newest_finished_runs_are_kept_with_their_logs_and_a_run_still_going_never_goes() {
    let (_dir, store) = store();
    let mut broken = step("broken");
    broken["retry"] = json!({"attempts": 2, "backoff_ms": 100});
    let workflow = workflow(store.as_ref(), chain(vec![broken]), 5);
    let engine = Engine::new(store.clone(), Scripted::with(&[("broken", Script::AlwaysFail)]));
    let finished = over(store.as_ref(), &engine.start(&workflow, "start", json!({}), "ops").expect("starts")).await;
    assert!(!logs_of(store.as_ref(), finished.id).expect("logs").is_empty(), "the failed attempt is logged");
    // Older than every other run, and still going.
    let second_after_epoch = uuid::Timestamp::from_unix(uuid::NoContext, 1, 0);
    let going = Run { id: Uuid::new_v7(second_after_epoch), status: RunStatus::Running, ..finished.clone() };
    let newer: Vec<Run> = (0..2).map(|_| Run { id: Uuid::now_v7(), ..finished.clone() }).collect();
    for run in newer.iter().chain([&going]) {
        store.save(run).expect("save");
    }

    assert_eq!(prune_runs(store.as_ref(), workflow.id, 2).expect("pruned"), 1);
    assert_eq!(get_run(store.as_ref(), workflow.id, finished.id).expect("get"), None);
    assert_eq!(logs_of(store.as_ref(), finished.id).expect("logs"), []);
    for kept in newer.iter().chain([&going]) {
        assert!(get_run(store.as_ref(), workflow.id, kept.id).expect("get").is_some());
    }
    assert_eq!(prune_runs(store.as_ref(), workflow.id, 2).expect("pruned"), 0, "only the run still going is past 2");
}
