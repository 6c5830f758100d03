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

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_in_the_middle_of_a_deploy_finishes_it_after_restart_without_orphans() {
    let image = busybox_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let mut agent = cp.start_agent(dir.path(), "agent-crash-host").await;
    let target = agent.id();
    // The web service waits for db to turn healthy, which takes a few seconds: a window to kill
    // the agent in the middle of the job.
    let compose = format!(
        "services:\n  db:\n    image: {image}\n    command: [\"sh\", \"-c\", \"sleep 3; touch /ready; sleep 3600\"]\n    healthcheck:\n      test: [\"CMD-SHELL\", \"test -f /ready\"]\n      interval: 1s\n      retries: 30\n    restart: unless-stopped\n    stop_grace_period: 1s\n  web:\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n    depends_on:\n      db: {{condition: service_healthy}}\n    restart: unless-stopped\n    stop_grace_period: 1s\n"
    );
    let _cleanup = ProjectsCleanup(vec![windflow_control_plane::compose::project_name("agent-crash")]);
    let (_, stack) = cp.api(Method::POST, "/stacks", Some(json!({"name": "agent-crash", "compose": compose}))).await;
    let stack_id = stack["id"].as_str().expect("id").to_owned();
    let (_, accepted) = cp.api(Method::POST, &format!("/stacks/{stack_id}/deploy/{target}"), None).await;
    let id = accepted["id"].as_str().expect("id").to_owned();

    let deadline = Instant::now() + Duration::from_secs(60);
    while !cp.messages(&id).await.iter().any(|m| m.contains("waiting for db")) {
        assert!(Instant::now() < deadline, "the deploy never reached its wait: {:#?}", cp.messages(&id).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.process.as_mut().expect("running").kill();
    let (_, interrupted) = cp.api(Method::GET, &format!("/deployments/{id}"), None).await;
    assert_ne!(interrupted["state"], "running", "{interrupted:#}");

    agent.start();
    let deployment = running(&mut cp, &id, Duration::from_secs(120)).await;
    for service in deployment["services"].as_array().expect("services") {
        assert_eq!(service["containers"].as_array().map(Vec::len), Some(1), "{service:#}");
    }
    let project = windflow_control_plane::compose::project_name("agent-crash");
    assert_eq!(containers(&project).len(), 2, "one container per service: {:?}", containers(&project));
    // The journal settled it: the control plane sent the same job again, and the restarted agent
    // found it started and never ended, ran it again to its end under the same id, and recorded
    // that end once.
    let deployment_id: uuid::Uuid = id.parse().expect("uuid");
    let deploys: Vec<_> = agent.journal().into_iter().filter(|l| l.deployment_id == Some(deployment_id)).collect();
    let job_id = deploys.first().expect("journalled").job_id;
    let all_lines: Vec<_> = agent.journal().into_iter().filter(|l| l.job_id == job_id).collect();
    assert_eq!(
        all_lines.iter().map(|l| (l.resumed, l.outcome.is_some())).collect::<Vec<_>>(),
        [(false, false), (true, false), (false, true)],
        "started, resumed after the crash, ended: {all_lines:?}"
    );
    assert_eq!(deploys.len(), 2, "one job, started then resumed: {deploys:?}");

    let (_, removed) = cp.api(Method::DELETE, &format!("/deployments/{id}"), None).await;
    assert_eq!(cp.settled(&removed).await["state"], "removed");
    assert_eq!(containers(&project), Vec::<String>::new());
    drop(agent);
}
