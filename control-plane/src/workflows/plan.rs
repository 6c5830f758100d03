//! A run's progress as a pure state machine: which nodes may run now, and what a node's end
//! means for the nodes after it. No clock and no I/O: the engine tells it what happened (with
//! the time) and stores what it becomes.
//!
//! A node runs when every edge into it is decided and at least one is taken; when every edge
//! into it is decided and none is taken, it is skipped (and so, in turn, are the nodes only it
//! leads to). An edge is taken when its node left by the edge's port: a succeeded node by the
//! port it chose, a failed node by `failure`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::graph::{FAILURE, Graph, OUT};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = WorkflowStepStatus)]
pub enum StepStatus {
    Pending,
    Running,
    /// A wait node sleeping, an approval waiting for a person, or a retry waiting for its turn.
    Waiting,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl StepStatus {
    pub fn is_settled(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Skipped | Self::Cancelled)
    }
}

/// One node's part of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = WorkflowStep)]
pub struct Step {
    pub status: StepStatus,
    /// Attempts started so far.
    pub attempts: u32,
    /// The port it left by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub output: Option<serde_json::Value>,
    /// The last attempt's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// When a waiting step goes on: the end of a wait, or the next attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at_ms: Option<u64>,
}

impl Step {
    fn pending() -> Self {
        Self {
            status: StepStatus::Pending,
            attempts: 0,
            port: None,
            output: None,
            error: None,
            started_at_ms: None,
            finished_at_ms: None,
            wake_at_ms: None,
        }
    }
}

/// How a node's work ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded { port: String, output: serde_json::Value },
    Failed { error: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EdgeState {
    Undecided,
    Taken,
    NotTaken,
}

/// Every node's step, by node id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    pub steps: BTreeMap<String, Step>,
}

impl Progress {
    /// A run started by `trigger` (a trigger node) with `payload` as its output; the other
    /// triggers did not fire.
    pub fn start(graph: &Graph, trigger: &str, payload: serde_json::Value, now_ms: u64) -> Self {
        let steps = graph
            .nodes
            .iter()
            .map(|node| {
                let mut step = Step::pending();
                if node.id == trigger {
                    step.status = StepStatus::Succeeded;
                    step.attempts = 1;
                    step.port = Some(OUT.to_owned());
                    step.output = Some(payload.clone());
                    step.started_at_ms = Some(now_ms);
                    step.finished_at_ms = Some(now_ms);
                } else if node.action.is_trigger() {
                    step.status = StepStatus::Skipped;
                }
                (node.id.clone(), step)
            })
            .collect();
        Self { steps }
    }

    fn edge_state(&self, from: &str, port: &str) -> EdgeState {
        let Some(step) = self.steps.get(from) else { return EdgeState::NotTaken };
        match step.status {
            StepStatus::Succeeded if step.port.as_deref() == Some(port) => EdgeState::Taken,
            StepStatus::Failed if port == FAILURE => EdgeState::Taken,
            status if status.is_settled() => EdgeState::NotTaken,
            _ => EdgeState::Undecided,
        }
    }

    /// Skips what can no longer run, and answers the nodes that may start now (still pending).
    pub fn advance(&mut self, graph: &Graph, now_ms: u64) -> Vec<String> {
        loop {
            let mut ready = Vec::new();
            let mut skipped = Vec::new();
            for node in &graph.nodes {
                if self.steps.get(&node.id).map(|s| s.status) != Some(StepStatus::Pending) {
                    continue;
                }
                let states: Vec<EdgeState> =
                    graph.edges.iter().filter(|e| e.to == node.id).map(|e| self.edge_state(&e.from, &e.port)).collect();
                if states.contains(&EdgeState::Undecided) {
                    continue;
                }
                if states.contains(&EdgeState::Taken) {
                    ready.push(node.id.clone());
                } else {
                    skipped.push(node.id.clone());
                }
            }
            if skipped.is_empty() {
                return ready;
            }
            for id in skipped {
                if let Some(step) = self.steps.get_mut(&id) {
                    step.status = StepStatus::Skipped;
                    step.finished_at_ms = Some(now_ms);
                }
            }
        }
    }

    pub fn step(&self, node: &str) -> Option<&Step> {
        self.steps.get(node)
    }

    pub fn step_mut(&mut self, node: &str) -> Option<&mut Step> {
        self.steps.get_mut(node)
    }

    /// A node starts (or a waiting node wakes).
    pub fn begin(&mut self, node: &str, status: StepStatus, now_ms: u64) {
        if let Some(step) = self.steps.get_mut(node) {
            step.status = status;
            step.started_at_ms.get_or_insert(now_ms);
        }
    }

    /// An attempt failed and another follows at `retry_at_ms`.
    pub fn retrying(&mut self, node: &str, error: String, retry_at_ms: u64) {
        if let Some(step) = self.steps.get_mut(node) {
            step.status = StepStatus::Waiting;
            step.error = Some(error);
            step.wake_at_ms = Some(retry_at_ms);
        }
    }

    pub fn finish(&mut self, node: &str, outcome: Outcome, now_ms: u64) {
        let Some(step) = self.steps.get_mut(node) else { return };
        if step.status.is_settled() {
            return;
        }
        step.finished_at_ms = Some(now_ms);
        step.wake_at_ms = None;
        match outcome {
            Outcome::Succeeded { port, output } => {
                step.status = StepStatus::Succeeded;
                step.port = Some(port);
                step.output = Some(output);
                step.error = None;
            }
            Outcome::Failed { error } => {
                step.status = StepStatus::Failed;
                step.error = Some(error);
            }
        }
    }

