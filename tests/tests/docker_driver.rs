//! The agent's Docker driver against the real engine: Compose semantics, recreation of only
//! what changed, restoring, and removal that leaves nothing labelled behind.

use std::collections::BTreeMap;
use std::time::Duration;

use uuid::Uuid;
use windflow_agent::driver::docker::DockerDriver;
use windflow_protocol::StackSpec;
use windflow_protocol::messages::{ContainerState, HealthState, StackStatus};
use windflow_tests::{busybox_image, docker_objects, free_tcp_port, three_service_stack};

fn spec(project: &str, yaml: &str) -> StackSpec {
    windflow_control_plane::compose::parse(yaml, project, &BTreeMap::new()).expect("valid stack").spec
}

fn container_id(status: &StackStatus, service: &str) -> String {
    status
        .services
        .iter()
        .find(|s| s.service == service)
        .and_then(|s| s.containers.first())
        .map(|c| c.id.clone())
        .expect("container")
}

async fn http_get(port: u16) -> Option<String> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/")).await.ok()?;
    response.text().await.ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_service_stack_comes_up_in_order_updates_minimally_and_goes_away_completely() {
    let image = busybox_image();
    let project = format!("wftest-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let port = free_tcp_port();
    let driver = DockerDriver::connect().await.expect("docker engine");
    let deployment = Uuid::now_v7();
    let (progress, mut steps) = tokio::sync::mpsc::unbounded_channel();

    let first = spec(&project, &three_service_stack(&image, port, "worker says hi"));
    let status = driver.apply(deployment, &first, &progress).await.expect("deploys");
    let mut seen = Vec::new();
    while let Ok((step, _)) = steps.try_recv() {
        seen.push(step);
    }
    assert!(seen.iter().any(|s| s.contains("waiting for init to complete")), "{seen:?}");
    assert!(seen.iter().any(|s| s.contains("waiting for web to be healthy")), "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("done"));

    // init ran to completion, web is healthy, worker runs.
    let state =
        |service: &str| status.services.iter().find(|s| s.service == service).expect("service").containers[0].clone();
    assert_eq!(state("init").state, ContainerState::Exited { code: 0 });
    assert_eq!(state("web").health, Some(HealthState::Healthy));
    assert_eq!(state("worker").state, ContainerState::Running);
    assert_eq!(state("web").name, format!("{project}-web-1"));
    let page = http_get(port).await.expect("web answers");
    assert!(page.contains("deployed by windflow"), "{page}");

    // Same spec again: nothing is recreated.
    let again = driver.apply(deployment, &first, &progress).await.expect("idempotent");
    for service in ["init", "web", "worker"] {
        assert_eq!(container_id(&again, service), container_id(&status, service), "{service} untouched");
    }

    // Only the worker's environment changes: only the worker is recreated.
    let second = spec(&project, &three_service_stack(&image, port, "worker says bye"));
    let updated = driver.apply(deployment, &second, &progress).await.expect("updates");
    assert_eq!(container_id(&updated, "web"), container_id(&status, "web"));
    assert_eq!(container_id(&updated, "init"), container_id(&status, "init"));
    assert_ne!(container_id(&updated, "worker"), container_id(&status, "worker"));

    // A container removed by hand is put back by the next apply.
    let web = container_id(&updated, "web");
    assert!(std::process::Command::new("docker").args(["rm", "-f", &web]).status().expect("docker rm").success());
    let restored = driver.apply(deployment, &second, &progress).await.expect("restores");
    assert_ne!(container_id(&restored, "web"), web);
    let page = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(page) = http_get(port).await {
                return page;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("web is back");
    assert!(page.contains("deployed by windflow"), "the volume kept the page");

    // Removal without volumes keeps the volume; with volumes, nothing is left.
    driver.remove(&project, false, &progress).await.expect("removes");
    assert_eq!(docker_objects(&project), [format!("volume:{project}_site")]);
    driver.remove(&project, true, &progress).await.expect("removes volumes");
    assert!(docker_objects(&project).is_empty(), "{:?}", docker_objects(&project));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_fails_with_the_engines_message() {
    let project = format!("wftest-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let driver = DockerDriver::connect().await.expect("docker engine");
    let (progress, _steps) = tokio::sync::mpsc::unbounded_channel();
    let broken =
        spec(&project, "services:\n  app:\n    image: windflow-test/does-not-exist:0\n    pull_policy: never\n");
    let error = driver.apply(Uuid::now_v7(), &broken, &progress).await.expect_err("no such image");
    assert!(error.to_string().contains("windflow-test/does-not-exist:0"), "{error}");
    driver.remove(&project, true, &progress).await.expect("clean up");
}

#[tokio::test(flavor = "multi_thread")]
async fn followed_logs_join_a_container_once_it_starts_even_if_it_was_created_long_before() {
    let project = format!("wftest-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let driver = DockerDriver::connect().await.expect("docker engine");
    let mut logs = driver.logs(&project, None, Some(10), None, true).await.expect("follows");
    // Created, and seen by the follower's polls, well before it starts.
    let name = format!("{project}-app-1");
    let created = std::process::Command::new("docker")
        .args(["create", "--name", &name, "--label"])
        .arg(format!("com.docker.compose.project={project}"))
        .args([
            "--label",
            "com.docker.compose.service=app",
            &busybox_image(),
            "sh",
            "-c",
            "echo started late; sleep 30",
        ])
        .output()
        .expect("docker create");
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let started = std::process::Command::new("docker").args(["start", &name]).output().expect("docker start");
    assert!(started.status.success());
    let chunk =
        tokio::time::timeout(Duration::from_secs(10), logs.recv()).await.expect("a line in time").expect("a line");
    assert_eq!(String::from_utf8_lossy(&chunk.data).trim(), "started late");
    let _ = std::process::Command::new("docker").args(["rm", "-f", &name]).output();
}
