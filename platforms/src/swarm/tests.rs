use windflow_protocol::stack::*;

use super::*;
use crate::fixtures::{extras, stack};

#[test]
fn a_compose_service_becomes_a_swarm_service_named_and_labelled_like_docker_stack() {
    let deployment = Uuid::from_u128(7);
    let objects = objects(&stack(), &extras(), deployment, &|name| format!("id-of-{name}"));
    assert_eq!(objects.networks[0].name, "shop_default");
    assert_eq!(objects.networks[0].driver.as_deref(), Some("overlay"));
    let secret = &objects.secrets[0];
    assert!(secret.name.as_deref().is_some_and(|n| n.starts_with("shop_token_")));
    assert_eq!(secret.data.as_deref(), Some("aHVudGVyMg=="));

    let service = &objects.services[0];
    assert_eq!(service.name.as_deref(), Some("shop_web"));
    let labels = service.labels.as_ref().expect("labels");
    assert_eq!(labels.get(LABEL_NAMESPACE).map(String::as_str), Some("shop"));
    assert_eq!(labels.get(LABEL_DEPLOYMENT).map(String::as_str), Some(deployment.to_string().as_str()));
    assert_eq!(service.mode.as_ref().and_then(|m| m.replicated.as_ref()).and_then(|r| r.replicas), Some(2));

    let task = service.task_template.as_ref().expect("task");
    let container = task.container_spec.as_ref().expect("container");
    assert_eq!(container.args.as_deref(), Some(["httpd".to_owned(), "-f".to_owned()].as_slice()));
    assert_eq!(container.env.as_deref(), Some(["MODE=prod".to_owned()].as_slice()));
    assert_eq!(container.hosts.as_deref(), Some(["10.0.0.5 db".to_owned()].as_slice()), "Swarm wants /etc/hosts lines");
    assert_eq!(container.stop_grace_period, Some(1_500_000_000));
    let mounts = container.mounts.as_ref().expect("mounts");
    assert_eq!(mounts[0].source.as_deref(), Some("shop_site"));
    assert_eq!(mounts[1].tmpfs_options.as_ref().and_then(|t| t.size_bytes), Some(1 << 20));
    let secret_ref = &container.secrets.as_ref().expect("secrets")[0];
    assert_eq!(
        secret_ref.secret_id.as_deref(),
        Some(format!("id-of-{}", secret.name.as_deref().expect("name")).as_str())
    );
    assert_eq!(secret_ref.file.as_ref().and_then(|f| f.mode), Some(0o400));
    assert_eq!(
        task.networks.as_ref().expect("networks")[0].aliases.as_deref(),
        Some(["web".to_owned(), "www".to_owned()].as_slice())
    );
    assert_eq!(task.restart_policy.as_ref().and_then(|r| r.max_attempts), Some(4));
    assert_eq!(
        task.placement.as_ref().and_then(|p| p.constraints.clone()),
        Some(vec!["node.role == manager".to_owned()])
    );

    let update = service.update_config.as_ref().expect("update config");
    assert_eq!(update.failure_action, Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK));
    assert_eq!(update.max_failure_ratio, Some(0.25));
    // A rollback's own failure can only pause.
    assert_eq!(
        service.rollback_config.as_ref().and_then(|r| r.failure_action),
        Some(ServiceSpecRollbackConfigFailureActionEnum::PAUSE)
    );
    let port = &service.endpoint_spec.as_ref().and_then(|e| e.ports.clone()).expect("ports")[0];
    assert_eq!((port.published_port, port.publish_mode), (Some(8080), Some(EndpointPortConfigPublishModeEnum::HOST)));
}

#[test]
fn a_changed_secret_is_a_new_object_and_the_same_content_the_same_one() {
    assert_eq!(object_name("shop", "token", b"a"), object_name("shop", "token", b"a"));
    assert_ne!(object_name("shop", "token", b"a"), object_name("shop", "token", b"b"));
}

#[test]
fn what_swarm_cannot_do_is_refused_and_what_it_does_differently_is_noted() {
    let mut spec = stack();
    spec.services[0].privileged = true;
    spec.services[0].ports[0].host_ip = Some("127.0.0.1".into());
    spec.services[0].depends_on = vec![Dependency { service: "db".into(), condition: DependencyCondition::Healthy }];
    let mut swarm = extras();
    swarm.services.get_mut("web").expect("web").configs =
        vec![FileMount { source: "missing".into(), target: "/x".into(), uid: None, gid: None, mode: None }];
    let findings = check(&spec, &swarm);
    let blocking: Vec<&str> = findings.iter().filter(|f| f.blocking).map(|f| f.path.as_str()).collect();
    assert_eq!(blocking, ["services.web.privileged", "services.web.ports[0]", "configs.missing"]);
    assert!(findings.iter().any(|f| !f.blocking && f.path == "services.web.depends_on"));
    assert!(check(&stack(), &extras()).iter().all(|f| !f.blocking));
}

#[test]
fn the_rendering_is_stable_yaml_without_secret_contents() {
    let rendered = render(&stack(), &extras());
    assert_eq!(rendered, render(&stack(), &extras()));
    assert!(
        rendered.contains("kind: Service") && rendered.contains("kind: Network") && rendered.contains("kind: Secret")
    );
    assert!(!rendered.contains("aHVudGVyMg=="), "{rendered}");
    assert!(rendered.contains("<7 bytes, not shown>"), "{rendered}");
}
