//! Moving a running stack from a Docker target to a Swarm target (the Swarm test engine) or to a
//! Kubernetes cluster (the fake API server), from a Swarm to a cluster, and what a failure on
//! the destination leaves behind: the source as it was, the destination clean.

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windflow_tests::*;

async fn page(address: &str, port: u16) -> Option<String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().ok()?;
    client.get(format!("http://{address}:{port}/")).send().await.ok()?.text().await.ok()
}

async fn answers(address: &str, port: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some(text) = page(address, port).await {
            return text;
        }
        assert!(Instant::now() < deadline, "http://{address}:{port}/ never answered");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn wait_state(cp: &mut ControlPlane, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, deployment) = cp.api(Method::GET, &format!("/deployments/{id}"), None).await;
        if deployment["state"] == want {
            return deployment;
        }
        assert!(Instant::now() < deadline, "never {want}: {deployment:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn migration_over(cp: &mut ControlPlane, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let (_, migration) = cp.api(Method::GET, &format!("/migrations/{id}"), None).await;
        if migration["step"] == "done" || migration["step"] == "failed" {
            return migration;
        }
        assert!(Instant::now() < deadline, "the migration never ended: {migration:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn messages(cp: &mut ControlPlane, id: &str) -> Vec<String> {
    let (_, events) = cp.api(Method::GET, &format!("/deployments/{id}/events"), None).await;
    events["items"].as_array().expect("items").iter().map(|e| e["message"].as_str().unwrap_or("").to_owned()).collect()
}

fn web(image: &str, port: u16, text: &str) -> String {
    format!(
        r#"services:
  web:
    image: {image}
    command: ["sh", "-c", "mkdir -p /www && echo '{text}' > /www/index.html && exec httpd -f -p 80 -h /www"]
    ports: [{{ target: 80, published: {port}, mode: host }}]
    stop_grace_period: 1s
"#
    )
}

/// Deploys `compose` as a new stack on `target` and waits until it runs: (stack id, deployment id).
async fn running_stack(cp: &mut ControlPlane, name: &str, compose: &str, target: &str) -> (String, String) {
    let (status, stack) = cp.api(Method::POST, "/stacks", Some(json!({"name": name, "compose": compose}))).await;
    assert_eq!(status, StatusCode::CREATED, "{stack}");
    let stack_id = stack["id"].as_str().expect("id").to_owned();
    let (status, deployment) = cp.api(Method::POST, &format!("/stacks/{stack_id}/deploy/{target}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{deployment}");
    let id = deployment["id"].as_str().expect("id").to_owned();
    wait_state(cp, &id, "running").await;
    (stack_id, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stack_moves_from_docker_to_swarm_and_a_failed_move_leaves_the_source_running() {
    let image = swarm_busybox_image();
    let (swarm_host, swarm_address) = swarm_engine();
    // An image only the Docker engine has: on the Swarm, its tasks are rejected.
    let local_only = "windflow-test/busybox:docker-only";
    assert!(Command::new("docker").args(["tag", &image, local_only]).status().expect("docker tag").success());

    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let docker_agent = cp.start_agent(dir.path(), "docker").await;
    let docker = docker_agent.id();
    let swarm_agent = cp.start_agent_with(dir.path(), "manager", &[("DOCKER_HOST", &swarm_host)]).await;
    let swarm = swarm_agent.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while cp.target(&swarm).await["kind"] != "swarm" {
        assert!(Instant::now() < deadline, "the manager never showed as a swarm target");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();

    // A web stack on Docker moves to the Swarm, answering before and after; the source goes.
    let port = free_tcp_port();
    let name = format!("moving-{suffix}");
    let (_, source) = running_stack(&mut cp, &name, &web(&image, port, "moved along"), &docker).await;
    assert!(answers("127.0.0.1", port, Duration::from_secs(20)).await.contains("moved along"));
    let (status, migration) =
        cp.api(Method::POST, &format!("/deployments/{source}/migrate/{swarm}?remove_source=true"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{migration}");
    let (status, again) = cp.api(Method::POST, &format!("/deployments/{source}/migrate/{swarm}"), None).await;
    assert_eq!((status, again["error"]["code"].clone()), (StatusCode::CONFLICT, json!("conflict")), "one at a time");
    let id = migration["id"].as_str().expect("id").to_owned();
    let destination = migration["destination_id"].as_str().expect("destination").to_owned();
    let over = migration_over(&mut cp, &id).await;
    assert_eq!(over["step"], "done", "{over:#}\n{:#?}", messages(&mut cp, &destination).await);
    assert!(answers(&swarm_address, port, Duration::from_secs(20)).await.contains("moved along"));
    let (_, moved) = cp.api(Method::GET, &format!("/deployments/{destination}"), None).await;
    assert_eq!((moved["platform"].as_str(), moved["state"].as_str()), (Some("swarm"), Some("running")));
    wait_state(&mut cp, &source, "removed").await;
    assert_eq!(docker_objects(&name), Vec::<String>::new(), "nothing of the source is left on Docker");
    let told = messages(&mut cp, &source).await;
    for step in ["asked to migrate", "the destination runs; removing the source", "migration: done"] {
        assert!(told.iter().any(|m| m.contains(step)), "{step} missing from {told:#?}");
    }

    // A stack that cannot start on the Swarm: the destination fails, is removed, and the source
    // keeps serving as if nothing happened.
    let port = free_tcp_port();
    let name = format!("staying-{suffix}");
    let (_, source) = running_stack(&mut cp, &name, &web(local_only, port, "still here"), &docker).await;
    let (status, migration) =
        cp.api(Method::POST, &format!("/deployments/{source}/migrate/{swarm}?remove_source=true"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{migration}");
    let id = migration["id"].as_str().expect("id").to_owned();
    let destination = migration["destination_id"].as_str().expect("destination").to_owned();
    let over = migration_over(&mut cp, &id).await;
    assert_eq!(over["step"], "failed", "{over:#}");
    assert!(over["reason"].as_str().is_some_and(|r| r.contains("No such image")), "{over:#}");
    wait_state(&mut cp, &destination, "removed").await;
    assert_eq!(swarm_objects(&name), Vec::<String>::new(), "the destination is clean");
    let (_, kept) = cp.api(Method::GET, &format!("/deployments/{source}"), None).await;
    assert_eq!(kept["state"], "running");
    assert!(answers("127.0.0.1", port, Duration::from_secs(5)).await.contains("still here"));

    // What cannot run on the destination is refused before anything is made.
    // (Swarm publishes on every address of a node; it cannot bind one.)
    let bound = format!(
        "services:\n  web:\n    image: {image}\n    command: [\"httpd\", \"-f\", \"-p\", \"80\"]\n    ports: [\"127.0.0.1:{}:80\"]\n",
        free_tcp_port()
    );
    let (_, bound) = running_stack(&mut cp, &format!("bound-{suffix}"), &bound, &docker).await;
    let (status, refused) = cp.api(Method::POST, &format!("/deployments/{bound}/migrate/{swarm}"), None).await;
    assert_eq!(
        (status, refused["error"]["code"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("incompatible_stack"))
    );
    assert_eq!(refused["error"]["details"]["findings"][0]["path"], "services.web.ports[0]", "{refused}");

    // Nothing is left running on either engine.
    let (_, all) = cp.api(Method::GET, "/deployments?state=running", None).await;
    for deployment in all["items"].as_array().expect("items") {
        let id = deployment["id"].as_str().expect("id");
        cp.api(Method::DELETE, &format!("/deployments/{id}"), None).await;
        wait_state(&mut cp, id, "removed").await;
    }
    drop((docker_agent, swarm_agent));
}

#[tokio::test(flavor = "multi_thread")]
async fn stacks_move_from_docker_and_from_swarm_to_kubernetes_and_a_failed_move_is_undone() {
    let image = swarm_busybox_image();
    let (swarm_host, _) = swarm_engine();
    // On Docker this image runs; the cluster never pulls an image named `unpullable`.
    let unpullable = "windflow-test/unpullable:1";
    assert!(Command::new("docker").args(["tag", &image, unpullable]).status().expect("docker tag").success());

    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = windflow_tests::fake_kube::FakeCluster::start(dir.path()).await;
    let mut cp = ControlPlane::start(dir.path()).await;
    let nowhere = dir.path().join("no-kubeconfig");
    let nowhere = nowhere.to_str().expect("utf-8");
    let docker_agent = cp.start_agent_with(dir.path(), "docker", &[("KUBECONFIG", nowhere)]).await;
    let docker = docker_agent.id();
    let kubeconfig = cluster.kubeconfig.to_str().expect("utf-8").to_owned();
    let cluster_agent = cp.start_agent_with(dir.path(), "cluster", &[("KUBECONFIG", &kubeconfig)]).await;
    let kube = cluster_agent.id();
    let swarm_agent =
        cp.start_agent_with(dir.path(), "manager", &[("DOCKER_HOST", &swarm_host), ("KUBECONFIG", nowhere)]).await;
    let swarm = swarm_agent.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let offers = cp.target(&kube).await["capabilities"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["platform"] == "kubernetes" && c["available"] == true));
        if offers && cp.target(&swarm).await["kind"] == "swarm" {
            break;
        }
        assert!(Instant::now() < deadline, "the targets never reported their platforms");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();

    // Docker → Kubernetes: the stack runs on the cluster, the source is removed.
    let port = free_tcp_port();
    let name = format!("to-kube-{suffix}");
    let (_, source) = running_stack(&mut cp, &name, &web(&image, port, "off to the cluster"), &docker).await;
    assert!(answers("127.0.0.1", port, Duration::from_secs(20)).await.contains("off to the cluster"));
    let path = format!("/deployments/{source}/migrate/{kube}?platform=kubernetes&remove_source=true");
    let (status, migration) = cp.api(Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{migration}");
    let destination = migration["destination_id"].as_str().expect("destination").to_owned();
    let over = migration_over(&mut cp, migration["id"].as_str().expect("id")).await;
    assert_eq!(over["step"], "done", "{over:#}\n{:#?}", messages(&mut cp, &destination).await);
    let (_, moved) = cp.api(Method::GET, &format!("/deployments/{destination}"), None).await;
    assert_eq!((moved["platform"].as_str(), moved["state"].as_str()), (Some("kubernetes"), Some("running")));
    assert!(cluster.object("deployments", &name, "web").is_some(), "the stack's Deployment is on the cluster");
    wait_state(&mut cp, &source, "removed").await;
    assert_eq!(docker_objects(&name), Vec::<String>::new(), "nothing of the source is left on Docker");

    // Swarm → Kubernetes.
    let name = format!("swarm-to-kube-{suffix}");
    let compose = format!("services:\n  worker:\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n");
    let (_, source) = running_stack(&mut cp, &name, &compose, &swarm).await;
    let path = format!("/deployments/{source}/migrate/{kube}?platform=kubernetes&remove_source=true");
    let (status, migration) = cp.api(Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{migration}");
    let over = migration_over(&mut cp, migration["id"].as_str().expect("id")).await;
    assert_eq!(over["step"], "done", "{over:#}");
    assert!(cluster.object("deployments", &name, "worker").is_some());
    wait_state(&mut cp, &source, "removed").await;
    assert_eq!(swarm_objects(&name), Vec::<String>::new(), "nothing of the source is left on the Swarm");

    // An image the cluster cannot pull: the destination fails and is removed, the source stays.
    let port = free_tcp_port();
    let name = format!("stays-{suffix}");
    let (_, source) = running_stack(&mut cp, &name, &web(unpullable, port, "still on docker"), &docker).await;
    let path = format!("/deployments/{source}/migrate/{kube}?platform=kubernetes&remove_source=true");
    let (status, migration) = cp.api(Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{migration}");
    let destination = migration["destination_id"].as_str().expect("destination").to_owned();
    let over = migration_over(&mut cp, migration["id"].as_str().expect("id")).await;
    assert_eq!(over["step"], "failed", "{over:#}");
    assert!(
        over["reason"].as_str().is_some_and(|r| r.contains("ErrImagePull") || r.contains("ImagePullBackOff")),
        "{over:#}"
    );
    wait_state(&mut cp, &destination, "removed").await;
    for kind in ["deployments", "services", "pods"] {
        assert_eq!(cluster.objects(kind, Some(&name)), Vec::<Value>::new(), "{kind} left on the cluster");
    }
    let (_, kept) = cp.api(Method::GET, &format!("/deployments/{source}"), None).await;
    assert_eq!(kept["state"], "running");
    assert!(answers("127.0.0.1", port, Duration::from_secs(5)).await.contains("still on docker"));

    // Bind mounts cannot move onto a cluster: refused with the path, before anything is made.
    let bound = format!(
        "services:\n  web:\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n    volumes: [\"/tmp:/data\"]\n"
    );
    let (_, bound) = running_stack(&mut cp, &format!("bound-{suffix}"), &bound, &docker).await;
    let path = format!("/deployments/{bound}/migrate/{kube}?platform=kubernetes");
    let (status, refused) = cp.api(Method::POST, &path, None).await;
    assert_eq!(
        (status, refused["error"]["code"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("incompatible_stack"))
    );
    assert_eq!(refused["error"]["details"]["findings"][0]["path"], "services.web.volumes[0]", "{refused}");

    let (_, all) = cp.api(Method::GET, "/deployments?state=running", None).await;
    for deployment in all["items"].as_array().expect("items") {
        let id = deployment["id"].as_str().expect("id");
        cp.api(Method::DELETE, &format!("/deployments/{id}"), None).await;
        wait_state(&mut cp, id, "removed").await;
    }
    drop((docker_agent, cluster_agent, swarm_agent));
}
