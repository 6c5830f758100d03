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
    let kubernetes = cp.capability(&target_id, "kubernetes").await;
    let target = cp.target(&target_id).await;
    assert_eq!(target["kind"], "docker", "{target:#}");
    assert_eq!(cp.capability(&target_id, "docker").await["available"], true, "{target:#}");
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

fn app(worker_image: &str, worker_command: &str) -> String {
    format!(
        r#"
services:
  web:
    image: busybox:1.36
    command: ["httpd", "-f", "-p", "80"]
    ports: ["8080:80"]
    volumes: [site:/www]
    secrets: [token]
    healthcheck: {{ test: ["CMD", "true"], interval: 1s }}
  worker:
    image: {worker_image}
    command: ["sh", "-c", "{worker_command}"]
    deploy: {{ replicas: 2 }}
volumes:
  site: {{}}
secrets:
  token: {{ environment: TOKEN }}
"#
    )
}

fn names(objects: &[Value]) -> Vec<String> {
    let mut names: Vec<String> =
        objects.iter().map(|o| o["metadata"]["name"].as_str().unwrap_or_default().to_owned()).collect();
    names.sort();
    names
}

/// The worker pods' images, once only the given number of them is left.
async fn worker_pods(cluster: &fake_kube::FakeCluster, namespace: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pods: Vec<Value> = cluster
            .objects("pods", Some(namespace))
            .into_iter()
            .filter(|p| p["metadata"]["labels"]["io.windflow.service"] == "worker")
            .collect();
        if pods.len() == count {
            return pods;
        }
        assert!(Instant::now() < deadline, "expected {count} worker pods: {:?}", names(&pods));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stack_is_applied_to_a_cluster_rolled_out_scaled_repaired_and_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = fake_kube::FakeCluster::start(dir.path()).await;
    let mut cp = ControlPlane::start(dir.path()).await;
    let kubeconfig = cluster.kubeconfig.to_str().expect("utf-8").to_owned();
    let agent = cp.start_agent_with(dir.path(), "cluster", &[("KUBECONFIG", &kubeconfig)]).await;
    let target = agent.id();
    let kubernetes = cp.capability(&target, "kubernetes").await;
    let detail = kubernetes["detail"].as_str().unwrap_or_default();
    assert_eq!(kubernetes["available"], true, "{detail}");
    assert!(detail.contains("v1.33.0-windflow-fake") && detail.contains(&cluster.url), "{detail}");

    // Deploy: server-side apply of every object, then the rollout is watched to the end.
    let id = create_stack(&mut cp, "shop", &app("busybox:1.36", "while true; do echo tick; sleep 1; done")).await;
    let (status, accepted) =
        cp.api(Method::POST, &format!("/stacks/{id}/deploy/{target}?platform=kubernetes"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["platform"], "kubernetes");
    let deployment_id = accepted["id"].as_str().expect("id").to_owned();
    let deployment = cp.settled(&accepted).await;
    assert_eq!(deployment["state"], "running", "{:#?}", cp.messages(&deployment_id).await);
    assert_eq!((running(&deployment, "web"), running(&deployment, "worker")), (1, 2), "{deployment:#}");
    let log = cp.messages(&deployment_id).await;
    assert!(log.iter().any(|m| m.starts_with("rollout: ") && m.contains("worker 2/2 ready")), "{log:#?}");

    let namespace = cluster.object("namespaces", "", "shop").expect("the stack's namespace");
    assert_eq!(namespace["metadata"]["labels"]["io.windflow.managed"], "true");
    assert_eq!(names(&cluster.objects("statefulsets", Some("shop"))), ["web"]);
    assert_eq!(names(&cluster.objects("deployments", Some("shop"))), ["worker"]);
    assert_eq!(names(&cluster.objects("services", Some("shop"))), ["web", "web-published"]);
    assert_eq!(names(&cluster.objects("persistentvolumeclaims", Some("shop"))), ["site-web-0"]);
    let secret = cluster.object("secrets", "shop", "token").expect("secret");
    assert_eq!(secret["data"]["token"], base64_of("s3cr3t-value"));
    assert_eq!(secret["metadata"]["managedFields"][0]["manager"], "windflow");
    let applies: Vec<String> = cluster.requests().into_iter().filter(|r| r.starts_with("PATCH ")).collect();
    assert!(
        applies.iter().all(|r| r.contains("fieldManager=windflow") && r.contains("force=true")),
        "every write is a server-side apply: {applies:#?}"
    );
    assert!(cluster.requests().iter().any(|r| r.contains("watch=true")), "the rollout is watched");
    // Least privilege: the driver asks for nothing the in-cluster role does not grant.
    let granted = required_access();
    for needed in cluster.access() {
        assert!(granted.contains(&needed), "{needed:?} is not in REQUIRED_ACCESS");
    }

    // Pod logs, as for containers.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, tail) =
            cp.api(Method::GET, &format!("/deployments/{deployment_id}/logs?service=worker&tail=1"), None).await;
        let lines = tail["items"].as_array().cloned().unwrap_or_default();
        if lines.len() == 2 && lines.iter().all(|l| l["line"] == "ready" && l["service"] == "worker") {
            break;
        }
        assert!(Instant::now() < deadline, "worker logs: {tail:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Scaling changes the controller's replicas; the scale outlives an update.
    let body = json!({"service": "worker", "replicas": 3});
    let (status, accepted) = cp.api(Method::POST, &format!("/deployments/{deployment_id}/scale"), Some(body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let deployment = cp.settled(&accepted).await;
    assert_eq!((deployment["state"].as_str(), running(&deployment, "worker")), (Some("running"), 3), "{deployment:#}");
    let updated = app("busybox:1.36", "while true; do echo tock; sleep 1; done");
    let (status, _) = cp.api(Method::PUT, &format!("/stacks/{id}"), Some(json!({"compose": updated}))).await;
    assert_eq!(status, StatusCode::OK);
    let (_, accepted) = cp.api(Method::POST, &format!("/stacks/{id}/deploy/{target}"), None).await;
    let deployment = cp.settled(&accepted).await;
    assert_eq!(deployment["state"], "running", "{:#?}", cp.messages(&deployment_id).await);
    let pods = worker_pods(&cluster, "shop", 3).await;
    assert!(pods.iter().all(|p| p["spec"]["containers"][0]["args"][2].as_str().is_some_and(|a| a.contains("tock"))));

    // An image that never pulls fails the deploy with the cluster's reason, and the previous
    // version is applied again.
    let broken = app("unpullable/busybox:1", "true");
    let (status, _) = cp.api(Method::PUT, &format!("/stacks/{id}"), Some(json!({"compose": broken}))).await;
    assert_eq!(status, StatusCode::OK);
    let (_, accepted) = cp.api(Method::POST, &format!("/stacks/{id}/deploy/{target}"), None).await;
    let deployment = cp.settled(&accepted).await;
    assert_eq!(deployment["state"], "failed", "{deployment:#}");
    let log = cp.messages(&deployment_id).await;
    assert!(log.iter().any(|m| m.contains("ErrImagePull") || m.contains("ImagePullBackOff")), "{log:#?}");
    assert!(log.iter().any(|m| m.contains("rolled back: version 2 is running again")), "{log:#?}");
    let pods = worker_pods(&cluster, "shop", 3).await;
    assert!(pods.iter().all(|p| p["spec"]["containers"][0]["image"] == "busybox:1.36"), "{pods:#?}");

    // Back to a good version, then drift: a Deployment deleted by hand is applied again.
    let (_, accepted) = cp.api(Method::POST, &format!("/stacks/{id}/deploy/{target}?version=2"), None).await;
    assert_eq!(cp.settled(&accepted).await["state"], "running");
    assert!(cluster.remove("deployments", "shop", "worker"));
    let deadline = Instant::now() + Duration::from_secs(45);
    while cluster.object("deployments", "shop", "worker").is_none() {
        assert!(Instant::now() < deadline, "drift never repaired: {:#?}", cp.messages(&deployment_id).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    worker_pods(&cluster, "shop", 3).await;
    let log = cp.messages(&deployment_id).await;
    assert!(log.iter().any(|m| m.contains("drift detected: service worker is missing")), "{log:#?}");

    // Removal with the volumes leaves nothing of the stack, its namespace included.
    let (status, accepted) = cp.api(Method::DELETE, &format!("/deployments/{deployment_id}?volumes=true"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let deployment = cp.settled(&accepted).await;
    assert_eq!(deployment["state"], "removed", "{:#?}", cp.messages(&deployment_id).await);
    for kind in ["deployments", "statefulsets", "services", "secrets", "pods", "persistentvolumeclaims"] {
        assert_eq!(cluster.objects(kind, Some("shop")), Vec::<Value>::new(), "{kind} left behind");
    }
    assert!(cluster.object("namespaces", "", "shop").is_none());
    drop(agent);
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The fake cluster answers as an API server does where the driver relies on it.
#[tokio::test(flavor = "multi_thread")]
async fn the_fake_cluster_speaks_the_api_servers_protocol() {
    use futures_util::StreamExt;
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
    use kube::api::{Api, ListParams, Patch, PatchParams, WatchEvent, WatchParams};

    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = fake_kube::FakeCluster::start(dir.path()).await;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&cluster.kubeconfig).expect("kubeconfig"),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("config");
    let client = kube::Client::try_from(config).expect("client");
    let apply = PatchParams::apply("windflow").force();

    // A namespaced object needs its namespace: the API's own NotFound Status says which.
    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), "shop");
    let map: ConfigMap = serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "site"}, "data": {"a": "1"}}))
    .expect("config map");
    let Err(kube::Error::Api(status)) = configs.patch("site", &apply, &Patch::Apply(&map)).await else {
        panic!("applying into a missing namespace must fail")
    };
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(status.message, "namespaces \"shop\" not found");

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace =
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))
            .expect("namespace");
    namespaces.patch("shop", &apply, &Patch::Apply(&namespace)).await.expect("namespace applied");
    let first = configs.patch("site", &apply, &Patch::Apply(&map)).await.expect("applied");
    let again = configs.patch("site", &apply, &Patch::Apply(&map)).await.expect("applied again");
    assert_eq!(first.metadata.resource_version, again.metadata.resource_version, "a no-op apply changes nothing");

    // Server-owned fields survive an apply that does not mention them; a new spec is a new generation.
    let services: Api<Service> = Api::namespaced(client.clone(), "shop");
    let service = |port: i32| -> Service {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"ports": [{"port": port}]}}))
        .expect("service")
    };
    let created = services.patch("web", &apply, &Patch::Apply(&service(80))).await.expect("created");
    let cluster_ip = created.spec.as_ref().and_then(|s| s.cluster_ip.clone()).expect("an address is allocated");
    let changed = services.patch("web", &apply, &Patch::Apply(&service(81))).await.expect("changed");
    assert_eq!(changed.spec.as_ref().and_then(|s| s.cluster_ip.clone()), Some(cluster_ip));
    assert_eq!((created.metadata.generation, changed.metadata.generation), (Some(1), Some(2)));

    // Watching from a resource version replays what happened since, in order.
    let from = created.metadata.resource_version.clone().expect("resource version");
    let stream = services.watch(&WatchParams::default().timeout(2), &from).await.expect("watch");
    let events: Vec<_> = stream.take(1).collect().await;
    match events.first() {
        Some(Ok(WatchEvent::Modified(service))) => assert_eq!(service.metadata.generation, Some(2)),
        other => panic!("expected the modification, got {other:?}"),
    }

    // Names the API refuses come back as 422 Invalid with the field; selectors select.
    let bad: ConfigMap =
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name"}}))
            .expect("config map");
    let Err(kube::Error::Api(status)) = configs.patch("Bad_Name", &apply, &Patch::Apply(&bad)).await else {
        panic!("an invalid name must be refused")
    };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(status.message.contains("metadata.name: Invalid value: \"Bad_Name\""), "{}", status.message);
    let none = configs.list(&ListParams::default().labels("app=nothing")).await.expect("list");
    assert!(none.items.is_empty());

    // Deleting twice: the second is the API's NotFound.
    services.delete("web", &Default::default()).await.expect("deleted");
    let Err(kube::Error::Api(status)) = services.delete("web", &Default::default()).await else {
        panic!("a second delete must fail")
    };
    assert_eq!((status.code, status.message.as_str()), (404, "services \"web\" not found"));
}

