use windflow_protocol::stack::*;

use super::*;
use crate::fixtures::{extras, stack};

const DEPLOYMENT: Uuid = Uuid::from_u128(7);

fn shop() -> Objects {
    objects(&stack(), &extras(), "shop", DEPLOYMENT)
}

fn pod_spec(controller: &Controller) -> &PodSpec {
    let template = match controller {
        Controller::Deployment(d) => &d.spec.as_ref().expect("spec").template,
        Controller::StatefulSet(s) => &s.spec.as_ref().expect("spec").template,
        Controller::DaemonSet(d) => &d.spec.as_ref().expect("spec").template,
    };
    template.spec.as_ref().expect("pod spec")
}

#[test]
fn a_stack_gets_its_own_labelled_namespace_named_after_the_project() {
    let objects = shop();
    let namespace = objects.namespace.expect("the stack owns its namespace");
    assert_eq!(namespace.metadata.name.as_deref(), Some("shop"));
    let labels = namespace.metadata.labels.expect("labels");
    assert_eq!(labels.get(LABEL_MANAGED).map(String::as_str), Some("true"));
    assert_eq!(labels.get(LABEL_DEPLOYMENT).map(String::as_str), Some(DEPLOYMENT.to_string().as_str()));
    assert_eq!(namespace_for("my_shop"), "my-shop");
}

#[test]
fn a_given_namespace_is_used_but_never_owned() {
    let objects = objects(&stack(), &extras(), "team-a", DEPLOYMENT);
    assert!(objects.namespace.is_none(), "removing the stack must not remove a shared namespace");
    assert!(objects.controllers.iter().all(|c| match c {
        Controller::StatefulSet(s) => s.metadata.namespace.as_deref() == Some("team-a"),
        _ => false,
    }));
}

#[test]
fn a_service_keeping_its_own_named_volume_becomes_a_stateful_set_with_a_claim_template() {
    let objects = shop();
    let Controller::StatefulSet(set) = &objects.controllers[0] else { panic!("expected a StatefulSet") };
    let spec = set.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(spec.service_name.as_deref(), Some("web"));
    let claims = spec.volume_claim_templates.as_ref().expect("claim templates");
    assert_eq!(claims[0].metadata.name.as_deref(), Some("site"));
    let claim = claims[0].spec.as_ref().expect("claim spec");
    assert_eq!(claim.access_modes.as_deref(), Some(["ReadWriteOnce".to_owned()].as_slice()));
    assert!(objects.claims.is_empty(), "no standalone claim for a volume one service keeps");
    let selector = spec.selector.match_labels.as_ref().expect("selector");
    assert_eq!(selector, &selector_for_web());
}

fn selector_for_web() -> BTreeMap<String, String> {
    selector("shop", "web")
}

#[test]
fn a_volume_shared_by_services_is_one_read_write_many_claim() {
    let mut spec = stack();
    let mut worker = spec.services[0].clone();
    worker.name = "worker".into();
    worker.ports.clear();
    spec.services.push(worker);
    let objects = objects(&spec, &extras(), "shop", DEPLOYMENT);
    assert_eq!(objects.claims.len(), 1);
    let claim = &objects.claims[0];
    assert_eq!(claim.metadata.name.as_deref(), Some("site"));
    let claim_spec = claim.spec.as_ref().expect("spec");
    assert_eq!(claim_spec.access_modes.as_deref(), Some(["ReadWriteMany".to_owned()].as_slice()));
    let requests = claim_spec.resources.as_ref().and_then(|r| r.requests.as_ref()).expect("requests");
    assert_eq!(requests.get("storage"), Some(&Quantity(DEFAULT_CLAIM_SIZE.into())));
    assert!(objects.controllers.iter().all(|c| matches!(c, Controller::Deployment(_))));
    let findings = check(&spec, &extras());
    assert!(findings.iter().any(|f| f.path == "volumes.site" && f.message.contains("ReadWriteMany")));
}

