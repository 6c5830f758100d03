//! AI assistance through the real API: provider settings per organisation, the three wire
//! formats against a local server that speaks them and records every request, streaming,
//! the repair loop, 429s and the circuit breaker, and diagnosis of a real failing deployment.

use std::time::Duration;

use reqwest::Method;
use reqwest::StatusCode;
use serde_json::{Value, json};
use windflow_tests::model_server::{ModelServer, Reply};
use windflow_tests::{ControlPlane, busybox_image};

async fn org_id(cp: &mut ControlPlane) -> String {
    let (_, orgs) = cp.api(Method::GET, "/orgs", None).await;
    orgs["items"][0]["id"].as_str().expect("the admin's organisation").to_owned()
}

async fn configure(cp: &mut ControlPlane, org: &str, settings: Value) {
    let (status, body) = cp.api(Method::PUT, &format!("/orgs/{org}/ai"), Some(settings)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

const VALID_STACK: &str = "```yaml\nservices:\n  web:\n    image: nginx:1.27\n    ports: [\"127.0.0.1:${HTTP_PORT:-8080}:80\"]\n    environment:\n      ADMIN_PASSWORD: ${ADMIN_PASSWORD}\n    restart: unless-stopped\n```";

/// Reads a Server-Sent Events answer to the end: (event, data) pairs.
async fn events(cp: &mut ControlPlane, path: &str, body: Value) -> Vec<(String, Value)> {
    let token = cp.access_token().await;
    let response = cp
        .http()
        .post(cp.url(&format!("/api/v1{path}")))
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    let text = tokio::time::timeout(Duration::from_secs(60), response.text()).await.expect("in time").expect("body");
    text.split("\n\n")
        .filter_map(|frame| {
            let name = frame.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = frame.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name.to_owned(), serde_json::from_str(data).unwrap_or(Value::Null)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_wire_format_answers_and_the_key_is_sealed_never_shown_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let org = org_id(&mut cp).await;
    let server = ModelServer::start().await;

    let (status, body) = cp.api(Method::GET, &format!("/orgs/{org}/ai"), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("ai_not_configured")));

    for (kind, base, path, model) in [
        ("openai", server.url("/v1"), "/v1/chat/completions", "gpt-test"),
        ("anthropic", server.url(""), "/v1/messages", "claude-test"),
        ("ollama", server.url(""), "/api/chat", "llama-test"),
    ] {
        configure(
            &mut cp,
            &org,
            json!({"kind": kind, "base_url": base, "model": model, "api_key": "sk-very-secret-key-0123456789",
                   "input_price_per_mtok": 1.0, "output_price_per_mtok": 2.0}),
        )
        .await;
        server.text("OK");
        let (status, test) = cp.api(Method::POST, &format!("/orgs/{org}/ai/test"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!((test["ok"].as_bool(), test["answer"].as_str()), (Some(true), Some("OK")), "{kind}: {test}");
        let sent = server.requests().pop().expect("a request");
        assert_eq!(sent.path, path, "{kind}");
        assert_eq!(sent.body["model"], model);
        let auth = match kind {
            "anthropic" => sent.headers.get("x-api-key"),
            _ => sent.headers.get("authorization"),
        };
        assert!(
            auth.and_then(|v| v.to_str().ok()).is_some_and(|v| v.ends_with("sk-very-secret-key-0123456789")),
            "{kind}"
        );

        let (_, shown) = cp.api(Method::GET, &format!("/orgs/{org}/ai"), None).await;
        assert_eq!(shown["has_api_key"], true);
        assert_eq!(shown["circuit"]["state"], "closed");
        assert!(!shown.to_string().contains("sk-very-secret"), "the key is never returned: {shown}");
    }
    let (_, usage) = cp.api(Method::GET, &format!("/orgs/{org}/ai/usage"), None).await;
    let month = &usage["items"][0];
    assert_eq!(month["requests"], 3);
    assert_eq!(month["input_tokens"], 33);
    assert!(month["cost_usd"].as_f64().is_some_and(|c| c > 0.0), "{usage}");

    // Sealed at rest: the key is nowhere in the store's files.
    cp.process.terminate();
    let needle = b"sk-very-secret-key";
    for entry in walk(&dir.path().join("data")) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(!bytes.windows(needle.len()).any(|w| w == needle), "the key is in {}", entry.display());
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn generate_streams_sends_an_invalid_answer_back_with_its_errors_and_saves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let org = org_id(&mut cp).await;
    let server = ModelServer::start().await;
    for kind in ["openai", "anthropic", "ollama"] {
        let base = if kind == "openai" { server.url("/v1") } else { server.url("") };
        configure(&mut cp, &org, json!({"kind": kind, "base_url": base, "model": "m", "api_key": "k"})).await;
        server.text("```yaml\nservices:\n  web: [not, a, service\n```");
        server.text(VALID_STACK);
        let before = server.requests().len();
        let got = events(&mut cp, "/ai/generate", json!({"description": "a web server"})).await;
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.first(), Some(&"round"), "{kind}: {names:?}");
        assert!(names.contains(&"rejected"), "{kind}: {names:?}");
        assert!(names.iter().filter(|n| **n == "delta").count() > 2, "{kind}: streamed in pieces: {names:?}");
        let (last, result) = got.last().expect("a last event");
        assert_eq!(last, "result", "{kind}: {result}");
        assert_eq!(result["rounds"], 2);
        assert_eq!(result["secrets"], json!(["ADMIN_PASSWORD"]));
        assert!(result["compose"].as_str().is_some_and(|c| c.contains("nginx:1.27")));
        let sent = server.requests();
        assert_eq!(sent.len() - before, 2, "{kind}");
        let repair = &sent[sent.len() - 1].raw;
        assert!(repair.contains("WindFlow refused that file") && repair.contains("line"), "{kind}: {repair}");
    }
    let (_, stacks) = cp.api(Method::GET, "/stacks", None).await;
    assert_eq!(stacks["items"].as_array().map(Vec::len), Some(0), "a preview saves nothing");

    // Never valid: a 422 with the last errors and the last answer.
    server.always(Reply::Text("I would rather not.".into()));
    let (status, body) = cp.api(Method::POST, "/ai/generate", Some(json!({"description": "x y z", "rounds": 2}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "ai_answer_invalid");
    assert_eq!(body["error"]["details"]["last_answer"], "I would rather not.");
    assert!(!body["error"]["details"]["errors"].as_array().expect("errors").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_errors_carry_its_message_and_repeated_failures_open_the_circuit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let org = org_id(&mut cp).await;
    let server = ModelServer::start().await;
    configure(
        &mut cp,
        &org,
        json!({"kind": "openai", "base_url": server.url("/v1"), "model": "m", "api_key": "wrong"}),
    )
    .await;

    // A refused key is not retried, and its message is the provider's.
    server.reply(Reply::Status(
        401,
        r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error"}}"#.into(),
    ));
    let (status, body) = cp.api(Method::POST, "/ai/generate", Some(json!({"description": "a web server"}))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["error"]["code"], "ai_provider_failed");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("Incorrect API key provided")), "{body}");
    assert_eq!(server.requests().len(), 1);

    // 429s are retried with backoff, then the circuit opens and the provider is left alone.
    server.always(Reply::Status(429, r#"{"error":{"message":"Rate limit reached for requests"}}"#.into()));
    let (status, body) = cp.api(Method::POST, "/ai/generate", Some(json!({"description": "a web server"}))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("Rate limit reached")), "{body}");
    assert_eq!(server.requests().len(), 4, "three attempts");
    let (status, body) = cp.api(Method::POST, "/ai/generate", Some(json!({"description": "a web server"}))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "ai_circuit_open");
    let sent = server.requests().len();
    assert_eq!(sent, 5, "the fifth failure in a row opened it");
    let (status, _) = cp.api(Method::POST, "/ai/generate", Some(json!({"description": "a web server"}))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.requests().len(), sent, "an open circuit sends nothing");
    let (_, shown) = cp.api(Method::GET, &format!("/orgs/{org}/ai"), None).await;
    assert_eq!(shown["circuit"]["state"], "open");
    let (_, usage) = cp.api(Method::GET, &format!("/orgs/{org}/ai/usage"), None).await;
    assert_eq!(usage["items"][0]["failures"], 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_settings_are_refused_by_field_and_viewers_cannot_spend_the_organisations_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let org = org_id(&mut cp).await;
    for (settings, field) in [
        (json!({"kind": "openai", "base_url": "ftp://x", "model": "m"}), "base_url"),
        (json!({"kind": "openai", "base_url": "https://user:pw@x.example/v1", "model": "m"}), "base_url"),
        (json!({"kind": "openai", "base_url": "https://x.example/v1", "model": " "}), "model"),
        (json!({"kind": "openai", "base_url": "https://x.example/v1", "model": "m", "timeout_s": 0}), "timeout_s"),
        (
            json!({"kind": "openai", "base_url": "https://x.example/v1", "model": "m", "input_price_per_mtok": -1}),
            "input_price_per_mtok",
        ),
    ] {
        let (status, body) = cp.api(Method::PUT, &format!("/orgs/{org}/ai"), Some(settings)).await;
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field)),
            "{body}"
        );
    }
    let (status, body) = cp
        .api(
            Method::PUT,
            &format!("/orgs/{org}/ai"),
            Some(json!({"kind": "gemini", "base_url": "https://x", "model": "m"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // No provider: the AI actions say so.
    let (status, body) = cp.api(Method::POST, "/ai/generate", Some(json!({"description": "a web server"}))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("ai_not_configured")));
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("rule analyser")));

    // A viewer's token may not generate.
    let (_, token) = cp.api(Method::POST, "/tokens", Some(json!({"name": "reader", "scope": "read"}))).await;
    let token = token["token"].as_str().expect("token").to_owned();
    let (status, _) =
        cp.call_with(Some(&token), Method::POST, "/api/v1/ai/generate", Some(json!({"description": "abc"}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_deployment_is_diagnosed_from_its_exit_code_and_log_and_its_secret_never_leaves() {
    let image = busybox_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let agent = cp.start_agent(dir.path(), "diagnosed-host").await;
    let org = org_id(&mut cp).await;
    let secret = "correct-horse-battery-staple-42";
    let compose = format!(
        "services:\n  app:\n    image: {image}\n    command: [\"sh\", \"-c\", \"echo starting with $$APP_PASSWORD; echo 'FATAL: cannot open /etc/app/config.yml: no such file or directory'; exit 1\"]\n    environment:\n      APP_PASSWORD: ${{APP_PASSWORD}}\n"
    );
    let (status, stack) = cp
        .api(
            Method::POST,
            "/stacks",
            Some(json!({"name": "crashing", "compose": compose, "secrets": {"APP_PASSWORD": secret}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{stack}");
    let (_, accepted) = cp
        .api(Method::POST, &format!("/stacks/{}/deploy/{}", stack["id"].as_str().expect("id"), agent.id()), None)
        .await;
    let deployment = cp.settled(&accepted).await;
    let id = deployment["id"].as_str().expect("id").to_owned();

    // The container has exited 1 and its log holds the line.
    let path = format!("/deployments/{id}/diagnose");
    let mut diagnosis = Value::Null;
    for _ in 0..50 {
        let (status, body) = cp.api(Method::POST, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        diagnosis = body;
        let evidence = diagnosis["evidence"].to_string();
        if evidence.contains("exited with code 1") && evidence.contains("FATAL: cannot open") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(diagnosis["source"], "rules", "{diagnosis:#}");
    let evidence = diagnosis["evidence"].to_string();
    assert!(evidence.contains("exited with code 1"), "{diagnosis:#}");
    assert!(evidence.contains("FATAL: cannot open /etc/app/config.yml"), "{diagnosis:#}");
    assert_eq!(diagnosis["cause"], "a command or a file the service needs is missing", "{diagnosis:#}");
    assert!(!diagnosis.to_string().contains(secret), "redacted in the answer too: {diagnosis:#}");

    // With a model: it gets the evidence, never the secret, and its proposal is checked.
    let server = ModelServer::start().await;
    configure(&mut cp, &org, json!({"kind": "anthropic", "base_url": server.url(""), "model": "m", "api_key": "k"}))
        .await;
    let fixed = compose.replace("exit 1", "exit 0");
    server.text(&json!({"cause": "the config file is not mounted", "fix": "mount it", "compose": fixed}).to_string());
    let (status, diagnosis) = cp.api(Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{diagnosis}");
    assert_eq!(diagnosis["source"], "model");
    assert_eq!(diagnosis["cause"], "the config file is not mounted");
    assert!(diagnosis["proposed_compose"].as_str().is_some_and(|c| c.contains("exit 0")), "{diagnosis:#}");
    let sent = server.requests().pop().expect("the model was asked");
    assert!(sent.raw.contains("FATAL: cannot open"), "the evidence went: {}", sent.raw);
    assert!(!sent.raw.contains(secret), "the secret never leaves: {}", sent.raw);

    // Streamed: the rules' answer at once, then the model's as it is written.
    server.text(&json!({"cause": "the config file is missing", "fix": "mount it", "compose": null}).to_string());
    let got = events(&mut cp, &path, json!({})).await;
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"rules"), "{names:?}");
    assert!(names.contains(&"delta"), "{names:?}");
    let (last, streamed) = got.last().expect("events");
    assert_eq!((last.as_str(), streamed["cause"].as_str()), ("result", Some("the config file is missing")), "{got:?}");

    // A provider that fails leaves the rules' answer, with why.
    server.always(Reply::Status(500, r#"{"error":{"message":"upstream exploded"}}"#.into()));
    let (status, diagnosis) = cp.api(Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(diagnosis["source"], "rules");
    assert!(diagnosis["model_error"].as_str().is_some_and(|m| m.contains("upstream exploded")), "{diagnosis:#}");

    let (_, removed) = cp.api(Method::DELETE, &format!("/deployments/{id}"), None).await;
    cp.settled(&removed).await;
    drop(agent);
}

/// LiteLLM's proxy (PyPI `litellm[proxy]`, installed by `scripts/bootstrap`), serving models
/// whose answers are fixed by `mock_response`: a real gateway, nothing leaving the machine.
struct LiteLlm {
    port: u16,
    _process: windflow_tests::Process,
}

const LITELLM_KEY: &str = "sk-litellm-master-0123456789";

impl LiteLlm {
    async fn start(dir: &std::path::Path) -> Self {
        let venv = std::env::var("WINDFLOW_LITELLM_VENV").unwrap_or_else(|_| "/var/cache/windflow/litellm".into());
        let binary = std::path::Path::new(&venv).join("bin/litellm");
        assert!(binary.exists(), "LiteLLM is not installed at {}: run scripts/bootstrap", binary.display());
        let stack = serde_json::to_string(VALID_STACK).expect("JSON is YAML");
        let config = format!(
            "model_list:\n  - model_name: mock-stack\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_key: sk-upstream-unused\n      mock_response: {stack}\n  - model_name: mock-claude\n    litellm_params:\n      model: anthropic/claude-3-5-haiku-20241022\n      api_key: sk-upstream-unused\n      mock_response: {stack}\ngeneral_settings:\n  master_key: {LITELLM_KEY}\n"
        );
        let config_path = dir.join("litellm.yaml");
        std::fs::write(&config_path, config).expect("write the LiteLLM config");
        let port = windflow_tests::free_tcp_port();
        let process = windflow_tests::Process::spawn(
            std::process::Command::new(binary)
                .args(["--config", &config_path.to_string_lossy(), "--host", "127.0.0.1", "--port", &port.to_string()])
                .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                .env("LITELLM_TELEMETRY", "False")
                .env("NO_PROXY", "*"),
            dir.join("litellm.log"),
        )
        .expect("start LiteLLM");
        let url = format!("http://127.0.0.1:{port}/health/liveliness");
        let ready = windflow_tests::eventually(Duration::from_secs(120), || {
            let url = url.clone();
            async move { reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        assert!(
            ready,
            "LiteLLM did not start: {}",
            std::fs::read_to_string(dir.join("litellm.log")).unwrap_or_default()
        );
        Self { port, _process: process }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_litellm_proxy_answers_through_its_openai_and_anthropic_routes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = LiteLlm::start(dir.path()).await;
    let mut cp = ControlPlane::start(dir.path()).await;
    let org = org_id(&mut cp).await;

    let base = format!("http://127.0.0.1:{}", proxy.port);
    configure(
        &mut cp,
        &org,
        json!({"kind": "openai", "base_url": format!("{base}/v1"), "model": "mock-stack", "api_key": LITELLM_KEY}),
    )
    .await;
    let got = events(&mut cp, "/ai/generate", json!({"description": "a web server"})).await;
    let (last, result) = got.last().expect("events");
    assert_eq!(last, "result", "{got:?}");
    assert_eq!(result["rounds"], 1);
    assert!(got.iter().filter(|(name, _)| name == "delta").count() > 1, "streamed through the proxy: {got:?}");

    configure(
        &mut cp,
        &org,
        json!({"kind": "anthropic", "base_url": base, "model": "mock-claude", "api_key": LITELLM_KEY}),
    )
    .await;
    let (status, generated) = cp.api(Method::POST, "/ai/generate", Some(json!({"description": "a web server"}))).await;
    assert_eq!(status, StatusCode::OK, "{generated}");
    assert!(generated["compose"].as_str().is_some_and(|c| c.contains("nginx:1.27")));
    assert!(generated["usage"]["output_tokens"].as_u64().is_some_and(|t| t > 0), "{generated}");

    // A key the proxy does not know is refused with the proxy's own message.
    configure(
        &mut cp,
        &org,
        json!({"kind": "openai", "base_url": format!("{base}/v1"), "model": "mock-stack", "api_key": "sk-wrong"}),
    )
    .await;
    let (_, test) = cp.api(Method::POST, &format!("/orgs/{org}/ai/test"), None).await;
    assert_eq!(test["ok"], false);
    let error = test["error"].as_str().unwrap_or_default();
    assert!(error.contains("answered HTTP 400: No connected db") || error.contains("HTTP 401"), "{test}");
}

/// Runs against the real providers whose credentials are in the environment:
/// `OPENAI_API_KEY` (and `OPENAI_MODEL`, default gpt-4o-mini), `ANTHROPIC_API_KEY` (and
/// `ANTHROPIC_MODEL`, default claude-3-5-haiku-latest), `OLLAMA_HOST` (and `OLLAMA_MODEL`,
/// default llama3.2). Without any, it says so and passes.
#[tokio::test(flavor = "multi_thread")]
async fn real_providers_answer_when_their_credentials_are_set() {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut providers = Vec::new();
    if let Some(key) = var("OPENAI_API_KEY") {
        let model = var("OPENAI_MODEL").unwrap_or_else(|| "gpt-4o-mini".into());
        providers
            .push(json!({"kind": "openai", "base_url": "https://api.openai.com/v1", "model": model, "api_key": key}));
    }
    if let Some(key) = var("ANTHROPIC_API_KEY") {
        let model = var("ANTHROPIC_MODEL").unwrap_or_else(|| "claude-3-5-haiku-latest".into());
        providers.push(
            json!({"kind": "anthropic", "base_url": "https://api.anthropic.com", "model": model, "api_key": key}),
        );
    }
    if let Some(host) = var("OLLAMA_HOST") {
        let model = var("OLLAMA_MODEL").unwrap_or_else(|| "llama3.2".into());
        let base = if host.starts_with("http") { host } else { format!("http://{host}") };
        providers.push(json!({"kind": "ollama", "base_url": base, "model": model}));
    }
    if providers.is_empty() {
        eprintln!("no OPENAI_API_KEY, ANTHROPIC_API_KEY or OLLAMA_HOST: the real-provider test has nothing to run");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let org = org_id(&mut cp).await;
    for settings in providers {
        configure(&mut cp, &org, settings.clone()).await;
        let (_, test) = cp.api(Method::POST, &format!("/orgs/{org}/ai/test"), None).await;
        assert_eq!(test["ok"], true, "{}: {test}", settings["kind"]);
        let (status, generated) =
            cp.api(Method::POST, "/ai/generate", Some(json!({"description": "nginx serving a static site"}))).await;
        assert_eq!(status, StatusCode::OK, "{}: {generated}", settings["kind"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn optimising_measures_the_containers_and_proposes_limits_as_a_valid_file() {
    let image = busybox_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let agent = cp.start_agent(dir.path(), "measured-host").await;
    // A little work every 200 ms, and no limits or restart policy yet.
    let compose = format!(
        "services:\n  app:\n    image: {image}\n    command: [\"sh\", \"-c\", \"while true; do i=0; while [ $$i -lt 3000 ]; do i=$$((i+1)); done; sleep 0.2; done\"]\n"
    );
    let (_, stack) = cp.api(Method::POST, "/stacks", Some(json!({"name": "measured", "compose": compose}))).await;
    let stack_id = stack["id"].as_str().expect("id").to_owned();
    let (_, accepted) = cp.api(Method::POST, &format!("/stacks/{stack_id}/deploy/{}", agent.id()), None).await;
    assert_eq!(cp.settled(&accepted).await["state"], "running");
    let id = accepted["id"].as_str().expect("id").to_owned();

    let (status, body) = cp.api(Method::POST, &format!("/deployments/{id}/optimize?samples=1"), None).await;
    assert_eq!((status, body["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("samples")));

    let (status, optimization) =
        cp.api(Method::POST, &format!("/deployments/{id}/optimize?samples=3&interval_ms=300"), None).await;
    assert_eq!(status, StatusCode::OK, "{optimization}");
    let app = &optimization["services"][0];
    assert_eq!((app["service"].as_str(), app["containers"].as_u64()), (Some("app"), Some(1)), "{optimization:#}");
    assert!(app["memory_bytes_peak"].as_u64().is_some_and(|m| m > 0), "{optimization:#}");
    assert!(app["cpu_millicores_peak"].as_u64().is_some_and(|c| c > 0), "the loop shows: {optimization:#}");
    assert!(app["suggested_memory_limit_bytes"].as_u64().is_some_and(|m| m >= 32_000_000));
    assert_eq!(app["change"], true);
    let proposed = optimization["proposed_compose"].as_str().expect("a proposal").to_owned();
    assert!(proposed.contains("memory:") && proposed.contains("restart: unless-stopped"), "{proposed}");
    assert!(optimization["findings"].as_array().is_some_and(|f| !f.is_empty()));

    // The proposal is a stack the API takes as the next version.
    let (status, saved) = cp.api(Method::PUT, &format!("/stacks/{stack_id}"), Some(json!({"compose": proposed}))).await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    assert_eq!(saved["version"], 2);

    let (_, removed) = cp.api(Method::DELETE, &format!("/deployments/{id}"), None).await;
    cp.settled(&removed).await;
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workflows_llm_node_asks_the_organisations_model_and_later_nodes_use_its_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let org = org_id(&mut cp).await;
    let server = ModelServer::start().await;
    configure(&mut cp, &org, json!({"kind": "openai", "base_url": server.url("/v1"), "model": "m", "api_key": "k"}))
        .await;
    server.text(r#"{"severity": "high"}"#);
    let graph = json!({
        "nodes": [
            {"id": "start", "type": "manual", "config": {}},
            {"id": "ask", "type": "llm", "config": {"prompt": "How bad is {{ trigger.event }}? Answer in JSON.", "system": "You triage incidents."}},
            {"id": "check", "type": "condition", "config": {"expression": "nodes.ask.output.json.severity == 'high'"}},
            {"id": "page", "type": "wait", "config": {"seconds": 1}}
        ],
        "edges": [{"from": "start", "to": "ask"}, {"from": "ask", "to": "check"}, {"from": "check", "port": "true", "to": "page"}]
    });
    let (status, made) = cp.api(Method::POST, "/workflows", Some(json!({"name": "triage", "graph": graph}))).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let workflow = made["id"].as_str().expect("id").to_owned();
    let (_, started) = cp
        .api(Method::POST, &format!("/workflows/{workflow}/runs"), Some(json!({"input": {"event": "a full disk"}})))
        .await;
    let run = started["id"].as_str().expect("run").to_owned();
    let mut finished = Value::Null;
    for _ in 0..100 {
        let (_, now) = cp.api(Method::GET, &format!("/workflows/{workflow}/runs/{run}"), None).await;
        if matches!(now["status"].as_str(), Some("succeeded" | "failed")) {
            finished = now;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(finished["status"], "succeeded", "{finished:#}");
    assert_eq!(finished["steps"]["page"]["status"], "succeeded", "the condition read the model's JSON: {finished:#}");
    let sent = server.requests().pop().expect("asked");
    assert_eq!(sent.body["messages"][0]["content"], "You triage incidents.");
    assert_eq!(sent.body["messages"][1]["content"], "How bad is a full disk? Answer in JSON.");
}
