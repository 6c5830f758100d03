//! Rolling a stack version out to two hosts (the main Docker engine and an engine of the test's
//! own) as one operation: when one host cannot take it, the other is put back as it was; when
//! both can, both run it.

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windflow_tests::private_engine::PrivateEngine;
use windflow_tests::*;

/// An image only the main engine has: a deploy of it on the other host fails (no registry).
const MAIN_ONLY: &str = "windflow-test/main-only:1";

async fn rollout_over(cp: &mut ControlPlane, started: &Value) -> Value {
    let id = started["id"].as_str().expect("id");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, rollout) = cp.api(Method::GET, &format!("/rollouts/{id}"), None).await;
        if rollout["step"] == "done" || rollout["step"] == "failed" {
            return rollout;
        }
        assert!(Instant::now() < deadline, "the rollout never ended: {rollout:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn images(docker: impl Fn(&[&str]) -> std::process::Output, project: &str) -> Vec<String> {
    let listed =
        docker(&["ps", "--filter", &format!("label=com.docker.compose.project={project}"), "--format", "{{.Image}}"]);
    String::from_utf8_lossy(&listed.stdout).lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_that_one_host_cannot_take_puts_the_other_back_and_one_both_can_take_runs_on_both() {
    let image = busybox_image();
    let tagged = Command::new("docker").args(["tag", &image, MAIN_ONLY]).status().expect("docker");
    assert!(tagged.success());
    let root = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let engine = PrivateEngine::start(root.path());
    engine.load_image(&image);

    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let main_agent = cp.start_agent(dir.path(), "main-host").await;
    let other_agent = cp.start_agent_with(dir.path(), "other-host", &[("DOCKER_HOST", &engine.host())]).await;
    let (main_host, other_host) = (main_agent.id(), other_agent.id());
    let project = "rollout-shop";
    let _cleanup = ProjectsCleanup(vec![project.into()]);
    let service = |image: &str| {
        format!(
            "services:\n  app:\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n    stop_grace_period: 1s\n"
        )
    };
    let (status, stack) =
        cp.api(Method::POST, "/stacks", Some(json!({"name": project, "compose": service(&image)}))).await;
    assert_eq!(status, StatusCode::CREATED, "{stack}");
    let stack_id = stack["id"].as_str().expect("id").to_owned();
    // Version 1 runs on the main host.
    let (_, accepted) = cp.api(Method::POST, &format!("/stacks/{stack_id}/deploy/{main_host}"), None).await;
    assert_eq!(cp.settled(&accepted).await["state"], "running");
    let main_deployment = accepted["id"].as_str().expect("id").to_owned();

    // Bad input is refused before anything is written.
    let (status, refused) = cp
        .api(Method::POST, &format!("/stacks/{stack_id}/rollouts"), Some(json!({"targets": [main_host, main_host]})))
        .await;
    assert_eq!(
        (status, refused["error"]["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("targets[1]")),
        "{refused}"
    );
    let (status, refused) = cp
        .api(
            Method::POST,
            &format!("/stacks/{stack_id}/rollouts"),
            Some(json!({"targets": [main_host, uuid::Uuid::now_v7()]})),
        )
        .await;
    assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::NOT_FOUND, json!("targets[1]")), "{refused}");
    let (_, listed) = cp.api(Method::GET, "/deployments?per_page=50", None).await;
    assert_eq!(listed["total"], 1, "nothing was written: {listed}");

    // Version 2 uses an image the other host does not have: the main host takes it, the other
    // fails, and the saga puts the main host back on version 1 and removes what it created.
    let (status, _) =
        cp.api(Method::PUT, &format!("/stacks/{stack_id}"), Some(json!({"compose": service(MAIN_ONLY)}))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, started) = cp
        .api(Method::POST, &format!("/stacks/{stack_id}/rollouts"), Some(json!({"targets": [main_host, other_host]})))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["version"], 2);
    let (status, busy) =
        cp.api(Method::POST, &format!("/stacks/{stack_id}/rollouts"), Some(json!({"targets": [main_host]}))).await;
    assert_eq!(
        (status, busy["error"]["code"].clone()),
        (StatusCode::CONFLICT, json!("conflict")),
        "one at a time: {busy}"
    );
    let failed = rollout_over(&mut cp, &started).await;
    assert_eq!(failed["step"], "failed", "{failed:#}");
    assert!(failed["reason"].as_str().unwrap_or_default().contains(&other_host), "{failed:#}");
    let parts = failed["parts"].as_array().expect("parts");
    assert_eq!(parts[0]["before"], json!({"kind": "updated", "version": 1}));
    assert_eq!(parts[1]["before"], json!({"kind": "created"}));
    assert!(parts.iter().all(|p| p["state"] == "compensated"), "{failed:#}");
    let (_, main) = cp.api(Method::GET, &format!("/deployments/{main_deployment}"), None).await;
    assert_eq!((main["state"].clone(), main["running_version"].clone()), (json!("running"), json!(1)), "{main:#}");
    assert_eq!(
        images(|args| Command::new("docker").args(args).output().expect("docker"), project),
        vec![image.clone()]
    );
    assert!(images(|args| engine.docker(args), project).is_empty(), "the other host keeps nothing");
    let messages = cp.messages(&main_deployment).await;
    assert!(messages.iter().any(|m| m.contains("putting every target back")), "{messages:#?}");

    // Version 3 both hosts can run: the rollout is done, the main host's deployment updated and
    // a new one on the other host.
    let (status, _) = cp
        .api(
            Method::PUT,
            &format!("/stacks/{stack_id}"),
            Some(json!({"compose": service(&image).replace("3600", "3601")})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, started) = cp
        .api(Method::POST, &format!("/stacks/{stack_id}/rollouts"), Some(json!({"targets": [main_host, other_host]})))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let done = rollout_over(&mut cp, &started).await;
    assert_eq!(done["step"], "done", "{done:#}");
    assert!(done["parts"].as_array().expect("parts").iter().all(|p| p["state"] == "running"), "{done:#}");
    assert_eq!(images(|args| engine.docker(args), project), vec![image.clone()]);
    let (_, listed) = cp.api(Method::GET, "/rollouts", None).await;
    assert_eq!(listed["total"], 2);

    for part in done["parts"].as_array().expect("parts") {
        let (_, removal) = cp
            .api(Method::DELETE, &format!("/deployments/{}", part["deployment_id"].as_str().expect("id")), None)
            .await;
        assert_eq!(cp.settled(&removal).await["state"], "removed");
    }
}