#[test]
fn a_service_without_volumes_is_a_deployment_rolling_as_its_update_config_says() {
    let mut spec = stack();
    spec.services[0].mounts.retain(|m| !matches!(m.source, MountSource::Volume(_)));
    let objects = objects(&spec, &extras(), "shop", DEPLOYMENT);
    let Controller::Deployment(deployment) = &objects.controllers[0] else { panic!("expected a Deployment") };
    let spec = deployment.spec.as_ref().expect("spec");
    let rolling = spec.strategy.as_ref().and_then(|s| s.rolling_update.as_ref()).expect("rolling update");
    // start-first, one at a time: one extra pod, none taken down first.
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(1)));
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
    assert_eq!(spec.min_ready_seconds, Some(5), "Swarm's monitor period");
}

#[test]
fn global_mode_is_a_daemon_set() {
    let mut extras = extras();
    extras.services.get_mut("web").expect("web").global = true;
    let objects = objects(&stack(), &extras, "shop", DEPLOYMENT);
    assert!(matches!(objects.controllers[0], Controller::DaemonSet(_)));
    assert_eq!(objects.claims.len(), 1, "a global service's volume is a standalone claim");
}

#[test]
fn the_container_keeps_the_compose_service_settings() {
    let objects = shop();
    let pod = pod_spec(&objects.controllers[0]);
    assert_eq!(pod.enable_service_links, Some(false));
    assert_eq!(pod.termination_grace_period_seconds, Some(2), "1.5 s rounds up");
    let aliases = pod.host_aliases.as_ref().expect("host aliases");
    assert_eq!(aliases[0].ip, "10.0.0.5");
    assert_eq!(aliases[0].hostnames.as_deref(), Some(["db".to_owned()].as_slice()));
    let container = &pod.containers[0];
    assert_eq!(container.args.as_deref(), Some(["httpd".to_owned(), "-f".to_owned()].as_slice()));
    assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));
    let env = container.env.as_ref().expect("env");
    assert_eq!((env[0].name.as_str(), env[0].value.as_deref()), ("MODE", Some("prod")));
    let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref()).expect("limits");
    assert_eq!(limits.get("cpu"), Some(&Quantity("500m".into())));
    assert_eq!(limits.get("memory"), Some(&Quantity((64u64 << 20).to_string())));
    let probe = container.readiness_probe.as_ref().expect("readiness probe");
    assert_eq!(probe.exec.as_ref().and_then(|e| e.command.as_deref()), Some(["true".to_owned()].as_slice()));
    assert_eq!((probe.period_seconds, probe.failure_threshold), (Some(2), Some(3)));
    assert_eq!(container.liveness_probe, container.readiness_probe);
    let tmpfs = pod.volumes.as_ref().expect("volumes").iter().find_map(|v| v.empty_dir.as_ref()).expect("tmpfs");
    assert_eq!(tmpfs.medium.as_deref(), Some("Memory"));
    let annotations = objects.controllers.first().map(|c| match c {
        Controller::StatefulSet(s) => s.spec.as_ref().and_then(|s| s.template.metadata.clone()),
        _ => None,
    });
    let annotations = annotations.flatten().and_then(|m| m.annotations).expect("annotations");
    assert_eq!(annotations.get("team").map(String::as_str), Some("web"), "Compose labels become annotations");
    assert_eq!(annotations.get(ANNOTATION_CONFIG_HASH), Some(&stack().services[0].config_hash()));
}

#[test]
fn shell_healthchecks_run_through_sh_and_none_disables_the_probes() {
    let mut spec = stack();
    let health = spec.services[0].healthcheck.as_mut().expect("healthcheck");
    health.test = vec!["CMD-SHELL".into(), "wget -q -O- localhost".into()];
    let shell = objects(&spec, &extras(), "shop", DEPLOYMENT);
    let probe = pod_spec(&shell.controllers[0]).containers[0].liveness_probe.clone().expect("probe");
    let command = probe.exec.and_then(|e| e.command).expect("command");
    assert_eq!(command, ["/bin/sh", "-c", "wget -q -O- localhost"]);

    spec.services[0].healthcheck.as_mut().expect("healthcheck").test = vec!["NONE".into()];
    let none = objects(&spec, &extras(), "shop", DEPLOYMENT);
    assert!(pod_spec(&none.controllers[0]).containers[0].liveness_probe.is_none());
}