    /// Everything not yet settled is cancelled.
    pub fn cancel(&mut self, now_ms: u64) {
        for step in self.steps.values_mut().filter(|s| !s.status.is_settled()) {
            step.status = StepStatus::Cancelled;
            step.finished_at_ms = Some(now_ms);
        }
    }

    /// Whether every step is settled.
    pub fn is_done(&self) -> bool {
        self.steps.values().all(|s| s.status.is_settled())
    }

    /// The node whose failure failed the run: one that failed with no on-failure edge.
    pub fn unhandled_failure<'a>(&'a self, graph: &Graph) -> Option<(&'a str, &'a Step)> {
        self.steps.iter().find_map(|(id, step)| {
            let handled = graph.edges.iter().any(|e| e.from == *id && e.port == FAILURE);
            (step.status == StepStatus::Failed && !handled).then_some((id.as_str(), step))
        })
    }

    /// What templates and expressions of the run see of its nodes.
    pub fn nodes_context(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.steps
                .iter()
                .map(|(id, step)| {
                    let view = serde_json::json!({
                        "status": step.status,
                        "port": step.port,
                        "output": step.output,
                        "error": step.error,
                        "attempts": step.attempts,
                    });
                    (id.clone(), view)
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflows::graph::parse;
    use serde_json::json;

    /// start → check (condition) → on true: deploy → notify; on false: alert. deploy's failure
    /// goes to rollback.
    fn graph() -> Graph {
        parse(&json!({
            "nodes": [
                {"id": "start", "type": "manual", "config": {}},
                {"id": "check", "type": "condition", "config": {"expression": "true"}},
                {"id": "deploy", "type": "wait", "config": {"seconds": 1}},
                {"id": "rollback", "type": "wait", "config": {"seconds": 1}},
                {"id": "alert", "type": "wait", "config": {"seconds": 1}},
                {"id": "notify", "type": "wait", "config": {"seconds": 1}}
            ],
            "edges": [
                {"from": "start", "to": "check"},
                {"from": "check", "port": "true", "to": "deploy"},
                {"from": "check", "port": "false", "to": "alert"},
                {"from": "deploy", "to": "notify"},
                {"from": "deploy", "port": "failure", "to": "rollback"},
                {"from": "alert", "to": "notify"}
            ]
        }))
        .expect("a known step")
    }

    fn ok(port: &str) -> Outcome {
        Outcome::Succeeded { port: port.to_owned(), output: json!({}) }
    }

    #[test]
    fn a_branch_not_taken_is_skipped_and_a_join_runs_once_a_branch_arrives() {
        let graph = graph();
        let mut progress = Progress::start(&graph, "start", json!({"by": "ops"}), 0);
        assert_eq!(progress.advance(&graph, 0), ["check"]);
        progress.begin("check", StepStatus::Running, 0);
        progress.finish("check", ok("true"), 1);
        assert_eq!(progress.advance(&graph, 1), ["deploy"]);
        assert_eq!(progress.step("alert").expect("a known step").status, StepStatus::Skipped);
        progress.begin("deploy", StepStatus::Running, 1);
        progress.finish("deploy", ok("out"), 2);
        assert_eq!(progress.advance(&graph, 2), ["notify"], "one branch into the join was taken, one skipped");
        assert_eq!(progress.step("rollback").expect("a known step").status, StepStatus::Skipped);
        progress.finish("notify", ok("out"), 3);
        assert!(progress.is_done());
        assert_eq!(progress.unhandled_failure(&graph), None);
    }

    #[test]
    fn a_failure_follows_the_on_failure_edge_and_is_then_handled() {
        let graph = graph();
        let mut progress = Progress::start(&graph, "start", json!({}), 0);
        progress.advance(&graph, 0);
        progress.finish("check", ok("true"), 1);
        progress.advance(&graph, 1);
        progress.finish("deploy", Outcome::Failed { error: "boom".into() }, 2);
        assert_eq!(progress.advance(&graph, 2), ["rollback"]);
        assert_eq!(progress.step("notify").expect("a known step").status, StepStatus::Skipped);
        progress.finish("rollback", ok("out"), 3);
        assert!(progress.is_done());
        assert_eq!(progress.unhandled_failure(&graph), None, "the failure was handled by its edge");
    }

    #[test]
    fn a_failure_without_an_edge_fails_the_run() {
        let graph = graph();
        let mut progress = Progress::start(&graph, "start", json!({}), 0);
        progress.advance(&graph, 0);
        progress.finish("check", Outcome::Failed { error: "bad expression".into() }, 1);
        assert!(progress.advance(&graph, 1).is_empty());
        assert!(progress.is_done(), "everything after it is skipped");
        assert_eq!(progress.unhandled_failure(&graph).map(|(id, _)| id), Some("check"));
    }

    #[test]
    fn cancelling_settles_everything_left() {
        let graph = graph();
        let mut progress = Progress::start(&graph, "start", json!({}), 0);
        progress.advance(&graph, 0);
        progress.begin("check", StepStatus::Running, 0);
        progress.cancel(5);
        assert!(progress.is_done());
        assert_eq!(progress.step("check").expect("a known step").status, StepStatus::Cancelled);
        progress.finish("check", ok("true"), 6);
        assert_eq!(
            progress.step("check").expect("a known step").status,
            StepStatus::Cancelled,
            "a late result changes nothing"
        );
    }
}
