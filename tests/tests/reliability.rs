//! Faults, at the scale CI affords (the full-scale runs and their figures are in
//! docs/reliability.md): the control plane killed in the middle of concurrent deploys, and an
//! agent killed in the middle of one.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windflow_tests::*;

/// Deploys in flight when the control plane is killed.
const CONCURRENT_DEPLOYS: usize = 20;

/// Containers of a Compose project, running or not.
fn containers(project: &str) -> Vec<String> {
    docker_objects(project).into_iter().filter(|o| o.starts_with("container:")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_control_plane_killed_during_concurrent_deploys_converges_and_loses_no_acknowledged_deploy() {
    let image = busybox_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let agent = cp.start_agent(dir.path(), "crash-host").await;
    let target = agent.id();
    let run = uuid::Uuid::now_v7().simple().to_string();
    let mut stacks = Vec::new();
    for n in 0..CONCURRENT_DEPLOYS {
        let name = format!("crash-{}-{n}", &run[run.len() - 6..]);
        let compose = format!(
            "services:\n  app:\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n    restart: unless-stopped\n    stop_grace_period: 1s\n"
        );
        let (status, stack) = cp.api(Method::POST, "/stacks", Some(json!({"name": name, "compose": compose}))).await;
        assert_eq!(status, StatusCode::CREATED, "{stack}");
        stacks.push((stack["id"].as_str().expect("id").to_owned(), name));
    }
    let _cleanup =
        ProjectsCleanup(stacks.iter().map(|(_, name)| windflow_control_plane::compose::project_name(name)).collect());

    // Every deploy at once; the answers that came back 202 are acknowledged writes.
    let token = cp.access_token().await;
    let paths: Vec<String> = stacks.iter().map(|(id, _)| format!("/api/v1/stacks/{id}/deploy/{target}")).collect();
    let requests = paths.iter().map(|path| cp.call_with(Some(&token), Method::POST, path, None));
    let answers = join_all(requests).await;
    let acknowledged: Vec<String> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::ACCEPTED)
        .map(|(_, body)| body["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(acknowledged.len(), CONCURRENT_DEPLOYS, "{answers:?}");

    // Killed while the agent works through them: some done, most not.
    let deadline = Instant::now() + Duration::from_secs(30);
    let running_before = loop {
        let (_, listed) = cp.api(Method::GET, "/deployments?per_page=500", None).await;
        let running = listed["items"].as_array().expect("items").iter().filter(|d| d["state"] == "running").count();
        if running >= 3 || Instant::now() > deadline {
            break running;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let killed = Instant::now();
    cp.crash_and_restart().await;

    // Every acknowledged deployment is still there, and all of them converge.
    let deadline = Instant::now() + Duration::from_secs(240);
    let states = loop {
        let (_, listed) = cp.api(Method::GET, "/deployments?per_page=500", None).await;
        let states: Vec<(String, String)> = listed["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|d| {
                (d["id"].as_str().unwrap_or_default().to_owned(), d["state"].as_str().unwrap_or_default().to_owned())
            })
            .collect();
        for id in &acknowledged {
            assert!(states.iter().any(|(known, _)| known == id), "acknowledged deployment {id} was lost");
        }
        if states.iter().all(|(_, state)| state == "running") {
            break states;
        }
        assert!(Instant::now() < deadline, "not all converged: {states:?}\n{}", cp.process.logs());
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "killed with {running_before} of {CONCURRENT_DEPLOYS} running; all {} running {:.1} s after the kill",
        states.len(),
        killed.elapsed().as_secs_f64()
    );

    // Exactly one container per stack: nothing was started twice.
    for (_, name) in &stacks {
        let project = windflow_control_plane::compose::project_name(name);
        let found = containers(&project);
        assert_eq!(found.len(), 1, "{project}: {found:?}");
    }

    // Clean up, through the API like a user would.
    for id in &acknowledged {
        let (status, body) = cp.api(Method::DELETE, &format!("/deployments/{id}"), None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, listed) = cp.api(Method::GET, "/deployments?per_page=500", None).await;
        let left: Vec<&Value> =
            listed["items"].as_array().expect("items").iter().filter(|d| d["state"] != "removed").collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "removals did not finish: {left:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(agent);
}

/// The deployment, once its state is `running`.
async fn running(cp: &mut ControlPlane, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (_, deployment) = cp.api(Method::GET, &format!("/deployments/{id}"), None).await;
        if deployment["state"] == "running" {
            return deployment;
        }
        assert!(Instant::now() < deadline, "never running: {deployment:#}\n{:#?}", cp.messages(id).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// How the agent is stopped in the middle of a deploy.
#[derive(Debug, Clone, Copy, PartialEq)]
enum AgentStop {
    /// SIGKILL, as a crash: the job is cut off and resumed after the restart.
    Crash,
    /// SIGTERM: the agent takes no new job and lets the running one end before it exits.
    Clean,
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_in_the_middle_of_a_deploy_finishes_it_after_restart_without_orphans() {
    agent_stopped_in_the_middle_of_a_deploy(AgentStop::Crash, "agent-crash").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_stopped_cleanly_in_the_middle_of_a_deploy_lets_it_end_first_and_reports_it_once_back() {
    agent_stopped_in_the_middle_of_a_deploy(AgentStop::Clean, "agent-stop").await;
}

async fn agent_stopped_in_the_middle_of_a_deploy(stop: AgentStop, name: &str) {
    let image = busybox_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let mut agent = cp.start_agent(dir.path(), &format!("{name}-host")).await;
    let target = agent.id();
    // The web service waits for db to turn healthy, which takes a few seconds: a window to stop
    // the agent in the middle of the job.
    let compose = format!(
        "services:\n  db:\n    image: {image}\n    command: [\"sh\", \"-c\", \"sleep 3; touch /ready; sleep 3600\"]\n    healthcheck:\n      test: [\"CMD-SHELL\", \"test -f /ready\"]\n      interval: 1s\n      retries: 30\n    restart: unless-stopped\n    stop_grace_period: 1s\n  web:\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n    depends_on:\n      db: {{condition: service_healthy}}\n    restart: unless-stopped\n    stop_grace_period: 1s\n"
    );
    let project = windflow_control_plane::compose::project_name(name);
    let _cleanup = ProjectsCleanup(vec![project.clone()]);
    let (_, stack) = cp.api(Method::POST, "/stacks", Some(json!({"name": name, "compose": compose}))).await;
    let stack_id = stack["id"].as_str().expect("id").to_owned();
    let (_, accepted) = cp.api(Method::POST, &format!("/stacks/{stack_id}/deploy/{target}"), None).await;
    let id = accepted["id"].as_str().expect("id").to_owned();

    let deadline = Instant::now() + Duration::from_secs(60);
    while !cp.messages(&id).await.iter().any(|m| m.contains("waiting for db")) {
        assert!(Instant::now() < deadline, "the deploy never reached its wait: {:#?}", cp.messages(&id).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let process = agent.process.as_mut().expect("running");
    match stop {
        AgentStop::Crash => process.kill(),
        AgentStop::Clean => process.terminate(),
    }
    let (_, interrupted) = cp.api(Method::GET, &format!("/deployments/{id}"), None).await;
    if stop == AgentStop::Crash {
        assert_ne!(interrupted["state"], "running", "{interrupted:#}");
    }

    agent.start();
    let deployment = running(&mut cp, &id, Duration::from_secs(120)).await;
    for service in deployment["services"].as_array().expect("services") {
        assert_eq!(service["containers"].as_array().map(Vec::len), Some(1), "{service:#}");
    }
    assert_eq!(containers(&project).len(), 2, "one container per service: {:?}", containers(&project));
    // The journal settled it, one job throughout. After a crash: started, resumed (the control
    // plane sent the same job again, and the restarted agent found it started and never ended),
    // ended. After a clean stop: started and ended before the agent exited; asked again once it
    // was back, it answered with the recorded outcome without running it again.
    let deployment_id: uuid::Uuid = id.parse().expect("uuid");
    let journal = agent.journal();
    let job_id = journal.iter().find(|l| l.deployment_id == Some(deployment_id)).expect("journalled").job_id;
    let lines: Vec<_> =
        journal.iter().filter(|l| l.job_id == job_id).map(|l| (l.resumed, l.outcome.is_some())).collect();
    let expected: &[(bool, bool)] = match stop {
        AgentStop::Crash => &[(false, false), (true, false), (false, true)],
        AgentStop::Clean => &[(false, false), (false, true)],
    };
    assert_eq!(lines, expected, "{stop:?}: {journal:?}");
    assert_eq!(
        journal.iter().filter(|l| l.deployment_id == Some(deployment_id)).count(),
        expected.iter().filter(|(_, ended)| !ended).count()
    );

    let (_, removed) = cp.api(Method::DELETE, &format!("/deployments/{id}"), None).await;
    assert_eq!(cp.settled(&removed).await["state"], "removed");
    assert_eq!(containers(&project), Vec::<String>::new());
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_control_plane_fails_readiness_first_and_tells_its_agents_to_come_back_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = vec!["--drain-delay".to_owned(), "2s".to_owned()];
    let mut cp = ControlPlane::start_with(dir.path(), free_tcp_port(), free_udp_port(), args).await;
    let agent = cp.start_agent(dir.path(), "probe-host").await;
    let target = agent.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cp.is_connected(&target).await {
        assert!(Instant::now() < deadline, "the agent never connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for probe in ["/health", "/startup", "/ready"] {
        let (status, body) = cp.call_with(None, Method::GET, probe, None).await;
        assert_eq!(status, StatusCode::OK, "{probe}: {body}");
    }

    // SIGTERM: still alive and started, no longer ready, for the drain delay.
    let pid = cp.process.pid().expect("pid");
    std::process::Command::new("kill").arg(pid.to_string()).status().expect("kill");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, ready) = cp.call_with(None, Method::GET, "/ready", None).await;
    assert_eq!((status, ready["status"].clone()), (StatusCode::SERVICE_UNAVAILABLE, json!("stopping")));
    assert_eq!(cp.call_with(None, Method::GET, "/health", None).await.0, StatusCode::OK);
    assert_eq!(cp.call_with(None, Method::GET, "/startup", None).await.0, StatusCode::OK);

    // Then it exits, and its agents hear that it is going rather than finding out from silence.
    let exited = eventually(Duration::from_secs(15), || {
        let exited = cp.process.exited().is_some();
        async move { exited }
    })
    .await;
    assert!(exited, "the control plane did not stop");
    let told = eventually(Duration::from_secs(5), || {
        let logs = agent.logs();
        async move { logs.contains("the control plane is shutting down") }
    })
    .await;
    assert!(told, "the agent was not told:\n{}", agent.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_for_an_agent_whose_link_keeps_failing_fail_at_once_once_its_circuit_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    // An agent that holds its session but resets every job stream.
    let (_fleet, counters, ids) = windflow_tests::fleet::start_fleet_with(&mut cp, 1, 1, true).await.expect("fleet");
    let target = ids[0];
    let connected = eventually(Duration::from_secs(20), || {
        let counters = counters.clone();
        async move { counters.connected.load(std::sync::atomic::Ordering::Relaxed) == 1 }
    })
    .await;
    assert!(connected);

    for attempt in 1..=windflow_control_plane::hub::LINK_FAILURES {
        let (status, body) = cp.api(Method::POST, &format!("/targets/{target}/facts"), None).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (StatusCode::BAD_GATEWAY, json!("agent_link_failed")),
            "attempt {attempt}: {body}"
        );
    }
    // The circuit is open: the next job is refused at once, saying for how long.
    let started = Instant::now();
    let (status, body) = cp.api(Method::POST, &format!("/targets/{target}/facts"), None).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("agent_circuit_open")),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_millis(500), "refused at once, not after a timeout");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("paused for"), "{body}");
    let metrics = cp.http().get(cp.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("windflow_circuits_open{kind=\"agent\"} 1"), "{metrics}");
}