#[test]
fn published_ports_get_a_load_balancer_and_container_ports_keep_the_compose_name() {
    let objects = shop();
    let [internal, published] = objects.services.as_slice() else { panic!("two services") };
    assert_eq!(internal.metadata.name.as_deref(), Some("web"));
    let internal = internal.spec.as_ref().expect("spec");
    assert_eq!(internal.type_.as_deref(), Some("ClusterIP"));
    let port = &internal.ports.as_ref().expect("ports")[0];
    assert_eq!((port.port, port.target_port.clone()), (80, Some(IntOrString::Int(80))));
    assert_eq!(internal.selector.as_ref(), Some(&selector_for_web()));

    assert_eq!(published.metadata.name.as_deref(), Some("web-published"));
    let published = published.spec.as_ref().expect("spec");
    assert_eq!(published.type_.as_deref(), Some("LoadBalancer"));
    let port = &published.ports.as_ref().expect("ports")[0];
    assert_eq!((port.port, port.target_port.clone(), port.node_port), (8080, Some(IntOrString::Int(80)), None));
}

#[test]
fn secrets_are_mounted_as_files_and_a_new_content_rolls_the_pods() {
    let objects = shop();
    let secret = &objects.secrets[0];
    assert_eq!(secret.metadata.name.as_deref(), Some("token"));
    assert_eq!(secret.data.as_ref().and_then(|d| d.get("token")), Some(&ByteString(b"hunter2".to_vec())));
    let pod = pod_spec(&objects.controllers[0]);
    let mount = pod.containers[0].volume_mounts.as_ref().expect("mounts").iter().find(|m| m.name == "secret-token");
    let mount = mount.expect("the secret is mounted");
    assert_eq!((mount.mount_path.as_str(), mount.sub_path.as_deref()), ("/run/secrets/token", Some("token")));
    let volume = pod.volumes.as_ref().expect("volumes").iter().find(|v| v.name == "secret-token").expect("volume");
    let items = volume.secret.as_ref().and_then(|s| s.items.as_ref()).expect("items");
    assert_eq!(items[0].mode, Some(0o400));

    let files_hash = |objects: &Objects| match &objects.controllers[0] {
        Controller::StatefulSet(s) => s
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref().and_then(|a| a.get(ANNOTATION_FILES_HASH).cloned())),
        _ => None,
    };
    let mut changed = extras();
    changed.secrets[0].data = b"hunter3".to_vec();
    let before = files_hash(&objects).expect("a files hash");
    assert_ne!(Some(before.clone()), files_hash(&super::objects(&stack(), &changed, "shop", DEPLOYMENT)));
    assert_eq!(Some(before), files_hash(&shop()));
}

#[test]
fn what_kubernetes_cannot_do_is_refused_with_the_path_and_the_reason() {
    let mut spec = stack();
    spec.services[0].mounts.push(MountSpec {
        source: MountSource::Bind("/srv/site".into()),
        target: "/srv".into(),
        read_only: false,
    });
    spec.services[0].user = Some("www-data".into());
    spec.services[0].ports[0].host_ip = Some("127.0.0.1".into());
    let mut odd = spec.services[0].clone();
    odd.name = "web_app".into();
    spec.services.push(odd);
    let findings = check(&spec, &extras());
    let blocking: Vec<&str> = findings.iter().filter(|f| f.blocking).map(|f| f.path.as_str()).collect();
    assert!(blocking.contains(&"services.web.volumes[2]"), "{findings:?}");
    assert!(blocking.contains(&"services.web.user"), "{findings:?}");
    assert!(blocking.contains(&"services.web.ports[0]"), "{findings:?}");
    assert!(blocking.contains(&"services.web_app"), "{findings:?}");
    let bind = findings.iter().find(|f| f.path == "services.web.volumes[2]").expect("bind finding");
    assert!(bind.message.contains("named volume"), "the reason says what to do instead: {}", bind.message);
}

#[test]
fn what_kubernetes_does_differently_is_noted_without_blocking() {
    let findings = check(&stack(), &extras());
    assert!(findings.iter().all(|f| !f.blocking), "{findings:?}");
    let paths: Vec<&str> = findings.iter().map(|f| f.path.as_str()).collect();
    assert!(paths.contains(&"services.web.restart"), "on-failure is noted: {paths:?}");
    assert!(paths.contains(&"services.web.deploy.placement.constraints"), "node.role has no label: {paths:?}");
    assert!(paths.contains(&"services.web.ports"), "{paths:?}");
    assert!(paths.contains(&"services.web.networks"), "aliases: {paths:?}");
}

