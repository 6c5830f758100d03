//! A workflow's graph: typed nodes, and edges from a node's output port to another node. `check`
//! finds every problem of a graph and names the node (or edge) of each.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::expr;

/// The port every node leaves by when it succeeds, unless its kind has ports of its own.
pub const OUT: &str = "out";
/// The port a node leaves by when it failed past its retries: its on-failure edge.
pub const FAILURE: &str = "failure";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = WorkflowGraph)]
pub struct Graph {
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub edges: Vec<Edge>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = WorkflowNode)]
pub struct Node {
    /// Lowercase letters, digits and `_`: the node's name in expressions (`nodes.<id>.output`).
    pub id: String,
    /// What the editor shows on the node.
    #[serde(default)]
    pub name: String,
    #[serde(flatten)]
    pub action: Action,
    /// Where the editor draws it.
    #[serde(default)]
    pub position: Position,
    /// How a failed attempt is tried again; once, by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// How long one attempt may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = NodePosition)]
pub struct Position {
    pub x: f64,
    pub y: f64,
}

/// Attempts of a node: the first, then retries after an exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, 1 to 10.
    pub attempts: u32,
    /// The wait before the second attempt; it doubles after each failure.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// The longest wait between attempts.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

fn default_backoff_ms() -> u64 {
    1_000
}
fn default_max_backoff_ms() -> u64 {
    60_000
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { attempts: 1, backoff_ms: default_backoff_ms(), max_backoff_ms: default_max_backoff_ms() }
    }
}

/// An edge: when `from` leaves by `port`, `to` may run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = WorkflowEdge)]
pub struct Edge {
    pub from: String,
    #[serde(default = "default_port")]
    pub port: String,
    pub to: String,
}

fn default_port() -> String {
    OUT.to_owned()
}

/// What happens that starts a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = WorkflowEvent)]
pub enum EventKind {
    DeploymentSucceeded,
    DeploymentFailed,
    DriftRepaired,
    AgentConnected,
    AgentDisconnected,
}

/// Where a notification goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[schema(as = NotifyChannel)]
pub enum Channel {
    /// A JSON POST of `{title, message, run}`.
    Webhook { url: String },
    /// A Slack incoming webhook (`{"text": …}`).
    Slack { url: String },
    /// An email through an SMTP relay, without authentication: `smtp://host:port` (add
    /// `?tls=required` for STARTTLS) or `smtps://host:port`.
    Email { to: Vec<String>, relay: String, from: String },
}

/// A node's kind and its settings. Text settings are templates over the run so far
/// (`{{ nodes.deploy.output.state }}`, `{{ trigger.deployment_id }}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", content = "config", rename_all = "snake_case")]
#[schema(as = WorkflowAction)]
pub enum Action {
    /// A trigger: someone starts a run, in the dashboard or through the API.
    Manual {},
    /// A trigger: a cron schedule (five fields, UTC), each occurrence once.
    Cron { schedule: String },
    /// A trigger: something happens in the organisation.
    Event { events: Vec<EventKind> },
    /// A trigger: a POST to the workflow's webhook URL, signed with its secret.
    Webhook {},
    /// Deploys a stack (by id or name) to a target (by id or name) and waits for it to settle.
    Deploy {
        stack: String,
        target: String,
        #[serde(default)]
        version: Option<String>,
        #[serde(default)]
        platform: Option<String>,
    },
    /// Rolls a deployment back to a version (the one before, by default).
    Rollback {
        deployment: String,
        #[serde(default)]
        version: Option<String>,
    },
    /// Sets a service's replicas.
    Scale { deployment: String, service: String, replicas: String },
    /// Removes a deployment.
    Remove {
        deployment: String,
        #[serde(default)]
        volumes: bool,
    },
    /// Leaves by `true` or `false`, as its expression says.
    Condition { expression: String },
    /// Leaves by the first case equal to its expression's value, else by `default`.
    Switch { expression: String, cases: Vec<String> },
    /// Waits, then goes on.
    Wait { seconds: u64 },
    /// Waits for a person to approve (port `approved`) or reject (port `rejected`).
    Approval { message: String },
    /// An HTTP request; its output is the status, headers and body (JSON when it is).
    Http {
        #[serde(default = "default_method")]
        method: String,
        url: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        #[serde(default)]
        body: Option<String>,
    },
    /// A jq filter (jaq) over its input (the previous node's output, by default).
    Transform {
        filter: String,
        #[serde(default)]
        input: Option<String>,
    },
    /// A notification.
    Notify {
        channel: Channel,
        #[serde(default)]
        title: String,
        message: String,
    },
    /// Asks the organisation's language model; the answer is the node's output (`text`, and
    /// `json` when the answer reads as JSON).
    Llm {
        prompt: String,
        /// Instructions for the model (default: be brief and exact).
        #[serde(default)]
        system: String,
    },
}

