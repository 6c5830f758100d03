//! The Docker engine restarted under a running agent: the agent finds the engine again, reports
//! what it sees, and the control plane repairs the drift the restart left.
//!
//! The test runs an engine of its own (in a network namespace, with its own data and sockets),
//! so that restarting it disturbs no other test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use windflow_tests::netns::Netns;
use windflow_tests::*;

/// A Docker engine of the test's own, stopped and its data removed on drop.
struct PrivateEngine {
    netns: Netns,
    root: PathBuf,
    process: Option<Process>,
}

impl PrivateEngine {
    fn start(root: &Path) -> Self {
        let mut engine = Self { netns: Netns::create().expect("namespace"), root: root.to_owned(), process: None };
        engine.launch();
        engine
    }

    fn host(&self) -> String {
        format!("unix://{}", self.root.join("docker.sock").display())
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker").arg("-H").arg(self.host()).args(args).output().expect("docker runs")
    }

    fn launch(&mut self) {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/var/run/netns/{}", self.netns.name))
            .arg("dockerd")
            .arg("--data-root")
            .arg(self.root.join("data"))
            .arg("--exec-root")
            .arg(self.root.join("exec"))
            .arg("--pidfile")
            .arg(self.root.join("docker.pid"))
            .arg("--host")
            .arg(self.host());
        self.process = Some(Process::spawn(&mut command, self.root.join("dockerd.log")).expect("dockerd"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.docker(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "the private engine did not start:\n{}",
                std::fs::read_to_string(self.root.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the engine as a service manager would (SIGTERM, containers stopped), then starts it.
    fn restart(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.terminate();
        }
        self.launch();
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "-aq"]);
        let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout).split_whitespace().map(str::to_owned).collect();
        if !ids.is_empty() {
            let _ = Command::new("docker").arg("-H").arg(self.host()).args(["rm", "-f"]).args(&ids).output();
        }
        if let Some(mut process) = self.process.take() {
            process.terminate();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_the_engine_restarts_the_agent_reports_again_and_the_drift_is_repaired() {
    let image = busybox_image();
    let root = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let mut engine = PrivateEngine::start(root.path());
    // The private engine has no registry either: it gets the test image from the main engine.
    let load = Command::new("sh")
        .arg("-c")
        .arg(format!("docker save {image} | docker -H {} load", engine.host()))
        .status()
        .expect("sh");
    assert!(load.success(), "loading the test image into the private engine");

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
