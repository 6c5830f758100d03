//! Every shipped template deployed onto the real Docker engine. No image registry is reachable
//! here, so each service's image is replaced by the local busybox test image — serving HTTP on
//! its first published container port, or sleeping, or (one-shot services) succeeding at once —
//! and its healthcheck by one busybox passes. Everything else is the template's own: networks,
//! named volumes, published ports, `depends_on` with its conditions, environment and secrets
//! wiring. Every service must start (one-shots must exit 0) and the published ports answer.
//! On a connected host the real, pinned images are pulled at deploy time.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use serde_yaml::Value as Yaml;
use windflow_control_plane::templates::{VariableKind, catalog};
use windflow_tests::*;

/// The template's Compose file with busybox in every service, the wiring untouched. Returns
/// the file and, for each service, the variable publishing the port it serves (if any).
fn on_busybox(compose: &str, image: &str) -> (String, Vec<(String, Option<String>)>) {
    let mut file: Yaml = serde_yaml::from_str(compose).expect("the template's Compose file is YAML");
    let mut served = Vec::new();
    let services = file.get_mut("services").and_then(Yaml::as_mapping_mut).expect("services");
    for (name, service) in services.iter_mut() {
        let name = name.as_str().expect("service name").to_owned();
        let one_shot = service.get("restart").and_then(Yaml::as_str) == Some("no");
        let first_port =
            service.get("ports").and_then(Yaml::as_sequence).and_then(|p| p.first()).and_then(Yaml::as_str);
        // `${HTTP_PORT}:80`: the variable publishing it, and the container port.
        let published =
            first_port.and_then(|p| p.strip_prefix("${")).and_then(|p| p.split_once('}')).map(|(v, _)| v.to_owned());
        let port = first_port.and_then(|p| p.rsplit(':').next()).map(|p| p.split('/').next().unwrap_or(p).to_owned());
        let command: Vec<String> = match (&port, one_shot) {
            (_, true) => vec!["true".into()],
            (Some(port), false) => {
                let script = format!(
                    "mkdir -p /tmp/www && echo {name} > /tmp/www/index.html && exec httpd -f -p {port} -h /tmp/www"
                );
                vec!["sh".into(), "-c".into(), script]
            }
            (None, false) => vec!["sleep".into(), "86400".into()],
        };
        let service = service.as_mapping_mut().expect("service");
        service.insert("image".into(), image.into());
        service.insert("command".into(), serde_yaml::to_value(command).expect("command"));
        service.remove("entrypoint");
        service.remove("user");
        service.insert("stop_grace_period".into(), "1s".into());
        // Docker refuses a CPU limit above the host's CPUs; this test host may have fewer than
        // a template asks for (its requirements say so, and a marketplace deploy checks them).
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        if let Some(limits) =
            service.get_mut("deploy").and_then(|d| d.get_mut("resources")).and_then(|r| r.get_mut("limits"))
            && let Some(asked) = limits.get("cpus").and_then(Yaml::as_str).and_then(|c| c.parse::<f64>().ok())
            && asked > cpus
        {
            limits["cpus"] = format!("{cpus:.1}").into();
        }
        if service.contains_key("healthcheck") {
            let check = json!({"test": ["CMD", "true"], "interval": "1s", "timeout": "2s", "retries": 3});
            service.insert("healthcheck".into(), serde_yaml::to_value(check).expect("healthcheck"));
        }
        served.push((name, if one_shot { None } else { published }));
    }
    (serde_yaml::to_string(&file).expect("YAML"), served)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_shipped_template_starts_on_docker_with_its_wiring() {
    let image = busybox_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let agent = cp.start_agent(dir.path(), "templates-host").await;
    let target = agent.id();
    for template in catalog::certified() {
        let slug = template.slug.clone();
        let (compose, served) = on_busybox(&template.compose, &image);
        // Free ports for every port variable; the rest of the values as the marketplace makes them.
        let mut variables = serde_json::Map::new();
        let mut secrets = serde_json::Map::new();
        for variable in &template.variables {
            let value = match (variable.kind, &variable.default) {
                (VariableKind::Port, _) => free_tcp_port().to_string(),
                (VariableKind::Password, _) => windflow_control_plane::templates::generate_password(),
                (_, Some(default)) => default.clone(),
                (VariableKind::Email, None) => "admin@example.com".into(),
                (_, None) => "example".into(),
            };
            if variable.is_secret() {
                secrets.insert(variable.name.clone(), value.into());
            } else {
                variables.insert(variable.name.clone(), value.into());
            }
        }
        let name = format!("e2e-{slug}");
        let body = json!({"name": name, "compose": compose, "variables": variables, "secrets": secrets});
        let (status, stack) = cp.api(Method::POST, "/stacks", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{slug}: {stack}");
        let stack_id = stack["id"].as_str().expect("id").to_owned();
        let (status, accepted) = cp.api(Method::POST, &format!("/stacks/{stack_id}/deploy/{target}"), None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{slug}: {accepted}");
        let deployment = cp.settled(&accepted).await;
        let id = accepted["id"].as_str().expect("id").to_owned();
        assert_eq!(deployment["state"], "running", "{slug}: {deployment:#}\n{:#?}", cp.messages(&id).await);
        for service in deployment["services"].as_array().expect("services") {
            let containers = service["containers"].as_array().expect("containers");
            let started =
                containers.iter().all(|c| c["state"] == "running" || (c["state"] == "exited" && c["exit_code"] == 0));
            assert!(!containers.is_empty() && started, "{slug}: {} did not start: {service:#}", service["name"]);
        }
        // Published ports answer with the service's name.
        for (service, variable) in &served {
            let Some(published) = variable.as_ref().and_then(|v| variables.get(v)).and_then(Value::as_str) else {
                continue;
            };
            let url = format!("http://127.0.0.1:{published}/");
            let mut answer = None;
            for _ in 0..40 {
                if let Ok(response) = reqwest::get(&url).await {
                    answer = response.text().await.ok();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(answer.as_deref().map(str::trim), Some(service.as_str()), "{slug}: {url}");
        }
        let (_, accepted) = cp.api(Method::DELETE, &format!("/deployments/{id}?volumes=true"), None).await;
        assert_eq!(cp.settled(&accepted).await["state"], "removed", "{slug}");
        assert_eq!(
            docker_objects(&windflow_control_plane::compose::project_name(&name)),
            Vec::<String>::new(),
            "{slug}"
        );
        cp.api(Method::DELETE, &format!("/stacks/{stack_id}"), None).await;
    }
    drop(agent);
}