fn default_method() -> String {
    "GET".to_owned()
}

impl Action {
    pub fn type_name(&self) -> &'static str {
        match self {
            Action::Manual {} => "manual",
            Action::Cron { .. } => "cron",
            Action::Event { .. } => "event",
            Action::Webhook {} => "webhook",
            Action::Deploy { .. } => "deploy",
            Action::Rollback { .. } => "rollback",
            Action::Scale { .. } => "scale",
            Action::Remove { .. } => "remove",
            Action::Condition { .. } => "condition",
            Action::Switch { .. } => "switch",
            Action::Wait { .. } => "wait",
            Action::Approval { .. } => "approval",
            Action::Http { .. } => "http",
            Action::Transform { .. } => "transform",
            Action::Notify { .. } => "notify",
            Action::Llm { .. } => "llm",
        }
    }

    pub fn is_trigger(&self) -> bool {
        matches!(self, Action::Manual {} | Action::Cron { .. } | Action::Event { .. } | Action::Webhook {})
    }

    /// The ports it leaves by when it succeeds.
    pub fn ports(&self) -> Vec<String> {
        match self {
            Action::Condition { .. } => vec!["true".into(), "false".into()],
            Action::Switch { cases, .. } => cases.iter().cloned().chain(["default".to_owned()]).collect(),
            Action::Approval { .. } => vec!["approved".into(), "rejected".into()],
            _ => vec![OUT.into()],
        }
    }
}

/// A problem of a graph, and the node or edge it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = WorkflowProblem)]
pub struct Problem {
    /// The node's id (or `nodes[3]` when it has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `from.port -> to`, for a problem of an edge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge: Option<String>,
    pub message: String,
}

impl Problem {
    fn node(id: &str, message: impl Into<String>) -> Self {
        Self { node: Some(id.to_owned()), edge: None, message: message.into() }
    }
    fn edge(edge: &Edge, message: impl Into<String>) -> Self {
        Self { node: None, edge: Some(format!("{}.{} -> {}", edge.from, edge.port, edge.to)), message: message.into() }
    }
    fn graph(message: impl Into<String>) -> Self {
        Self { node: None, edge: None, message: message.into() }
    }
}

/// Reads a graph from JSON, node by node, so that a node of an unknown type or with a bad
/// setting is named.
pub fn parse(value: &serde_json::Value) -> Result<Graph, Vec<Problem>> {
    let Some(object) = value.as_object() else {
        return Err(vec![Problem::graph("a graph is an object with `nodes` and `edges`")]);
    };
    if let Some(unknown) = object.keys().find(|k| !matches!(k.as_str(), "nodes" | "edges")) {
        return Err(vec![Problem::graph(format!("unknown field `{unknown}`: a graph has `nodes` and `edges`"))]);
    }
    let mut problems = Vec::new();
    let mut nodes = Vec::new();
    let raw_nodes = object.get("nodes").and_then(|n| n.as_array()).cloned().unwrap_or_default();
    for (index, raw) in raw_nodes.iter().enumerate() {
        let name = raw.get("id").and_then(|i| i.as_str()).map_or(format!("nodes[{index}]"), str::to_owned);
        match serde_path_to_error::deserialize::<_, Node>(raw) {
            Ok(node) => nodes.push(node),
            Err(error) => {
                let path = error.path().to_string();
                let at = if path == "." { String::new() } else { format!("{path}: ") };
                problems.push(Problem::node(&name, format!("{at}{}", error.into_inner())));
            }
        }
    }
    let edges = match object.get("edges") {
        None => Vec::new(),
        Some(raw) => serde_json::from_value::<Vec<Edge>>(raw.clone()).unwrap_or_else(|e| {
            problems.push(Problem::graph(format!("edges: {e}")));
            Vec::new()
        }),
    };
    if problems.is_empty() { Ok(Graph { nodes, edges }) } else { Err(problems) }
}

