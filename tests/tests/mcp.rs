//! The MCP server as an assistant uses it: a client session over streamable HTTP (initialize,
//! the tool list, tool calls) authenticated by API tokens, each token's scope enforced.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windflow_tests::{ControlPlane, busybox_image};

/// A Model Context Protocol client speaking JSON-RPC over streamable HTTP.
struct McpClient {
    http: reqwest::Client,
    url: String,
    token: String,
    session: Option<String>,
    next_id: u64,
}

impl McpClient {
    fn new(cp: &ControlPlane, token: &str) -> Self {
        Self { http: cp.http().clone(), url: cp.url("/mcp"), token: token.to_owned(), session: None, next_id: 1 }
    }

    async fn post(&mut self, message: Value) -> (StatusCode, Option<Value>) {
        let mut request = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .json(&message);
        if let Some(session) = &self.session {
            request = request.header("mcp-session-id", session);
        }
        let response = request.send().await.expect("sent");
        let status = response.status();
        if let Some(session) = response.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()) {
            self.session = Some(session.to_owned());
        }
        let event_stream = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let text =
            tokio::time::timeout(Duration::from_secs(30), response.text()).await.expect("in time").expect("body");
        let body = if event_stream {
            // The answer is the last `data:` line that holds a JSON-RPC response.
            text.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
                .rfind(|v| v.get("id").is_some())
        } else {
            serde_json::from_str(&text).ok()
        };
        (status, body)
    }

    async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let (status, body) = self.post(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).await;
        assert_eq!(status, StatusCode::OK, "{method}: {body:?}");
        let body = body.expect("a JSON-RPC answer");
        assert_eq!(body["id"], id);
        body
    }

    async fn initialize(&mut self) -> Value {
        let answer = self
            .request(
                "initialize",
                json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "windflow-test", "version": "1"}}),
            )
            .await;
        let (status, _) = self.post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        answer["result"].clone()
    }

    /// A tool's result: (is_error, structured content).
    async fn call(&mut self, tool: &str, arguments: Value) -> (bool, Value) {
        let answer = self.request("tools/call", json!({"name": tool, "arguments": arguments})).await;
        let result = &answer["result"];
        (result["isError"] == true, result["structuredContent"].clone())
    }
}

async fn token(cp: &mut ControlPlane, name: &str, scope: &str) -> String {
    let (status, body) = cp.api(Method::POST, "/tokens", Some(json!({"name": name, "scope": scope}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["token"].as_str().expect("token").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_assistant_lists_reads_logs_and_deploys_within_its_tokens_scope() {
    let image = busybox_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let agent = cp.start_agent(dir.path(), "mcp-host").await;
    let compose = format!(
        "services:\n  app:\n    image: {image}\n    command: [\"sh\", \"-c\", \"echo hello from the app; sleep 3600\"]\n    restart: unless-stopped\n"
    );
    let (_, stack) = cp.api(Method::POST, "/stacks", Some(json!({"name": "assisted", "compose": compose}))).await;
    let stack_id = stack["id"].as_str().expect("id").to_owned();
    let (_, accepted) = cp.api(Method::POST, &format!("/stacks/{stack_id}/deploy/{}", agent.id()), None).await;
    assert_eq!(cp.settled(&accepted).await["state"], "running");
    let deployment_id = accepted["id"].as_str().expect("id").to_owned();

    // No credentials, no session.
    let (status, _) =
        McpClient::new(&cp, "wft_not-a-token").post(json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let read_token = token(&mut cp, "assistant-read", "read").await;
    let mut client = McpClient::new(&cp, &read_token);
    let info = client.initialize().await;
    assert_eq!(info["serverInfo"]["name"], "windflow");
    assert!(info["capabilities"]["tools"].is_object(), "{info}");
    assert!(client.session.is_some(), "a session id was issued");

    let tools = client.request("tools/list", json!({})).await;
    let names: Vec<&str> =
        tools["result"]["tools"].as_array().expect("tools").iter().filter_map(|t| t["name"].as_str()).collect();
    for expected in
        ["list_targets", "list_stacks", "list_deployments", "get_logs", "deploy_stack", "diagnose_deployment"]
    {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }

    let (failed, deployments) = client.call("list_deployments", json!({})).await;
    assert!(!failed, "{deployments}");
    assert_eq!(deployments["items"][0]["id"], deployment_id.as_str());
    assert_eq!(deployments["items"][0]["state"], "running");

    let (failed, targets) = client.call("list_targets", json!({"status": "connected"})).await;
    assert!(!failed && targets["items"][0]["id"] == agent.id().as_str(), "{targets}");

    let mut logs = Value::Null;
    for _ in 0..50 {
        let (failed, answer) = client.call("get_logs", json!({"deployment_id": deployment_id, "tail": 20})).await;
        assert!(!failed, "{answer}");
        logs = answer;
        if logs.to_string().contains("hello from the app") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(logs["lines"].as_array().is_some_and(|l| l.iter().any(|l| l["line"] == "hello from the app")), "{logs}");

    // A read-only token may not deploy: refused with the reason, nothing started.
    let (failed, refusal) = client.call("deploy_stack", json!({"stack": "assisted", "target": agent.id()})).await;
    assert!(failed, "{refusal}");
    assert!(refusal.to_string().contains("deploy scope"), "{refusal}");
    let (_, events) = cp.api(Method::GET, &format!("/deployments/{deployment_id}/events"), None).await;
    let asked = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["message"].as_str().is_some_and(|m| m.contains("asked for")))
        .count();
    assert_eq!(asked, 1, "only the first deploy");

    // Bad arguments and objects of nobody are the tool's errors, not the protocol's.
    let (failed, answer) = client.call("get_logs", json!({})).await;
    assert!(failed && answer.to_string().contains("deployment_id"), "{answer}");
    let (failed, answer) = client.call("get_logs", json!({"deployment_id": uuid::Uuid::now_v7().to_string()})).await;
    assert!(failed && answer.to_string().contains("not found"), "{answer}");

    // A deploy token may, and the diagnosis works without a model.
    let deploy_token = token(&mut cp, "assistant-deploy", "deploy").await;
    let mut operator = McpClient::new(&cp, &deploy_token);
    operator.initialize().await;
    let (failed, deployed) = operator.call("deploy_stack", json!({"stack": stack_id, "target": agent.id()})).await;
    assert!(!failed, "{deployed}");
    assert_eq!(deployed["id"], deployment_id.as_str(), "deploying again updates the deployment");
    let (failed, diagnosis) = operator.call("diagnose_deployment", json!({"deployment_id": deployment_id})).await;
    assert!(!failed && diagnosis["source"] == "rules", "{diagnosis}");

    let (_, removed) = cp.api(Method::DELETE, &format!("/deployments/{deployment_id}"), None).await;
    cp.settled(&removed).await;
    drop(agent);
}
