//! The Docker engine restarted under a running agent: the agent finds the engine again, reports
//! what it sees, and the control plane repairs the drift the restart left.
//!
//! The test runs an engine of its own (in a network namespace, with its own data and sockets),
//! so that restarting it disturbs no other test.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use windflow_tests::private_engine::PrivateEngine;
use windflow_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn after_the_engine_restarts_the_agent_reports_again_and_the_drift_is_repaired() {
    let image = busybox_image();
    let root = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let mut engine = PrivateEngine::start(root.path());
    engine.load_image(&image);

    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let host = engine.host();
    let agent = cp.start_agent_with(dir.path(), "engine-host", &[("DOCKER_HOST", &host)]).await;
    let target = agent.id();
    // `keeper` comes back with the engine by its restart policy; `plain` has none and stays
    // stopped: drift, for the control plane to repair.
    let compose = format!(
        "services:\n  keeper:\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n    restart: unless-stopped\n    stop_grace_period: 1s\n  plain:\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n    stop_grace_period: 1s\n"
    );
    let (status, stack) =
        cp.api(Method::POST, "/stacks", Some(json!({"name": "engine-restart", "compose": compose}))).await;
    assert_eq!(status, StatusCode::CREATED, "{stack}");
    let (status, accepted) =
        cp.api(Method::POST, &format!("/stacks/{}/deploy/{target}", stack["id"].as_str().expect("id")), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(cp.settled(&accepted).await["state"], "running");
    let id = accepted["id"].as_str().expect("id").to_owned();

    let restarted = Instant::now();
    engine.restart();
    let engine_back = restarted.elapsed();

    // The agent finds the engine again and the control plane repairs what the restart stopped.
    let deadline = Instant::now() + Duration::from_secs(90);
    let running = |engine: &PrivateEngine| {
        let listed = engine.docker(&[
            "ps",
            "--filter",
            "label=com.docker.compose.project=engine-restart",
            "--format",
            "{{.Names}}",
        ]);
        let mut names: Vec<String> = String::from_utf8_lossy(&listed.stdout).lines().map(str::to_owned).collect();
        names.sort();
        names
    };
    loop {
        let messages = cp.messages(&id).await;
        let repaired = messages.iter().any(|m| m == "drift repaired");
        if repaired && running(&engine) == ["engine-restart-keeper-1", "engine-restart-plain-1"] {
            let (_, deployment) = cp.api(Method::GET, &format!("/deployments/{id}"), None).await;
            assert_eq!(deployment["state"], "running", "{deployment:#}");
            let drift = messages.iter().find(|m| m.starts_with("drift detected")).expect("the drift was seen");
            assert!(drift.contains("plain"), "{drift}");
            println!(
                "engine restarted in {engine_back:?}; drift repaired and both services running {:?} after the restart",
                restarted.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not repaired after the engine restart: {messages:#?}\nrunning: {:?}\n{}",
            running(&engine),
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let (_, removal) = cp.api(Method::DELETE, &format!("/deployments/{id}"), None).await;
    assert_eq!(cp.settled(&removal).await["state"], "removed");
    assert!(running(&engine).is_empty());
}