fn is_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Every problem of a graph: ids, edges and ports, cycles, nodes no trigger reaches, missing
/// settings, templates and expressions that do not compile or name unknown nodes, filters and
/// schedules that do not parse.
pub fn check(graph: &Graph) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut by_id: HashMap<&str, &Node> = HashMap::new();
    for node in &graph.nodes {
        if !is_node_id(&node.id) {
            problems.push(Problem::node(
                &node.id,
                "an id is 1 to 64 lowercase letters, digits and `_`, starting with a letter",
            ));
        }
        if by_id.insert(&node.id, node).is_some() {
            problems.push(Problem::node(&node.id, "two nodes have this id"));
        }
    }
    if !graph.nodes.iter().any(|n| n.action.is_trigger()) {
        problems.push(Problem::graph("a workflow needs a trigger: manual, cron, event or webhook"));
    }
    let mut seen = BTreeSet::new();
    for edge in &graph.edges {
        let (Some(from), Some(to)) = (by_id.get(edge.from.as_str()), by_id.get(edge.to.as_str())) else {
            problems.push(Problem::edge(edge, "joins a node that does not exist"));
            continue;
        };
        if !seen.insert(edge) {
            problems.push(Problem::edge(edge, "is there twice"));
        }
        if to.action.is_trigger() {
            problems
                .push(Problem::edge(edge, format!("leads into the trigger `{}`: nothing leads into a trigger", to.id)));
        }
        if edge.port != FAILURE && !from.action.ports().contains(&edge.port) {
            let ports = from.action.ports().join("`, `");
            problems.push(Problem::edge(
                edge,
                format!(
                    "`{}` ({}) has no port `{}`: it has `{ports}` and `{FAILURE}`",
                    from.id,
                    from.action.type_name(),
                    edge.port
                ),
            ));
        }
        if edge.port == FAILURE && from.action.is_trigger() {
            problems.push(Problem::edge(edge, "a trigger cannot fail"));
        }
    }
    if problems.is_empty() {
        problems.extend(cycles(graph));
    }
    if problems.is_empty() {
        let reached = reachable(graph);
        for node in graph.nodes.iter().filter(|n| !n.action.is_trigger() && !reached.contains(n.id.as_str())) {
            problems.push(Problem::node(&node.id, "no trigger leads to it"));
        }
    }
    let ids: BTreeSet<&str> = by_id.keys().copied().collect();
    for node in &graph.nodes {
        problems.extend(check_node(node, &ids).into_iter().map(|m| Problem::node(&node.id, m)));
    }
    problems
}

/// Nodes on a cycle, each named once.
fn cycles(graph: &Graph) -> Vec<Problem> {
    let mut incoming: HashMap<&str, usize> = graph.nodes.iter().map(|n| (n.id.as_str(), 0)).collect();
    for edge in &graph.edges {
        *incoming.entry(edge.to.as_str()).or_default() += 1;
    }
    let mut queue: VecDeque<&str> = incoming.iter().filter(|(_, n)| **n == 0).map(|(id, _)| *id).collect();
    while let Some(id) = queue.pop_front() {
        for edge in graph.edges.iter().filter(|e| e.from == id) {
            let count = incoming.get_mut(edge.to.as_str()).expect("edges join known nodes");
            *count -= 1;
            if *count == 0 {
                queue.push_back(&edge.to);
            }
        }
    }
    let mut looped: Vec<&str> = incoming.into_iter().filter(|(_, n)| *n > 0).map(|(id, _)| id).collect();
    looped.sort_unstable();
    looped.into_iter().map(|id| Problem::node(id, "is on a cycle: a workflow runs forward only")).collect()
}

fn reachable(graph: &Graph) -> BTreeSet<&str> {
    let mut reached: BTreeSet<&str> =
        graph.nodes.iter().filter(|n| n.action.is_trigger()).map(|n| n.id.as_str()).collect();
    let mut queue: Vec<&str> = reached.iter().copied().collect();
    while let Some(id) = queue.pop() {
        for edge in graph.edges.iter().filter(|e| e.from == id) {
            if reached.insert(&edge.to) {
                queue.push(&edge.to);
            }
        }
    }
    reached
}

fn required(value: &str, field: &str) -> Option<String> {
    value.trim().is_empty().then(|| format!("`{field}` is required"))
}

fn is_address(text: &str) -> bool {
    text.split_once('@').is_some_and(|(user, domain)| !user.is_empty() && !domain.is_empty() && !text.contains(' '))
}

fn check_email(to: &[String], relay: &str, from: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if to.is_empty() {
        problems.push("`channel.to` names at least one address".to_owned());
    }
    if let Some(bad) = to.iter().chain([&from.to_owned()]).find(|a| !is_address(a)) {
        problems.push(format!("{bad:?} is not an email address"));
    }
    match relay.split_once("://") {
        Some(("smtp" | "smtps", rest)) if !rest.is_empty() => {
            if rest.split(['/', '?']).next().unwrap_or_default().contains('@') {
                problems.push(
                    "`channel.relay` carries credentials, which would be stored in clear: use a relay that needs none"
                        .to_owned(),
                );
            }
        }
        _ => problems.push("`channel.relay` is smtp://host:port or smtps://host:port".to_owned()),
    }
    problems
}