/// The same driver against a real cluster, when one is configured (`KUBECONFIG`). The cluster
/// must be able to pull `busybox:1.36`.
#[tokio::test(flavor = "multi_thread")]
async fn a_stack_runs_on_a_real_cluster_when_kubeconfig_is_set() {
    let Some(kubeconfig) = std::env::var_os("KUBECONFIG") else {
        eprintln!("skipped: set KUBECONFIG to run against a real cluster");
        return;
    };
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let agent = cp.start_agent_with(dir.path(), "real-cluster", &[("KUBECONFIG", &kubeconfig)]).await;
    let target = agent.id();
    let name = format!("wf-real-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let compose = "services:\n  worker:\n    image: busybox:1.36\n    command: [\"sh\", \"-c\", \"while true; do echo tick; sleep 1; done\"]\n    deploy: { replicas: 2 }\n";
    let id = create_stack(&mut cp, &name, compose).await;
    let kubernetes = cp.capability(&target, "kubernetes").await;
    assert_eq!(kubernetes["available"], true, "{kubernetes}");
    let (status, accepted) =
        cp.api(Method::POST, &format!("/stacks/{id}/deploy/{target}?platform=kubernetes"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let deployment_id = accepted["id"].as_str().expect("id").to_owned();
    let deployment = cp.settled(&accepted).await;
    assert_eq!(deployment["state"], "running", "{:#?}", cp.messages(&deployment_id).await);
    assert_eq!(running(&deployment, "worker"), 2, "{deployment:#}");
    let (status, accepted) = cp.api(Method::DELETE, &format!("/deployments/{deployment_id}?volumes=true"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(cp.settled(&accepted).await["state"], "removed");
}

fn required_access() -> std::collections::BTreeSet<(String, String, String)> {
    windflow_agent::driver::kubernetes::REQUIRED_ACCESS
        .iter()
        .flat_map(|(group, resource, verbs)| {
            verbs.iter().map(|v| ((*group).to_owned(), (*resource).to_owned(), (*v).to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_manifests_grant_the_agent_exactly_what_its_driver_needs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let body = json!({"uses": 1, "ttl_seconds": 600});
    let (status, created) = cp.api(Method::POST, "/targets/join-tokens", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let command = created["kubernetes_command"].as_str().expect("a cluster one-liner");
    let token = created["token"].as_str().expect("token");
    assert!(command.contains("--pinnedpubkey") && command.contains("/kubernetes/agent.yaml"), "{command}");
    assert!(command.ends_with(&format!("sed 's/@@JOIN_TOKEN@@/{token}/' | kubectl apply -f -")), "{command}");

    let manifest =
        cp.http().get(cp.url("/kubernetes/agent.yaml")).send().await.expect("manifest").text().await.expect("text");
    assert!(!manifest.contains(token), "the token never travels in the manifest");
    let documents: Vec<Value> =
        manifest.split("\n---\n").map(|d| serde_yaml::from_str(d).unwrap_or_else(|e| panic!("{e} in\n{d}"))).collect();
    let kinds: Vec<&str> = documents.iter().map(|d| d["kind"].as_str().unwrap_or_default()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Secret",
            "PersistentVolumeClaim",
            "Deployment"
        ]
    );
    let role = &documents[2];
    let granted: std::collections::BTreeSet<(String, String, String)> = role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .flat_map(|rule| {
            let strings = |key: &str| -> Vec<String> {
                rule[key].as_array().expect("list").iter().map(|v| v.as_str().expect("string").to_owned()).collect()
            };
            let (groups, resources, verbs) = (strings("apiGroups"), strings("resources"), strings("verbs"));
            let mut all = Vec::new();
            for g in &groups {
                for r in &resources {
                    for v in &verbs {
                        all.push((g.clone(), r.clone(), v.clone()));
                    }
                }
            }
            all
        })
        .collect();
    assert_eq!(granted, required_access(), "the role grants exactly what the driver needs");

    let ca = cp.http().get(cp.url("/ca.pem")).send().await.expect("ca").text().await.expect("text");
    assert_eq!(
        documents[4]["data"]["ca.pem"].as_str().map(str::trim),
        Some(ca.trim()),
        "the CA is the control plane's"
    );
    assert_eq!(documents[5]["stringData"]["token"], "@@JOIN_TOKEN@@");
    let pod = &documents[7]["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "windflow-agent");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["image"], format!("windflow/agent:{}", env!("CARGO_PKG_VERSION")));
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let env = container["env"].as_array().expect("env");
    let server = env.iter().find(|e| e["name"] == "WINDFLOW_SERVER").expect("server");
    assert_eq!(server["value"].as_str(), Some(cp.url("").trim_end_matches('/')));
}

/// What the in-cluster Deployment does: `run` with a server, its CA and a join token enrols
/// first, then connects; started again, it keeps its identity.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_given_a_server_and_a_token_enrols_itself_on_first_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let (_, created) = cp.api(Method::POST, "/targets/join-tokens", Some(json!({"uses": 1, "ttl_seconds": 600}))).await;
    let token = created["token"].as_str().expect("token").to_owned();
    let data_dir = dir.path().join("in-cluster-agent");
    let ca_file = dir.path().join("data/ca.pem");
    let server = cp.url("").trim_end_matches('/').to_owned();
    let start = || {
        let mut command = std::process::Command::new(bin("windflow-agent"));
        command
            .args(["run", "--name", "cluster-a"])
            .env("WINDFLOW_AGENT_DATA_DIR", &data_dir)
            .env("WINDFLOW_SERVER", &server)
            .env("WINDFLOW_CA_FILE", &ca_file)
            .env("WINDFLOW_JOIN_TOKEN", &token)
            .env("KUBECONFIG", dir.path().join("none"));
        Process::spawn(&mut command, dir.path().join("in-cluster-agent.log")).expect("agent")
    };
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let mut first = start();
    let mut connected = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !connected && Instant::now() < deadline {
        connected = cp.targets().await.iter().any(|t| t["name"] == "cluster-a" && t["connected"] == true);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(connected, "the agent enrolled and connected: {}", first.logs());
    first.terminate();
    // The token was for one use: a second start works only because the identity was kept.
    let second = start();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let targets = cp.targets().await;
        if targets.iter().any(|t| t["name"] == "cluster-a" && t["connected"] == true) {
            assert_eq!(targets.len(), 1, "one identity: {targets:#?}");
            break;
        }
        assert!(Instant::now() < deadline, "the agent did not come back: {}", second.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The image the in-cluster manifests run: built here from the agent binary alone, it starts
/// as an unprivileged user and can read its host's facts.
#[test]
fn the_agent_image_is_built_from_scratch_and_runs_unprivileged() {
    let tag = "windflow-test/agent:image-check";
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/agent-image");
    let built = std::process::Command::new(script).arg(bin("windflow-agent")).arg(tag).output().expect("agent-image");
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let run = |args: &[&str]| {
        let output =
            std::process::Command::new("docker").args(["run", "--rm", tag]).args(args).output().expect("docker run");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(run(&["--version"]).trim(), format!("windflow-agent {}", env!("CARGO_PKG_VERSION")));
    let facts: Value = serde_json::from_str(&run(&["facts"])).expect("facts as JSON");
    assert!(facts["cpus"].as_u64().is_some_and(|n| n >= 1), "{facts}");
    let user = std::process::Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Config.User}}", tag])
        .output()
        .expect("inspect");
    assert_eq!(String::from_utf8_lossy(&user.stdout).trim(), "65532:65532");
}

const HELM_STACK: &str = r#"
services: {}
x-helm:
  chart: nginx
  repo: https://charts.example.com/stable
  version: 18.1.0
  values:
    replicaCount: 2
    auth: { password: "${TOKEN}" }
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_helm_stack_renders_as_its_release_and_runs_only_on_kubernetes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = fake_kube::FakeCluster::start(dir.path()).await;
    let mut cp = ControlPlane::start(dir.path()).await;
    let id = create_stack(&mut cp, "charted", HELM_STACK).await;
    let (status, rendering) = cp.api(Method::GET, &format!("/stacks/{id}/render?to=kubernetes"), None).await;
    assert_eq!(status, StatusCode::OK, "{rendering}");
    let yaml = rendering["yaml"].as_str().expect("yaml");
    assert!(yaml.contains("kind: HelmRelease") && yaml.contains("replicaCount: 2"), "{yaml}");
    assert!(yaml.contains("helm upgrade --install charted nginx --namespace charted"), "{yaml}");
    let (_, on_swarm) = cp.api(Method::GET, &format!("/stacks/{id}/render?to=swarm"), None).await;
    assert_eq!(on_swarm["findings"][0]["path"], "x-helm", "{on_swarm}");
    assert_eq!(on_swarm["findings"][0]["blocking"], true);

    // A bad x-helm section is refused where it is wrong.
    let body = json!({"name": "no-chart", "compose": "services: {}\nx-helm:\n  values: []\n"});
    let (status, refused) = cp.api(Method::POST, "/stacks", Some(body)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    let paths: Vec<&str> = refused["error"]["details"]["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert_eq!(paths, ["x-helm.chart", "x-helm.values"], "{refused}");

    // On a cluster target without helm, the deploy fails saying so; on Docker it is refused.
    let kubeconfig = cluster.kubeconfig.to_str().expect("utf-8").to_owned();
    let agent = cp
        .start_agent_with(
            dir.path(),
            "cluster",
            &[("KUBECONFIG", &kubeconfig), ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")],
        )
        .await;
    let target = agent.id();
    let (status, refused) = cp.api(Method::POST, &format!("/stacks/{id}/deploy/{target}?platform=docker"), None).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("incompatible_stack"))
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let accepted = loop {
        let (status, accepted) =
            cp.api(Method::POST, &format!("/stacks/{id}/deploy/{target}?platform=kubernetes"), None).await;
        if status == StatusCode::ACCEPTED {
            break accepted;
        }
        assert!(Instant::now() < deadline, "{accepted}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let deployment = cp.settled(&accepted).await;
    assert_eq!(deployment["state"], "failed");
    assert!(deployment["reason"].as_str().is_some_and(|r| r.contains("no helm CLI is installed")), "{deployment:#}");
}

/// Helm's post-renderer is the agent itself: manifests in, labelled manifests out.
#[test]
fn the_agent_labels_a_charts_manifests_as_helms_post_renderer() {
    use std::io::Write;
    let deployment = uuid::Uuid::new_v4();
    let mut child = std::process::Command::new(bin("windflow-agent"))
        .args(["helm-post-render", "--project=shop", &format!("--deployment={deployment}")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("agent");
    let manifest = "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec:\n  template:\n    metadata: {labels: {app: db}}\n";
    child.stdin.take().expect("stdin").write_all(manifest.as_bytes()).expect("write");
    let output = child.wait_with_output().expect("output");
    assert!(output.status.success());
    let labelled: Value = serde_yaml::from_slice(&output.stdout).expect("YAML");
    assert_eq!(labelled["spec"]["template"]["metadata"]["labels"]["io.windflow.deployment"], deployment.to_string());
    assert_eq!(labelled["metadata"]["labels"]["io.windflow.service"], "db");
}

/// A chart released for real, when this machine has both `helm` and a cluster (`KUBECONFIG`).
#[tokio::test(flavor = "multi_thread")]
async fn a_local_chart_is_released_on_a_real_cluster_when_helm_and_kubeconfig_are_there() {
    let (Some(kubeconfig), Ok(_)) =
        (std::env::var_os("KUBECONFIG"), std::process::Command::new("helm").arg("version").output())
    else {
        eprintln!("skipped: needs helm on PATH and KUBECONFIG");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let chart = dir.path().join("ticker");
    std::fs::create_dir_all(chart.join("templates")).expect("chart dir");
    std::fs::write(chart.join("Chart.yaml"), "apiVersion: v2\nname: ticker\nversion: 0.1.0\n").expect("Chart.yaml");
    std::fs::write(chart.join("values.yaml"), "replicaCount: 1\n").expect("values");
    std::fs::write(
        chart.join("templates/deployment.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: ticker}\nspec:\n  replicas: {{ .Values.replicaCount }}\n  selector: {matchLabels: {app: ticker}}\n  template:\n    metadata: {labels: {app: ticker}}\n    spec: {containers: [{name: ticker, image: \"busybox:1.36\", command: [sh, -c, \"while true; do echo tick; sleep 1; done\"]}]}\n",
    )
    .expect("template");
    let mut cp = ControlPlane::start(dir.path()).await;
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let agent = cp.start_agent_with(dir.path(), "helm-cluster", &[("KUBECONFIG", &kubeconfig)]).await;
    let compose = format!("services: {{}}\nx-helm:\n  chart: {}\n  values:\n    replicaCount: 2\n", chart.display());
    let name = format!("wf-helm-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let id = create_stack(&mut cp, &name, &compose).await;
    let target = agent.id();
    let kubernetes = cp.capability(&target, "kubernetes").await;
    assert_eq!(kubernetes["available"], true, "{kubernetes}");
    let (status, accepted) =
        cp.api(Method::POST, &format!("/stacks/{id}/deploy/{target}?platform=kubernetes"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let deployment_id = accepted["id"].as_str().expect("id").to_owned();
    let deployment = cp.settled(&accepted).await;
    assert_eq!(deployment["state"], "running", "{:#?}", cp.messages(&deployment_id).await);
    assert_eq!(running(&deployment, "ticker"), 2, "{deployment:#}");
    let (_, accepted) = cp.api(Method::DELETE, &format!("/deployments/{deployment_id}?volumes=true"), None).await;
    assert_eq!(cp.settled(&accepted).await["state"], "removed");
}
