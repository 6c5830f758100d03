//! Deploying Compose stacks through the API onto a real agent and a real Docker engine.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windflow_tests::*;

async fn wait_state(cp: &mut ControlPlane, id: &str, want: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (_, deployment) = cp.api(Method::GET, &format!("/deployments/{id}"), None).await;
        if deployment["state"] == want {
            return deployment;
        }
        if Instant::now() >= deadline {
            let (_, events) = cp.api(Method::GET, &format!("/deployments/{id}/events"), None).await;
            panic!("deployment never became {want}: {deployment:#}\nevents: {events:#}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn container_id(deployment: &Value, service: &str) -> String {
    let services = deployment["services"].as_array().expect("services");
    let service = services.iter().find(|s| s["name"] == service).expect("service");
    service["containers"][0]["id"].as_str().unwrap_or_default().to_owned()
}

async fn messages(cp: &mut ControlPlane, id: &str) -> Vec<String> {
    let (_, events) = cp.api(Method::GET, &format!("/deployments/{id}/events"), None).await;
    events["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn page(port: u16) -> Option<String> {
    reqwest::get(format!("http://127.0.0.1:{port}/")).await.ok()?.text().await.ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stack_deploys_updates_rolls_back_heals_and_is_removed() {
    let image = busybox_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let agent = cp.start_agent(dir.path(), "agent").await;
    let target = agent.id();
    let port = free_tcp_port();
    let name = format!("shop-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);

    let (status, stack) = cp
        .api(
            Method::POST,
            "/stacks",
            Some(json!({"name": name, "compose": three_service_stack(&image, port, "first line")})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{stack}");
    let stack_id = stack["id"].as_str().expect("id").to_owned();

    // Deploy: accepted at once, then running.
    let (status, deployment) = cp.api(Method::POST, &format!("/stacks/{stack_id}/deploy/{target}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{deployment}");
    assert!(["pending", "deploying"].contains(&deployment["state"].as_str().expect("state")), "{deployment}");
    let id = deployment["id"].as_str().expect("id").to_owned();
    let running = wait_state(&mut cp, &id, "running", Duration::from_secs(60)).await;
    assert!(page(port).await.expect("web answers").contains("deployed by windflow"));
    let web = container_id(&running, "web");
    let worker = container_id(&running, "worker");
    assert!(!web.is_empty() && !worker.is_empty(), "{running:#}");
    let log = messages(&mut cp, &id).await;
    for expected in ["waiting for init to complete", "waiting for web to be healthy", "version 1 is running"] {
        assert!(log.iter().any(|m| m.contains(expected)), "{expected} missing from {log:#?}");
    }

    // Logs: the last lines of one service (the worker prints once a second).
    let deadline = Instant::now() + Duration::from_secs(10);
    let tail = loop {
        let (status, tail) = cp.api(Method::GET, &format!("/deployments/{id}/logs?service=worker&tail=3"), None).await;
        assert_eq!(status, StatusCode::OK, "{tail}");
        // Exactly the tail asked for, once the worker has printed that much.
        if tail["items"].as_array().is_some_and(|items| items.len() == 3) || Instant::now() >= deadline {
            break tail;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let lines = tail["items"].as_array().expect("items");
    assert_eq!(lines.len(), 3, "{tail}");
    assert!(
        lines.iter().all(|l| l["line"] == "first line" && l["service"] == "worker" && l["at"].is_string()),
        "{tail}"
    );
    let (status, bad) = cp.api(Method::GET, &format!("/deployments/{id}/logs?service=nope"), None).await;
    assert_eq!((status, bad["error"]["field"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("service")));

    // Two followers share one agent stream and both see new lines; when both leave, it closes.
    let token = cp.admin_login().await;
    let follow_url = cp.url(&format!("/api/v1/deployments/{id}/logs?service=worker&follow=true&tail=0"));
    let mut followers = Vec::new();
    for _ in 0..2 {
        let response = cp.http().get(&follow_url).bearer_auth(&token).send().await.expect("follow");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        followers.push(response.bytes_stream());
    }
    assert_eq!(cp.metric("windflow_log_follows_open").await, 1, "one shared agent stream");
    for follower in &mut followers {
        let mut seen = String::new();
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(bytes)) = follower.next().await {
                seen.push_str(&String::from_utf8_lossy(&bytes));
                if seen.contains("event: log") && seen.contains("first line") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(found, Ok(true), "{seen}");
    }
    drop(followers);
    assert!(
        eventually(Duration::from_secs(5), || async { cp.metric("windflow_log_follows_open").await == 0 }).await,
        "the agent stream is closed"
    );

    // The live event stream replays history then follows.
    let response = cp
        .http()
        .get(cp.url(&format!("/api/v1/deployments/{id}/events?follow=true")))
        .bearer_auth(cp.admin_login().await)
        .send()
        .await
        .expect("sse");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert!(cp.metric("windflow_sse_streams_open").await >= 1, "the open stream is counted");
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("an event")
        .expect("chunk")
        .expect("bytes");
    assert!(String::from_utf8_lossy(&first).contains("event: deployment"));
    drop(body);

    // Update only the worker: web keeps its container.
    let (status, _) = cp
        .api(
            Method::PUT,
            &format!("/stacks/{stack_id}"),
            Some(json!({"compose": three_service_stack(&image, port, "second line")})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = cp.api(Method::POST, &format!("/stacks/{stack_id}/deploy/{target}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let updated = wait_until(&mut cp, &id, |d| d["state"] == "running" && d["running_version"] == 2).await;
    assert_eq!(container_id(&updated, "web"), web, "web untouched by the worker's change");
    assert_ne!(container_id(&updated, "worker"), worker, "worker recreated");

    // Roll back to version 1.
    let (status, rolled) = cp.api(Method::POST, &format!("/deployments/{id}/rollback"), None).await;
    assert_eq!((status, rolled["version"].clone()), (StatusCode::ACCEPTED, json!(1)));
    let back = wait_until(&mut cp, &id, |d| d["state"] == "running" && d["running_version"] == 1).await;
    assert_eq!(container_id(&back, "web"), web);

    // A container removed by hand comes back on its own.
    assert!(std::process::Command::new("docker").args(["rm", "-f", &web]).status().expect("docker").success());
    let healed = wait_until(&mut cp, &id, |d| {
        let id = container_id(d, "web");
        !id.is_empty() && id != web
    })
    .await;
    assert_eq!(healed["state"], "running");
    assert!(eventually(Duration::from_secs(10), || async { page(port).await.is_some() }).await, "web serves again");
    let log = messages(&mut cp, &id).await;
    assert!(log.iter().any(|m| m.starts_with("drift detected")), "{log:#?}");

    // Remove with volumes: nothing labelled with the project is left.
    let project = running["project"].as_str().expect("project").to_owned();
    let (status, _) = cp.api(Method::DELETE, &format!("/deployments/{id}?volumes=true"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    wait_state(&mut cp, &id, "removed", Duration::from_secs(60)).await;
    assert!(docker_objects(&project).is_empty(), "{:?}", docker_objects(&project));
    let (_, listed) = cp.api(Method::GET, "/deployments?state=removed", None).await;
    assert_eq!(listed["total"], 1);
}

async fn wait_for_message(cp: &mut ControlPlane, id: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = messages(cp, id).await;
        if log.iter().any(|m| m.contains(text)) {
            return;
        }
        assert!(Instant::now() < deadline, "{text:?} never appeared in {log:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_until(cp: &mut ControlPlane, id: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, deployment) = cp.api(Method::GET, &format!("/deployments/{id}"), None).await;
        if check(&deployment) {
            return deployment;
        }
        assert!(Instant::now() < deadline, "condition never held: {deployment:#}\n{:#?}", messages(cp, id).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_to_a_disconnected_target_waits_and_a_failed_update_rolls_back() {
    let image = busybox_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let token = cp.join_token(1, 600).await;
    let mut agent =
        Agent::enroll(&cp, &dir.path().join("agent"), token["token"].as_str().expect("token")).expect("enrolls");
    let target = agent.id();
    let name = format!("api-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let good = format!(
        "services:\n  app:\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n    stop_grace_period: 1s\n"
    );
    let (_, stack) = cp.api(Method::POST, "/stacks", Some(json!({"name": name, "compose": good}))).await;
    let stack_id = stack["id"].as_str().expect("id").to_owned();

    // The agent is not running: the deploy is accepted and stays pending.
    let (status, deployment) = cp.api(Method::POST, &format!("/stacks/{stack_id}/deploy/{target}"), None).await;
    assert_eq!(
        (status, deployment["state"].clone(), deployment["target_connected"].clone()),
        (StatusCode::ACCEPTED, json!("pending"), json!(false))
    );
    let id = deployment["id"].as_str().expect("id").to_owned();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(cp.api(Method::GET, &format!("/deployments/{id}"), None).await.1["state"], "pending");
    agent.start();
    let running = wait_state(&mut cp, &id, "running", Duration::from_secs(60)).await;
    let app = container_id(&running, "app");

    // Version 2 adds a service whose image does not exist: it fails with Docker's message and
    // version 1 is put back.
    let broken = format!("{good}  extra:\n    image: windflow-test/missing:0\n    pull_policy: never\n");
    let (status, _) = cp.api(Method::PUT, &format!("/stacks/{stack_id}"), Some(json!({"compose": broken}))).await;
    assert_eq!(status, StatusCode::OK);
    cp.api(Method::POST, &format!("/stacks/{stack_id}/deploy/{target}"), None).await;
    let failed = wait_state(&mut cp, &id, "failed", Duration::from_secs(60)).await;
    assert!(failed["reason"].as_str().expect("reason").contains("windflow-test/missing:0"), "{failed:#}");
    wait_for_message(&mut cp, &id, "rolled back: version 1 is running again").await;
    let after = cp.api(Method::GET, &format!("/deployments/{id}"), None).await.1;
    assert_eq!(container_id(&after, "app"), app, "the unchanged service kept running");
    let project = after["project"].as_str().expect("project").to_owned();
    cp.api(Method::DELETE, &format!("/deployments/{id}?volumes=true"), None).await;
    wait_state(&mut cp, &id, "removed", Duration::from_secs(60)).await;
    assert!(docker_objects(&project).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_creates_deploys_with_progress_shows_logs_and_rolls_back() {
    let image = busybox_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let agent = cp.start_agent(dir.path(), "agent").await;
    let target = agent.id();
    let cli = |args: &[&str]| cp.cli(dir.path(), args);
    cp.cli_login(dir.path());

    let name = format!("cli-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let file = dir.path().join("compose.yml");
    let app = |line: &str| {
        format!(
            "services:\n  app:\n    image: {image}\n    command: [\"sh\", \"-c\", \"while true; do echo {line}; sleep 1; done\"]\n    stop_grace_period: 1s\n"
        )
    };
    std::fs::write(&file, "services:\n  app:\n    image: x\n    depends_on: [ghost]\n").expect("write");
    let (ok, _, err) = cli(&["stack", "create", &name, "-f", file.to_str().expect("path")]);
    assert!(!ok && err.contains("services.app.depends_on.ghost"), "{err}");

    std::fs::write(&file, app("one")).expect("write");
    let (ok, out, err) = cli(&["stack", "create", &name, "-f", file.to_str().expect("path")]);
    assert!(ok, "{out}{err}");
    assert!(eventually(Duration::from_secs(10), || async { cp_connected(&dir, &target).await }).await);
    let (ok, out, err) = cli(&["stack", "deploy", &name, "--target", &target]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("creating ") && out.contains("version 1 is running") && out.contains(": running"),
        "progress is shown: {out}"
    );
    let deployment = out
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("deployment "))
        .and_then(|l| l.split(':').next())
        .expect("id")
        .to_owned();

    let (ok, listed, _) = cli(&["deployments", "list", "--stack", &name]);
    assert!(ok && listed.contains(&deployment) && listed.contains("running"), "{listed}");
    // The app prints once a second; under a loaded machine its first line may take a while.
    let expected = format!("{name}-app-1 | one");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (ok, logs, err) = cli(&["logs", &deployment, "--tail", "2"]);
        if ok && logs.contains(&expected) {
            break;
        }
        assert!(Instant::now() < deadline, "{expected:?} never appeared: {logs}{err}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    std::fs::write(&file, app("two")).expect("write");
    assert!(cli(&["stack", "update", &name, "-f", file.to_str().expect("path")]).0);
    let (ok, out, err) = cli(&["stack", "deploy", &name, "--target", &target]);
    assert!(ok && out.contains("version 2 is running"), "{out}{err}");
    let (ok, out, err) = cli(&["rollback", &deployment]);
    assert!(ok && out.contains("version 1 is running"), "{out}{err}");

    let (ok, _, err) = cli(&["stack", "delete", &name]);
    assert!(!ok && err.contains("the stack is deployed"), "{err}");
    let (ok, out, err) = cli(&["deployments", "remove", &deployment, "--volumes"]);
    assert!(ok && out.contains("removed"), "{out}{err}");
    assert!(cli(&["stack", "delete", &name]).0);
}

async fn cp_connected(dir: &tempfile::TempDir, target: &str) -> bool {
    let output = std::process::Command::new(bin("windflow"))
        .args(["targets", "show", target])
        .env("WINDFLOW_CLI_CONFIG", dir.path().join("cli.json"))
        .output()
        .expect("cli runs");
    String::from_utf8_lossy(&output.stdout).contains("\"connected\": true")
}

/// Every file the control plane keeps, as bytes (after it stopped, so the store is flushed).
fn data_files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files = vec![];
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                files.push((path, bytes));
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_variable_reaches_the_container_and_is_neither_shown_nor_stored_in_clear() {
    const SECRET: &str = "pa55-zebra-quartz-9173";
    let image = busybox_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let agent = cp.start_agent(dir.path(), "agent").await;
    let name = format!("db-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let compose = format!(
        "services:\n  db:\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n    stop_grace_period: 1s\n    environment:\n      DB_PASSWORD: ${{DB_PASSWORD:?the stack needs a DB_PASSWORD}}\n      DB_USER: ${{DB_USER}}\n"
    );

    // Without it, the Compose file does not validate; as a secret, it does.
    let (status, refused) = cp.api(Method::POST, "/stacks", Some(json!({"name": name, "compose": compose}))).await;
    assert_eq!(
        (status, refused["error"]["code"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_compose"))
    );
    let body =
        json!({"name": name, "compose": compose, "variables": {"DB_USER": "app"}, "secrets": {"DB_PASSWORD": SECRET}});
    let (status, stack) = cp.api(Method::POST, "/stacks", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{stack}");
    assert_eq!(stack["secrets"], json!(["DB_PASSWORD"]));
    let clash = json!({"secrets": {"DB_USER": "x"}});
    let stack_id = stack["id"].as_str().expect("id").to_owned();
    let (status, clashed) = cp.api(Method::PUT, &format!("/stacks/{stack_id}"), Some(clash)).await;
    assert_eq!((status, clashed["error"]["field"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("secrets")));

    // A new version that does not mention the secret keeps it.
    let (status, v2) =
        cp.api(Method::PUT, &format!("/stacks/{stack_id}"), Some(json!({"variables": {"DB_USER": "app2"}}))).await;
    assert_eq!(
        (status, v2["version"].clone(), v2["secrets"].clone()),
        (StatusCode::OK, json!(2), json!(["DB_PASSWORD"]))
    );
    let (_, deployment) = cp.api(Method::POST, &format!("/stacks/{stack_id}/deploy/{}", agent.id()), None).await;
    let id = deployment["id"].as_str().expect("id").to_owned();
    let running = wait_state(&mut cp, &id, "running", Duration::from_secs(60)).await;
    let container = container_id(&running, "db");
    let inspect = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{json .Config.Env}}", &container])
        .output()
        .expect("docker inspect");
    let env = String::from_utf8_lossy(&inspect.stdout);
    assert!(env.contains(&format!("DB_PASSWORD={SECRET}")) && env.contains("DB_USER=app2"), "{env}");

    // No answer of the API shows it.
    for path in [format!("/stacks/{stack_id}"), format!("/stacks/{stack_id}/versions/1"), format!("/deployments/{id}")]
    {
        let (_, answer) = cp.api(Method::GET, &path, None).await;
        assert!(!answer.to_string().contains(SECRET), "{path}: {answer}");
    }
    let project = running["project"].as_str().expect("project").to_owned();
    cp.api(Method::DELETE, &format!("/deployments/{id}"), None).await;
    wait_state(&mut cp, &id, "removed", Duration::from_secs(60)).await;
    assert!(docker_objects(&project).is_empty());

    // Nothing the control plane keeps holds it in clear.
    cp.process.terminate();
    for (path, bytes) in data_files(&cp.dir) {
        let found = bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes());
        assert!(!found, "{} holds the secret in clear", path.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_deployment_is_purged_with_its_events_once_its_retention_is_over() {
    let image = busybox_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let retention = vec!["--removed-retention".to_owned(), "3s".to_owned()];
    let mut cp = ControlPlane::start_with(dir.path(), free_tcp_port(), free_udp_port(), retention).await;
    let agent = cp.start_agent(dir.path(), "agent").await;
    let name = format!("brief-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let compose = format!(
        "services:\n  app:\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n    stop_grace_period: 1s\n"
    );
    let (_, stack) = cp.api(Method::POST, "/stacks", Some(json!({"name": name, "compose": compose}))).await;
    let stack_id = stack["id"].as_str().expect("id").to_owned();
    let (_, deployment) = cp.api(Method::POST, &format!("/stacks/{stack_id}/deploy/{}", agent.id()), None).await;
    let id = deployment["id"].as_str().expect("id").to_owned();
    wait_state(&mut cp, &id, "running", Duration::from_secs(60)).await;

    cp.api(Method::DELETE, &format!("/deployments/{id}?volumes=true"), None).await;
    wait_state(&mut cp, &id, "removed", Duration::from_secs(60)).await;
    assert!(!messages(&mut cp, &id).await.is_empty(), "its history is listed while it is kept");

    let mut purged = false;
    for _ in 0..100 {
        if cp.api(Method::GET, &format!("/deployments/{id}"), None).await.0 == StatusCode::NOT_FOUND {
            purged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(purged, "the removed deployment is still listed after its retention");
    let (status, _) = cp.api(Method::GET, &format!("/deployments/{id}/events"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(cp.api(Method::GET, "/deployments?state=removed", None).await.1["total"], 0);
}