/// A node's own problems, as messages.
fn check_node(node: &Node, ids: &BTreeSet<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(retry) = node.retry {
        if !(1..=10).contains(&retry.attempts) {
            problems.push("`retry.attempts` is 1 to 10".to_owned());
        }
        if retry.backoff_ms > retry.max_backoff_ms {
            problems.push("`retry.backoff_ms` is more than `retry.max_backoff_ms`".to_owned());
        }
    }
    if node.timeout_seconds == Some(0) {
        problems.push("`timeout_seconds` is at least 1".to_owned());
    }
    let mut templates: Vec<(&str, &str)> = Vec::new();
    match &node.action {
        Action::Manual {} | Action::Webhook {} => {}
        Action::Cron { schedule } => {
            if let Err(e) = super::schedule::parse(schedule) {
                problems.push(format!("`schedule`: {e}"));
            }
        }
        Action::Event { events } => {
            if events.is_empty() {
                problems.push("`events` names at least one event".to_owned());
            }
        }
        Action::Deploy { stack, target, version, platform } => {
            problems.extend(required(stack, "stack"));
            problems.extend(required(target, "target"));
            templates.extend([("stack", stack.as_str()), ("target", target.as_str())]);
            templates.extend(version.as_deref().map(|v| ("version", v)));
            templates.extend(platform.as_deref().map(|v| ("platform", v)));
        }
        Action::Rollback { deployment, version } => {
            problems.extend(required(deployment, "deployment"));
            templates.push(("deployment", deployment));
            templates.extend(version.as_deref().map(|v| ("version", v)));
        }
        Action::Scale { deployment, service, replicas } => {
            for (field, value) in [("deployment", deployment), ("service", service), ("replicas", replicas)] {
                problems.extend(required(value, field));
                templates.push((field, value));
            }
        }
        Action::Remove { deployment, .. } => {
            problems.extend(required(deployment, "deployment"));
            templates.push(("deployment", deployment));
        }
        Action::Condition { expression } | Action::Switch { expression, .. } => {
            problems.extend(required(expression, "expression"));
            if let Err(e) = expr::check_expression(expression, ids) {
                problems.push(format!("`expression`: {e}"));
            }
            if let Action::Switch { cases, .. } = &node.action {
                if cases.is_empty() {
                    problems.push("`cases` has at least one case".to_owned());
                }
                if cases.iter().any(|c| c == "default" || c == FAILURE) {
                    problems.push("`default` and `failure` are not case names".to_owned());
                }
            }
        }
        Action::Wait { seconds } => {
            if *seconds == 0 || *seconds > 30 * 24 * 3600 {
                problems.push("`seconds` is 1 to 2592000 (30 days)".to_owned());
            }
        }
        Action::Approval { message } => templates.push(("message", message)),
        Action::Http { method, url, headers, body } => {
            problems.extend(required(url, "url"));
            if !["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"].contains(&method.as_str()) {
                problems.push(format!("`method` {method} is not one of GET, POST, PUT, PATCH, DELETE, HEAD"));
            }
            templates.push(("url", url));
            templates.extend(headers.values().map(|v| ("headers", v.as_str())));
            templates.extend(body.as_deref().map(|b| ("body", b)));
        }
        Action::Transform { filter, input } => {
            if let Err(e) = super::transform::compile(filter) {
                problems.push(format!("`filter`: {e}"));
            }
            if let Some(input) = input {
                templates.push(("input", input));
            }
        }
        Action::Notify { channel, title, message } => {
            problems.extend(required(message, "message"));
            templates.extend([("title", title.as_str()), ("message", message.as_str())]);
            match channel {
                Channel::Webhook { url } | Channel::Slack { url } => {
                    problems.extend(required(url, "channel.url"));
                    templates.push(("channel.url", url));
                }
                Channel::Email { to, relay, from } => problems.extend(check_email(to, relay, from)),
            }
        }
        Action::Llm { prompt, system } => {
            problems.extend(required(prompt, "prompt"));
            templates.extend([("prompt", prompt.as_str()), ("system", system.as_str())]);
        }
    }
    for (field, template) in templates {
        if let Err(e) = expr::check_template(template, ids) {
            problems.push(format!("`{field}`: {e}"));
        }
    }
    problems
}
