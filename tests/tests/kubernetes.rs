//! Stacks on Kubernetes, through the API: what a stack becomes on a cluster, what is refused
//! and why, and a target's report of the platforms it can drive.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use windflow_tests::*;

const SHOP: &str = r#"
services:
  web:
    image: busybox:1.36
    command: ["httpd", "-f", "-p", "80"]
    ports: ["8080:80"]
    volumes: [site:/www]
    secrets: [token]
  db:
    image: busybox:1.36
    user: "999:999"
volumes:
  site: {}
secrets:
  token: { environment: TOKEN }
"#;

async fn create_stack(cp: &mut ControlPlane, name: &str, compose: &str) -> String {
    let body = json!({"name": name, "compose": compose, "secrets": {"TOKEN": "s3cr3t-value"}});
    let (status, created) = cp.api(Method::POST, "/stacks", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["id"].as_str().expect("id").to_owned()
}

fn kinds(yaml: &str) -> Vec<String> {
    yaml.split("---\n")
        .map(|d| serde_yaml::from_str::<Value>(d).expect("each document is YAML"))
        .map(|d| d["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stack_renders_as_kubernetes_manifests_without_its_secret_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let id = create_stack(&mut cp, "shop", SHOP).await;

    let (status, rendering) = cp.api(Method::GET, &format!("/stacks/{id}/render?to=kubernetes"), None).await;
    assert_eq!(status, StatusCode::OK, "{rendering}");
    let yaml = rendering["yaml"].as_str().expect("yaml");
    assert!(!yaml.contains("s3cr3t-value"), "secret values are never rendered:\n{yaml}");
    // The service keeping the `site` volume is a StatefulSet; the other a Deployment; the
    // published port gets a LoadBalancer next to the ClusterIP Service.
    assert_eq!(
        kinds(yaml),
        ["Namespace", "Secret", "StatefulSet", "Deployment", "Service", "Service"],
        "in the order they are applied:\n{yaml}"
    );
    assert!(yaml.contains("name: web-published") && yaml.contains("type: LoadBalancer"), "{yaml}");
    assert!(yaml.contains("runAsUser: 999"), "{yaml}");
    let findings = rendering["findings"].as_array().expect("findings");
    assert!(findings.iter().all(|f| f["blocking"] == false), "{findings:#?}");
    assert!(findings.iter().any(|f| f["path"] == "services.web.ports"), "published ports are explained: {findings:#?}");

    // The command line shows the same.
    cp.cli_login(dir.path());
    let (ok, stdout, stderr) = cp.cli(dir.path(), &["stack", "render", "shop", "--to", "kubernetes"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("kind: StatefulSet"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bind_mount_is_refused_for_kubernetes_with_its_path_and_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let compose = "services:\n  web:\n    image: busybox:1.36\n    volumes: [\"/srv/site:/www\"]\n";
    let id = create_stack(&mut cp, "bound", compose).await;
    let (status, rendering) = cp.api(Method::GET, &format!("/stacks/{id}/render?to=kubernetes"), None).await;
    assert_eq!(status, StatusCode::OK, "{rendering}");
    let finding = rendering["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["path"] == "services.web.volumes[0]")
        .cloned()
        .expect("the bind mount is a finding");
    assert_eq!(finding["blocking"], true);
    assert!(finding["message"].as_str().is_some_and(|m| m.contains("named volume")), "{finding}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_reports_what_it_can_drive_and_refuses_a_platform_it_cannot() {
    let image = busybox_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    // An agent that finds no cluster: no kubeconfig, not in a pod.
    let missing = dir.path().join("no-such-kubeconfig");
    let agent = cp.start_agent_with(dir.path(), "plain", &[("KUBECONFIG", missing.to_str().expect("utf-8"))]).await;
    let target_id = agent.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    let kubernetes = loop {
        let target = cp.target(&target_id).await;
        let capabilities = target["capabilities"].as_array().cloned().unwrap_or_default();
        if let Some(found) = capabilities.iter().find(|c| c["platform"] == "kubernetes") {
            assert_eq!(target["kind"], "docker", "{target:#}");
            let docker = capabilities.iter().find(|c| c["platform"] == "docker").expect("docker");
            assert_eq!(docker["available"], true, "{target:#}");
            break found.clone();
        }
        assert!(Instant::now() < deadline, "the agent never reported its capabilities: {target:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(kubernetes["available"], false);
    let why = kubernetes["detail"].as_str().expect("detail").to_owned();
    assert!(!why.is_empty());

    let compose = format!("services:\n  web:\n    image: {image}\n    command: [\"sleep\", \"60\"]\n");
    let id = create_stack(&mut cp, "plain", &compose).await;
    let (status, refused) =
        cp.api(Method::POST, &format!("/stacks/{id}/deploy/{target_id}?platform=kubernetes"), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["error"]["code"], "platform_unavailable");
    assert!(
        refused["error"]["message"].as_str().is_some_and(|m| m.contains(&why)),
        "the agent's reason is given: {refused}"
    );
    let (status, refused) =
        cp.api(Method::POST, &format!("/stacks/{id}/deploy/{target_id}?platform=swarm"), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(refused["error"]["message"].as_str().is_some_and(|m| m.contains("not part of a Swarm")), "{refused}");
    let (_, deployments) = cp.api(Method::GET, "/deployments", None).await;
    assert_eq!(deployments["items"].as_array().map(Vec::len), Some(0), "nothing was half-created: {deployments}");
}
