//! Workflows through the API, on the real Docker engine: an invalid graph is refused node by
//! node; a run deploys a stack, branches on the deployment's state and tells a local receiver;
//! a failing node fails the run with its attempts and last error; approvals and cancellation.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windflow_tests::recorder::Recorder;
use windflow_tests::*;

/// The run once it is over.
async fn over(cp: &mut ControlPlane, workflow: &str, run: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, now) = cp.api(Method::GET, &format!("/workflows/{workflow}/runs/{run}"), None).await;
        if matches!(now["status"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
            return now;
        }
        assert!(Instant::now() < deadline, "the run is still going: {now:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create(cp: &mut ControlPlane, name: &str, graph: Value) -> String {
    let (status, made) = cp.api(Method::POST, "/workflows", Some(json!({"name": name, "graph": graph}))).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    made["id"].as_str().expect("id").to_owned()
}

async fn run(cp: &mut ControlPlane, workflow: &str, input: Value) -> String {
    let (status, started) =
        cp.api(Method::POST, &format!("/workflows/{workflow}/runs"), Some(json!({"input": input}))).await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    started["id"].as_str().expect("run id").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_workflow_is_refused_with_the_node_and_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let graph = json!({
        "nodes": [
            {"id": "start", "type": "manual", "config": {}},
            {"id": "check", "type": "condition", "config": {"expression": "nodes.nowhere.output == 1"}},
            {"id": "a", "type": "wait", "config": {"seconds": 1}},
            {"id": "b", "type": "wait", "config": {"seconds": 1}},
            {"id": "call", "type": "http", "config": {"url": ""}},
            {"id": "ask", "type": "llm", "config": {"prompt": ""}}
        ],
        "edges": [
            {"from": "start", "to": "check"},
            {"from": "check", "port": "true", "to": "a"},
            {"from": "a", "to": "b"}, {"from": "b", "to": "a"},
            {"from": "check", "port": "maybe", "to": "call"}
        ]
    });
    let (status, refused) = cp.api(Method::POST, "/workflows", Some(json!({"name": "bad", "graph": graph}))).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_workflow"))
    );
    let problems = refused["error"]["details"]["problems"].as_array().expect("problems").clone();
    let about = |what: &str| problems.iter().any(|p| p.to_string().contains(what));
    assert!(about(r#""edge":"check.maybe -> call""#), "{problems:#?}");
    // Ports come first; once they are right, the other problems are found.
    let mut graph = graph;
    graph["edges"][4]["port"] = json!("false");
    let (_, refused) = cp.api(Method::POST, "/workflows/validate", Some(json!({"graph": graph}))).await;
    let problems: Vec<(String, String)> = refused["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| {
            (p["node"].as_str().unwrap_or_default().to_owned(), p["message"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    let message = |node: &str| problems.iter().find(|(n, _)| n == node).map(|(_, m)| m.clone()).unwrap_or_default();
    assert!(message("a").contains("cycle") && message("b").contains("cycle"), "{problems:#?}");
    assert!(message("check").contains("there is no node `nowhere`"), "{problems:#?}");
    assert!(message("call").contains("`url` is required"), "{problems:#?}");
    assert!(message("ask").contains("`prompt` is required"), "{problems:#?}");
    // A node of an unknown type is named too.
    let unknown = json!({"nodes": [{"id": "start", "type": "manual", "config": {}}, {"id": "x", "type": "teleport", "config": {}}]});
    let (_, refused) = cp.api(Method::POST, "/workflows/validate", Some(json!({"graph": unknown}))).await;
    assert_eq!(refused["problems"][0]["node"], "x");
    assert!(refused["problems"][0]["message"].as_str().is_some_and(|m| m.contains("teleport")), "{refused}");
    let (_, listed) = cp.api(Method::GET, "/workflows", None).await;
    assert_eq!(listed["total"], 0, "nothing was saved");

    // The five shipped templates save as they are.
    let (_, shipped) = cp.api(Method::GET, "/workflows/templates", None).await;
    let shipped = shipped["items"].as_array().expect("templates").clone();
    let slugs: Vec<&str> = shipped.iter().filter_map(|t| t["slug"].as_str()).collect();
    assert_eq!(
        slugs,
        ["deploy-to-production", "auto-scaling", "backup-and-restore", "security-scan", "health-monitoring"]
    );
    for template in &shipped {
        let body = json!({"name": template["name"], "graph": template["graph"], "enabled": false});
        let (status, saved) = cp.api(Method::POST, "/workflows", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{}: {saved}", template["slug"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_deploys_branches_on_the_deployment_and_tells_a_receiver() {
    let image = busybox_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let agent = cp.start_agent(dir.path(), "wf-host").await;
    let target = agent.id();
    let (_, about) = cp.api(Method::GET, &format!("/targets/{target}"), None).await;
    let target_name = about["name"].as_str().expect("name").to_owned();
    let receiver = Recorder::start().await;
    let compose = format!(
        "services:\n  app:\n    image: {image}\n    command: [\"sleep\", \"600\"]\n    stop_grace_period: 1s\n"
    );
    let (_, stack) = cp.api(Method::POST, "/stacks", Some(json!({"name": "wf-app", "compose": compose}))).await;
    let stack_id = stack["id"].as_str().expect("stack").to_owned();

    let graph = json!({
        "nodes": [
            {"id": "start", "type": "manual", "config": {}},
            {"id": "deploy", "type": "deploy", "config": {"stack": "wf-app", "target": target_name}},
            {"id": "healthy", "type": "condition", "config": {"expression": "nodes.deploy.output.state == 'running'"}},
            {"id": "tell", "type": "http", "config": {
                "method": "POST", "url": receiver.url("/deployed"),
                "headers": {"content-type": "application/json"},
                "body": "{\"deployment\": \"{{ nodes.deploy.output.deployment_id }}\", \"by\": \"{{ trigger.who }}\"}"
            }},
            {"id": "alarm", "type": "notify", "config": {"channel": {"kind": "slack", "url": receiver.url("/alarm")}, "message": "not running"}}
        ],
        "edges": [
            {"from": "start", "to": "deploy"},
            {"from": "deploy", "to": "healthy"},
            {"from": "healthy", "port": "true", "to": "tell"},
            {"from": "healthy", "port": "false", "to": "alarm"}
        ]
    });
    let workflow = create(&mut cp, "deploy and tell", graph).await;
    let run_id = run(&mut cp, &workflow, json!({"who": "ops"})).await;
    let done = over(&mut cp, &workflow, &run_id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["steps"]["healthy"]["port"], "true");
    assert_eq!(done["steps"]["alarm"]["status"], "skipped");
    let told = receiver.wait_for("/deployed", 1, Duration::from_secs(5)).await;
    assert_eq!(told.len(), 1, "told once");
    let deployment_id = done["steps"]["deploy"]["output"]["deployment_id"].as_str().expect("deployment").to_owned();
    assert_eq!(told[0].json(), json!({"deployment": deployment_id, "by": "ops"}));
    let (_, deployment) = cp.api(Method::GET, &format!("/deployments/{deployment_id}"), None).await;
    assert_eq!(
        (deployment["state"].as_str(), deployment["stack_id"].as_str()),
        (Some("running"), Some(stack_id.as_str()))
    );
    let (_, logs) = cp.api(Method::GET, &format!("/workflows/{workflow}/runs/{run_id}/logs"), None).await;
    let lines: Vec<&str> =
        logs["items"].as_array().expect("lines").iter().filter_map(|l| l["message"].as_str()).collect();
    assert!(lines.iter().any(|l| l.starts_with(&format!("deploying wf-app to {target_name}"))), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("→ 200")), "{lines:?}");

    // A receiver that keeps refusing fails the node after its attempts, and the run with it.
    receiver.answer("/down", 503);
    let graph = json!({
        "nodes": [
            {"id": "start", "type": "manual", "config": {}},
            {"id": "call", "type": "http", "config": {"url": receiver.url("/down")}, "retry": {"attempts": 2, "backoff_ms": 100}}
        ],
        "edges": [{"from": "start", "to": "call"}]
    });
    let failing = create(&mut cp, "failing", graph).await;
    let run_id = run(&mut cp, &failing, json!({})).await;
    let done = over(&mut cp, &failing, &run_id).await;
    assert_eq!(done["status"], "failed");
    let error = done["error"].as_str().expect("error");
    assert!(error.starts_with("node `call` failed after 2 attempt(s): GET") && error.contains("503"), "{error}");
    assert_eq!(receiver.wait_for("/down", 2, Duration::from_secs(1)).await.len(), 2);

    // The deployment made by the run is removed by another.
    let graph = json!({
        "nodes": [
            {"id": "start", "type": "manual", "config": {}},
            {"id": "remove", "type": "remove", "config": {"deployment": "{{ trigger.deployment }}"}}
        ],
        "edges": [{"from": "start", "to": "remove"}]
    });
    let remover = create(&mut cp, "remover", graph).await;
    let run_id = run(&mut cp, &remover, json!({"deployment": deployment_id})).await;
    let done = over(&mut cp, &remover, &run_id).await;
    assert_eq!(
        (done["status"].as_str(), done["steps"]["remove"]["output"]["state"].as_str()),
        (Some("succeeded"), Some("removed"))
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn approvals_wait_for_an_operator_and_runs_can_be_cancelled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let receiver = Recorder::start().await;
    let graph = json!({
        "nodes": [
            {"id": "start", "type": "manual", "config": {}},
            {"id": "ask", "type": "approval", "config": {"message": "Go on?"}},
            {"id": "go", "type": "notify", "config": {"channel": {"kind": "webhook", "url": receiver.url("/go")}, "title": "Approved", "message": "by {{ nodes.ask.output.by }}"}}
        ],
        "edges": [{"from": "start", "to": "ask"}, {"from": "ask", "port": "approved", "to": "go"}]
    });
    let workflow = create(&mut cp, "gated", graph).await;
    let run_id = run(&mut cp, &workflow, json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, now) = cp.api(Method::GET, &format!("/workflows/{workflow}/runs/{run_id}"), None).await;
        if now["steps"]["ask"]["status"] == "waiting" {
            break;
        }
        assert!(Instant::now() < deadline, "{now:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let decide = |approved: bool| Some(json!({"approved": approved}));
    let path = format!("/workflows/{workflow}/runs/{run_id}/approvals/go");
    assert_eq!(
        cp.api(Method::POST, &path, decide(true)).await.0,
        StatusCode::UNPROCESSABLE_ENTITY,
        "go is not an approval"
    );
    let path = format!("/workflows/{workflow}/runs/{run_id}/approvals/ask");
    assert_eq!(cp.api(Method::POST, &path, decide(true)).await.0, StatusCode::ACCEPTED);
    let done = over(&mut cp, &workflow, &run_id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let sent = receiver.wait_for("/go", 1, Duration::from_secs(5)).await;
    assert_eq!(
        (sent[0].json()["title"].as_str(), sent[0].json()["message"].as_str()),
        (Some("Approved"), Some("by admin"))
    );

    // A run waiting for its approval is cancelled, as its live events show.
    let run_id = run(&mut cp, &workflow, json!({})).await;
    let token = cp.access_token().await;
    let events = cp
        .http()
        .get(cp.url(&format!("/api/v1/workflows/{workflow}/runs/{run_id}/events")))
        .bearer_auth(token)
        .send()
        .await
        .expect("the event stream");
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let (status, _) = cp.api(Method::POST, &format!("/workflows/{workflow}/runs/{run_id}/cancel"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // The stream ends by itself with the run.
    let streamed =
        tokio::time::timeout(Duration::from_secs(10), events.text()).await.expect("the stream ends").expect("text");
    let last = streamed.lines().rev().find_map(|l| l.strip_prefix("data:")).expect("run events");
    let last: Value = serde_json::from_str(last.trim()).expect("a run");
    assert_eq!(last["status"], "cancelled", "{streamed}");
    let done = over(&mut cp, &workflow, &run_id).await;
    assert_eq!(
        (done["status"].as_str(), done["steps"]["ask"]["status"].as_str()),
        (Some("cancelled"), Some("cancelled"))
    );
    let (status, _) = cp.api(Method::POST, &format!("/workflows/{workflow}/runs/{run_id}/cancel"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "an ended run is not cancelled twice");
    let (_, runs) = cp.api(Method::GET, &format!("/workflows/{workflow}/runs"), None).await;
    assert_eq!(runs["total"], 2);
}

fn signed(secret: &str, body: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("a key");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_webhook_starts_one_run_per_delivery_and_a_wrong_signature_starts_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let receiver = Recorder::start().await;
    let graph = json!({
        "nodes": [
            {"id": "pushed", "type": "webhook", "config": {}},
            {"id": "tell", "type": "notify", "config": {"channel": {"kind": "webhook", "url": receiver.url("/pushed")}, "message": "{{ trigger.body.ref }}"}}
        ],
        "edges": [{"from": "pushed", "to": "tell"}]
    });
    let workflow = create(&mut cp, "on push", graph).await;
    let hook = cp.url(&format!("/api/v1/hooks/workflows/{workflow}/pushed"));
    let body = r#"{"ref": "refs/heads/main"}"#;
    let client = cp.http().clone();
    let deliver = |signature: Option<String>, delivery: &str| {
        let mut request =
            client.post(&hook).header("content-type", "application/json").header("x-windflow-delivery", delivery);
        if let Some(signature) = signature {
            request = request.header("x-windflow-signature", signature);
        }
        request.body(body).send()
    };
    // No secret made yet: nothing is accepted.
    assert_eq!(deliver(Some(signed("guess", body)), "d0").await.expect("sent").status(), StatusCode::UNAUTHORIZED);
    let (status, made) = cp.api(Method::POST, &format!("/workflows/{workflow}/webhook-secret"), None).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let secret = made["secret"].as_str().expect("secret").to_owned();
    let (_, shown) = cp.api(Method::GET, &format!("/workflows/{workflow}"), None).await;
    assert!(!shown.to_string().contains(&secret), "the secret is shown once, never again");
    assert_eq!(deliver(None, "d1").await.expect("sent").status(), StatusCode::UNAUTHORIZED);
    assert_eq!(deliver(Some(signed("wrong", body)), "d1").await.expect("sent").status(), StatusCode::UNAUTHORIZED);
    let (_, runs) = cp.api(Method::GET, &format!("/workflows/{workflow}/runs"), None).await;
    assert_eq!(runs["total"], 0, "a refused delivery starts nothing");

    let first = deliver(Some(signed(&secret, body)), "d1").await.expect("sent");
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.expect("json");
    let again = deliver(Some(signed(&secret, body)), "d1").await.expect("sent");
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.expect("json");
    assert_eq!((again["duplicate"].as_bool(), &again["run_id"]), (Some(true), &first["run_id"]));
    let done = over(&mut cp, &workflow, first["run_id"].as_str().expect("run")).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let told = receiver.wait_for("/pushed", 1, Duration::from_secs(5)).await;
    assert_eq!((told.len(), told[0].json()["message"].as_str()), (1, Some("refs/heads/main")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_deployment_starts_the_workflow_waiting_for_that_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let agent = cp.start_agent(dir.path(), "wf-events").await;
    let receiver = Recorder::start().await;
    let graph = json!({
        "nodes": [
            {"id": "failed", "type": "event", "config": {"events": ["deployment_failed"]}},
            {"id": "page", "type": "notify", "config": {"channel": {"kind": "slack", "url": receiver.url("/page")}, "title": "Deployment failed", "message": "{{ trigger.project }}: {{ trigger.detail }}"}}
        ],
        "edges": [{"from": "failed", "to": "page"}]
    });
    let workflow = create(&mut cp, "page on failure", graph).await;
    // No registry is reachable: an image that is not here cannot be pulled, so the deploy fails.
    let compose = "services:\n  app:\n    image: windflow-test/not-here:1\n";
    let (_, stack) = cp.api(Method::POST, "/stacks", Some(json!({"name": "doomed", "compose": compose}))).await;
    let path = format!("/stacks/{}/deploy/{}", stack["id"].as_str().expect("stack"), agent.id());
    let (_, accepted) = cp.api(Method::POST, &path, None).await;
    assert_eq!(cp.settled(&accepted).await["state"], "failed");
    let paged = receiver.wait_for("/page", 1, Duration::from_secs(30)).await;
    assert_eq!(paged.len(), 1, "the workflow ran once");
    let text = paged[0].json()["text"].as_str().unwrap_or_default().to_owned();
    assert!(text.starts_with("*Deployment failed*\ndoomed:"), "{text}");
    let (_, runs) = cp.api(Method::GET, &format!("/workflows/{workflow}/runs"), None).await;
    assert_eq!((runs["total"].as_u64(), runs["items"][0]["started_by"].as_str()), (Some(1), Some("event")));
    drop(agent);
}

/// aiosmtpd (PyPI, in `WINDFLOW_VENV`), a real SMTP server, storing what it receives in a
/// maildir.
struct SmtpServer {
    port: u16,
    maildir: tempfile::TempDir,
    process: std::process::Child,
}

impl SmtpServer {
    fn start() -> Self {
        let venv = std::env::var("WINDFLOW_VENV").unwrap_or_else(|_| "/var/cache/windflow/venv".into());
        let port = free_tcp_port();
        let maildir = tempfile::tempdir().expect("maildir");
        let process = std::process::Command::new(format!("{venv}/bin/python"))
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir.path().join("mail"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("aiosmtpd starts (scripts/bootstrap installs it)");
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd listens");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, maildir, process }
    }

    /// Every message received, as its raw text.
    fn messages(&self) -> Vec<String> {
        let new = self.maildir.path().join("mail/new");
        std::fs::read_dir(new)
            .map(|entries| entries.flatten().filter_map(|e| std::fs::read_to_string(e.path()).ok()).collect())
            .unwrap_or_default()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_email_notification_goes_through_an_smtp_relay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let smtp = SmtpServer::start();
    let relay = format!("smtp://127.0.0.1:{}", smtp.port);
    let channel = json!({"kind": "email", "to": ["ops@example.com", "lead@example.com"], "relay": relay, "from": "windflow@example.com"});
    let graph = json!({
        "nodes": [
            {"id": "start", "type": "manual", "config": {}},
            {"id": "mail", "type": "notify", "config": {"channel": channel, "title": "Nightly report", "message": "All {{ trigger.count }} deployments run."}}
        ],
        "edges": [{"from": "start", "to": "mail"}]
    });
    let workflow = create(&mut cp, "mail", graph).await;
    let run_id = run(&mut cp, &workflow, json!({"count": 12})).await;
    let done = over(&mut cp, &workflow, &run_id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1, "one message, to both");
    let message = &messages[0];
    assert!(message.contains("Subject: Nightly report"), "{message}");
    assert!(message.contains("All 12 deployments run."), "{message}");
    assert!(message.contains("ops@example.com") && message.contains("lead@example.com"), "{message}");

    // A relay URL with credentials is refused: they would be stored in clear.
    let leaky = json!({"nodes": [
        {"id": "start", "type": "manual", "config": {}},
        {"id": "mail", "type": "notify", "config": {"channel": {"kind": "email", "to": ["a@b.c"], "relay": "smtps://me:secret@smtp.example.com", "from": "x@y.z"}, "message": "hi"}}
    ], "edges": [{"from": "start", "to": "mail"}]});
    let (status, refused) = cp.api(Method::POST, "/workflows", Some(json!({"name": "leaky", "graph": leaky}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(refused["error"]["message"].as_str().is_some_and(|m| m.contains("credentials")), "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_keeps_failing_opens_its_circuit_and_later_calls_fail_fast_without_reaching_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let receiver = Recorder::start().await;
    receiver.answer("/down", 503);
    let graph = json!({
        "nodes": [
            {"id": "start", "type": "manual", "config": {}},
            {"id": "call", "type": "http", "config": {"method": "POST", "url": receiver.url("/down")}}
        ],
        "edges": [{"from": "start", "to": "call"}]
    });
    let workflow = create(&mut cp, "flaky-host", graph).await;
    let mut last = Value::Null;
    for _ in 0..6 {
        let id = run(&mut cp, &workflow, json!({})).await;
        last = over(&mut cp, &workflow, &id).await;
        assert_eq!(last["status"], "failed", "{last:#}");
    }
    assert_eq!(receiver.requests().len(), 5, "the sixth call never left");
    let error = last["error"].as_str().unwrap_or_default();
    assert!(error.contains("circuit open") && error.contains(&format!("127.0.0.1:{}", receiver.port)), "{error}");
    assert_eq!(cp.metric("windflow_circuits_open{kind=\"webhook\"}").await, 1);
    assert_eq!(cp.metric("windflow_circuits_opened{kind=\"webhook\"}").await, 1);
}
