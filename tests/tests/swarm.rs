//! Deploying stacks as Swarm services, through the API, onto an agent on a real single-node
//! Swarm (the second engine `scripts/test` starts in its own network namespace).
//!
//! Ports are published in host mode and reached at the node's address: this machine's kernel
//! has no IPVS, which Swarm's routing mesh (ingress) needs; the mesh is checked only where
//! `/proc/sys/net/ipv4/vs` exists.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windflow_tests::*;

async fn wait_for(cp: &mut ControlPlane, id: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (_, deployment) = cp.api(Method::GET, &format!("/deployments/{id}"), None).await;
        if done(&deployment) {
            return deployment;
        }
        if Instant::now() >= deadline {
            let (_, events) = cp.api(Method::GET, &format!("/deployments/{id}/events"), None).await;
            panic!("deployment never got there: {deployment:#}\nevents: {events:#}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn page(address: &str, port: u16) -> String {
    let url = format!("http://{address}:{port}/");
    for _ in 0..40 {
        if let Ok(response) = reqwest::get(&url).await
            && let Ok(text) = response.text().await
        {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{url} never answered");
}

fn stack(image: &str, port: u16, config: &str, web_command: &str) -> String {
    format!(
        r#"
services:
  web:
    image: {image}
    command: ["sh", "-c", "{web_command}"]
    ports: [{{ target: 80, published: {port}, mode: host }}]
    secrets: [greeting]
    configs: [{{ source: banner, target: /etc/banner }}]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1/"]
      interval: 1s
      timeout: 2s
      retries: 2
    deploy:
      update_config: {{ parallelism: 1, delay: 1s, failure_action: rollback, monitor: 4s, order: stop-first }}
      placement: {{ constraints: ["node.role == manager"] }}
  worker:
    image: {image}
    command: ["sh", "-c", "while true; do echo tick; sleep 1; done"]
    deploy: {{ replicas: 2 }}
secrets:
  greeting: {{ environment: GREETING }}
configs:
  banner: {{ content: "{config}" }}
"#
    )
}

const SERVE: &str =
    "mkdir -p /www && cat /run/secrets/greeting /etc/banner > /www/index.html && exec httpd -f -p 80 -h /www";

#[tokio::test(flavor = "multi_thread")]
async fn a_stack_runs_as_swarm_services_updates_rolls_back_scales_and_is_removed() {
    let image = swarm_busybox_image();
    let (docker_host, address) = swarm_engine();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let agent = cp.start_agent_with(dir.path(), "manager", &[("DOCKER_HOST", &docker_host)]).await;
    let target = agent.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while cp.target(&target).await["kind"] != "swarm" {
        assert!(Instant::now() < deadline, "the agent on a manager is a swarm target: {}", cp.target(&target).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let port = free_tcp_port();
    let name = format!("swarm-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let project = name.clone();

    // What it becomes on Swarm can be seen before anything runs, secrets left out.
    let compose = stack(&image, port, "banner v1", SERVE);
    let body = json!({"name": name, "compose": compose, "secrets": {"GREETING": "hello from swarm"}});
    let (status, created) = cp.api(Method::POST, "/stacks", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let stack_id = created["id"].as_str().expect("id").to_owned();
    let (status, rendering) = cp.api(Method::GET, &format!("/stacks/{stack_id}/render?to=swarm"), None).await;
    assert_eq!(status, StatusCode::OK, "{rendering}");
    let yaml = rendering["yaml"].as_str().expect("yaml");
    assert!(yaml.contains(&format!("{project}_web")) && yaml.contains("FailureAction: rollback"), "{yaml}");
    assert!(!yaml.contains("hello from swarm"), "secret contents are never rendered");

    // Deploy: a swarm target gets Swarm services, named and labelled as `docker stack` does.
    let (status, accepted) = cp.api(Method::POST, &format!("/stacks/{stack_id}/deploy/{target}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["platform"], "swarm");
    let id = accepted["id"].as_str().expect("id").to_owned();
    let deployment = cp.settled(&accepted).await;
    assert_eq!(deployment["state"], "running", "{:#?}", cp.messages(&id).await);
    assert_eq!((running(&deployment, "web"), running(&deployment, "worker")), (1, 2), "{deployment:#}");
    let served = page(&address, port).await;
    assert!(served.contains("hello from swarm") && served.contains("banner v1"), "{served}");
    let objects = swarm_objects(&project);
    for expected in
        [format!("service:{project}_web"), format!("service:{project}_worker"), format!("network:{project}_default")]
    {
        assert!(objects.contains(&expected), "{expected} missing from {objects:?}");
    }
    assert_eq!(objects.iter().filter(|o| o.starts_with("secret:")).count(), 1, "{objects:?}");
    let log = cp.messages(&id).await;
    assert!(log.iter().any(|m| m.contains("2 of 2 tasks running")), "progress shows tasks: {log:#?}");

    // Logs come from the service, whichever node runs its tasks.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, tail) = cp.api(Method::GET, &format!("/deployments/{id}/logs?service=worker&tail=4"), None).await;
        let lines = tail["items"].as_array().expect("items");
        if !lines.is_empty() && lines.iter().all(|l| l["line"] == "tick" && l["service"] == "worker") {
            break;
        }
        assert!(Instant::now() < deadline, "worker logs: {tail:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Scaling is a service update, remembered by the deployment.
    let (status, accepted) = cp
        .api(Method::POST, &format!("/deployments/{id}/scale"), Some(json!({"service": "worker", "replicas": 3})))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let deployment = cp.settled(&accepted).await;
    assert_eq!((deployment["state"].as_str(), running(&deployment, "worker")), (Some("running"), 3), "{deployment:#}");
    assert_eq!(deployment["scale"], json!({"worker": 3}));
    let (status, refused) = cp
        .api(Method::POST, &format!("/deployments/{id}/scale"), Some(json!({"service": "nope", "replicas": 1})))
        .await;
    assert_eq!((status, refused["error"]["field"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("service")));

    // A rolling update: a new config content is a new config object; the old one goes.
    let v2 = stack(&image, port, "banner v2", SERVE);
    let (status, _) = cp.api(Method::PUT, &format!("/stacks/{stack_id}"), Some(json!({"compose": v2}))).await;
    assert_eq!(status, StatusCode::OK);
    let (_, accepted) = cp.api(Method::POST, &format!("/stacks/{stack_id}/deploy/{target}"), None).await;
    let deployment = cp.settled(&accepted).await;
    assert_eq!(deployment["state"], "running", "{:#?}", cp.messages(&id).await);
    assert!(page(&address, port).await.contains("banner v2"));
    assert_eq!(running(&deployment, "worker"), 3, "the scale outlives an update");
    let configs: Vec<String> = swarm_objects(&project).into_iter().filter(|o| o.starts_with("config:")).collect();
    assert_eq!(configs.len(), 1, "{configs:?}");

    // A broken update: the new web never becomes healthy, Swarm rolls it back by itself, and the
    // deployment fails with Swarm's reason while version 2 keeps serving.
    let broken = stack(&image, port, "banner v3", "echo broken; exec sleep 3600");
    let (status, _) = cp.api(Method::PUT, &format!("/stacks/{stack_id}"), Some(json!({"compose": broken}))).await;
    assert_eq!(status, StatusCode::OK);
    let (_, accepted) = cp.api(Method::POST, &format!("/stacks/{stack_id}/deploy/{target}"), None).await;
    let deployment = wait_for(&mut cp, &id, Duration::from_secs(180), |d| {
        d["state"] == "failed" && d["reason"].as_str().is_some_and(|r| r.contains("rolled it back"))
    })
    .await;
    let _ = cp.settled(&accepted).await;
    assert!(page(&address, port).await.contains("banner v2"), "version 2 still serves");
    let log = cp.messages(&id).await;
    assert!(log.iter().any(|m| m.contains("rolled back: version 2 is running again")), "{log:#?}\n{deployment:#}");

    // A stack Swarm cannot run is refused before anything is applied.
    let privileged = format!("services:\n  admin:\n    image: {image}\n    privileged: true\n");
    let body = json!({"name": format!("{name}-priv"), "compose": privileged});
    let (_, other) = cp.api(Method::POST, "/stacks", Some(body)).await;
    let other_id = other["id"].as_str().expect("id");
    let (status, refused) = cp.api(Method::POST, &format!("/stacks/{other_id}/deploy/{target}"), None).await;
    assert_eq!(
        (status, refused["error"]["code"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("incompatible_stack"))
    );
    assert_eq!(refused["error"]["details"]["findings"][0]["path"], "services.admin.privileged", "{refused}");

    // Removal leaves nothing of the stack on the Swarm.
    let (status, accepted) = cp.api(Method::DELETE, &format!("/deployments/{id}?volumes=true"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let deployment = cp.settled(&accepted).await;
    assert_eq!(deployment["state"], "removed", "{:#?}", cp.messages(&id).await);
    assert_eq!(swarm_objects(&project), Vec::<String>::new());
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_routing_mesh_publishes_on_every_node_where_the_kernel_has_ipvs() {
    if !std::path::Path::new("/proc/sys/net/ipv4/vs").exists() {
        eprintln!("skipped: this kernel has no IPVS, which Swarm's routing mesh needs");
        return;
    }
    let image = swarm_busybox_image();
    let (docker_host, address) = swarm_engine();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let agent = cp.start_agent_with(dir.path(), "manager", &[("DOCKER_HOST", &docker_host)]).await;
    let port = free_tcp_port();
    let compose = format!(
        "services:\n  web:\n    image: {image}\n    command: [\"sh\", \"-c\", \"echo mesh > /tmp/index.html && exec httpd -f -p 80 -h /tmp\"]\n    ports: [\"{port}:80\"]\n"
    );
    let name = format!("mesh-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let (_, created) = cp.api(Method::POST, "/stacks", Some(json!({"name": name, "compose": compose}))).await;
    let path = format!("/stacks/{}/deploy/{}?platform=swarm", created["id"].as_str().expect("id"), agent.id());
    let (_, accepted) = cp.api(Method::POST, &path, None).await;
    assert_eq!(cp.settled(&accepted).await["state"], "running");
    assert!(page(&address, port).await.contains("mesh"));
    let id = accepted["id"].as_str().expect("id");
    let (_, accepted) = cp.api(Method::DELETE, &format!("/deployments/{id}"), None).await;
    assert_eq!(cp.settled(&accepted).await["state"], "removed");
}