#[test]
fn placement_constraints_with_a_node_label_become_a_node_selector() {
    let mut extras = extras();
    extras.services.get_mut("web").expect("web").constraints =
        vec!["node.labels.disk == ssd".into(), "node.platform.arch == x86_64".into()];
    let objects = objects(&stack(), &extras, "shop", DEPLOYMENT);
    let selector = pod_spec(&objects.controllers[0]).node_selector.clone().expect("node selector");
    assert_eq!(selector.get("disk").map(String::as_str), Some("ssd"));
    assert_eq!(selector.get("kubernetes.io/arch").map(String::as_str), Some("amd64"));
}

#[test]
fn the_rendering_is_stable_kubectl_yaml_without_secret_contents() {
    let rendered = render(&stack(), &extras(), None);
    assert_eq!(rendered, render(&stack(), &extras(), None));
    assert!(!rendered.contains("hunter2") && !rendered.contains("aHVudGVyMg"), "{rendered}");
    assert!(rendered.contains("<7 bytes, not shown>"));
    for kind in ["kind: Namespace", "kind: Secret", "kind: StatefulSet", "kind: Service"] {
        assert!(rendered.contains(kind), "{kind} missing in\n{rendered}");
    }
    assert!(rendered.contains("apiVersion: apps/v1"));
    let documents: Vec<serde_yaml::Value> =
        rendered.split("---\n").map(|d| serde_yaml::from_str(d).expect("each document parses")).collect();
    assert_eq!(documents.len(), 5);
}

#[test]
fn a_helm_stack_is_an_atomic_upgrade_install_in_the_project_namespace() {
    let chart = HelmChart {
        chart: "nginx".into(),
        repo: Some("https://charts.example.com".into()),
        version: Some("18.1.0".into()),
        values_yaml: "replicaCount: 2\n".into(),
    };
    let args = helm_upgrade_args("shop", "shop", &chart, "/tmp/values.yaml").join(" ");
    assert_eq!(
        args,
        "upgrade --install shop nginx --namespace shop --create-namespace --repo https://charts.example.com \
         --version 18.1.0 --values /tmp/values.yaml --atomic --wait --timeout 10m"
    );
    let rendered = render_helm("shop", &chart);
    assert!(rendered.contains("replicaCount: 2") && rendered.contains("command: helm upgrade --install shop nginx"));
    assert!(check_helm(windflow_protocol::Platform::Kubernetes).is_empty());
    let refused = check_helm(windflow_protocol::Platform::Swarm);
    assert!(refused[0].blocking && refused[0].path == "x-helm", "{refused:?}");
}

#[test]
fn a_charts_objects_get_windflows_labels_from_the_post_renderer() {
    let rendered = "\
---
# Source: app/templates/service.yaml
apiVersion: v1
kind: Service
metadata:
  name: app
spec:
  ports: [{port: 80}]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
  labels: {app.kubernetes.io/name: app}
spec:
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec: {containers: [{name: app, image: nginx}]}
";
    let labelled = label_manifests(rendered, "shop", DEPLOYMENT).expect("valid YAML");
    let documents: Vec<serde_yaml::Value> =
        labelled.split("---\n").map(|d| serde_yaml::from_str(d).expect("document")).collect();
    assert_eq!(documents.len(), 2, "{labelled}");
    assert_eq!(documents[0]["metadata"]["labels"][LABEL_PROJECT], "shop");
    assert!(documents[0]["metadata"]["labels"][LABEL_SERVICE].is_null(), "a Service is not a service's controller");
    let deployment = &documents[1];
    assert_eq!(deployment["metadata"]["labels"]["app.kubernetes.io/name"], "app", "the chart's labels stay");
    assert_eq!(deployment["metadata"]["labels"][LABEL_DEPLOYMENT], DEPLOYMENT.to_string().as_str());
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!((pod_labels["app"].as_str(), pod_labels[LABEL_SERVICE].as_str()), (Some("app"), Some("app")));
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"].as_mapping().map(|m| m.len()),
        Some(1),
        "selectors untouched"
    );
    assert!(label_manifests("kind: [unclosed", "shop", DEPLOYMENT).is_err());
}
