//! The stack pipeline as a specification: what a Compose file becomes, and what each kind of
//! mistake is answered with.

use super::*;
use windflow_protocol::stack::{FailureAction, UpdateOrder};

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn ok(yaml: &str) -> Parsed {
    parse(yaml, "My Stack", &vars(&[])).unwrap_or_else(|e| panic!("should parse: {e}"))
}

fn errors(yaml: &str) -> Vec<Diagnostic> {
    parse(yaml, "s", &vars(&[])).expect_err("should be refused").errors
}

const THREE_SERVICES: &str = r#"
x-common: &common
  restart: unless-stopped
services:
  worker:
    <<: *common
    image: busybox:${TAG:-1.36}
    command: sh -c 'while true; do echo "tick $$(date)"; sleep 1; done'
    depends_on:
      web: { condition: service_healthy }
    environment:
      MODE: ${MODE:?set the mode}
  web:
    image: busybox:1.36
    ports: ["8080:80", "127.0.0.1:9090:90/udp", { target: 443, published: "8443" }]
    volumes: ["site:/www:ro", "/etc/hosts:/etc/hosts-copy", "/tmp/anon"]
    depends_on:
      init: { condition: service_completed_successfully }
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://localhost/"]
      interval: 2s
      retries: 5
    deploy:
      replicas: 2
      resources: { limits: { cpus: "0.5", memory: 64M } }
  init:
    image: busybox:1.36
    volumes: [site:/www]
volumes:
  site: {}
"#;

#[test]
fn a_full_stack_becomes_a_typed_spec_in_dependency_order() {
    let parsed = parse(THREE_SERVICES, "My Stack", &vars(&[("MODE", "fast")])).expect("valid");
    let spec = parsed.spec;
    assert_eq!(spec.project, "my-stack");
    let order: Vec<&str> = spec.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(order, ["init", "web", "worker"]);

    let worker = &spec.services[2];
    assert_eq!(worker.image, "busybox:1.36");
    assert_eq!(worker.restart, RestartPolicy::UnlessStopped, "merge keys apply");
    assert_eq!(worker.environment["MODE"], "fast");
    assert_eq!(
        worker.command.as_deref(),
        Some(&["sh".to_string(), "-c".into(), "while true; do echo \"tick $(date)\"; sleep 1; done".into()][..])
    );
    assert_eq!(worker.depends_on, vec![Dependency { service: "web".into(), condition: DependencyCondition::Healthy }]);

    let web = &spec.services[1];
    assert_eq!(
        web.ports,
        vec![
            PortSpec { container_port: 80, host_port: Some(8080), host_ip: None, protocol: Protocol::Tcp },
            PortSpec {
                container_port: 90,
                host_port: Some(9090),
                host_ip: Some("127.0.0.1".into()),
                protocol: Protocol::Udp
            },
            PortSpec { container_port: 443, host_port: Some(8443), host_ip: None, protocol: Protocol::Tcp },
        ]
    );
    assert_eq!(
        web.mounts[0],
        MountSpec { source: MountSource::Volume("site".into()), target: "/www".into(), read_only: true }
    );
    assert_eq!(web.mounts[1].source, MountSource::Bind("/etc/hosts".into()));
    assert_eq!(web.mounts[2].source, MountSource::Anonymous);
    assert_eq!(web.replicas, 2);
    assert_eq!(web.resources.nano_cpus, Some(500_000_000));
    assert_eq!(web.resources.memory_bytes, Some(64_000_000));
    let check = web.healthcheck.as_ref().expect("healthcheck");
    assert_eq!((check.test[0].as_str(), check.interval_ms, check.retries), ("CMD", Some(2000), Some(5)));
    assert_eq!(spec.volumes.len(), 1);
    assert!(spec.networks.iter().any(|n| n.name == "default"), "the implicit default network");
}

#[test]
fn a_missing_required_variable_names_its_path_and_message() {
    let invalid = parse(THREE_SERVICES, "s", &vars(&[])).expect_err("MODE is required");
    assert_eq!(
        invalid.errors,
        vec![Diagnostic::at_str(
            "services.worker.environment.MODE",
            "required variable MODE is missing a value: set the mode"
        )]
    );
}

#[test]
fn invalid_yaml_gives_line_and_column() {
    let errors = errors("services:\n  web:\n    image: [unclosed\n");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].line.is_some() && errors[0].column.is_some(), "{errors:?}");
    assert_eq!(errors[0].line, Some(4));
}

#[test]
fn a_bad_port_names_the_port() {
    let errors = errors("services:\n  web:\n    image: a\n    ports: [\"80:80\", \"eighty:80\"]\n");
    assert_eq!(errors[0].path.as_deref(), Some("services.web.ports[1]"), "{errors:?}");
}

#[test]
fn a_bad_volume_names_the_volume() {
    let errors = errors("services:\n  web:\n    image: a\n    volumes: [\"relative/path\"]\n");
    assert_eq!(errors[0].path.as_deref(), Some("services.web.volumes[0]"), "{errors:?}");
}

#[test]
fn an_unknown_dependency_is_named() {
    let errors = errors("services:\n  web:\n    image: a\n    depends_on: [db]\n");
    assert_eq!(errors, vec![Diagnostic::at_str("services.web.depends_on.db", "service `db` does not exist")]);
}

#[test]
fn a_dependency_cycle_is_shown() {
    let errors = errors(
        "services:\n  a: { image: x, depends_on: [b] }\n  b: { image: x, depends_on: [c] }\n  c: { image: x, depends_on: [a] }\n",
    );
    assert_eq!(errors.len(), 1);
    assert!(errors[0].message.contains("a → b → c → a"), "{errors:?}");
}

#[test]
fn undeclared_volumes_and_networks_are_errors() {
    let errors = errors("services:\n  web:\n    image: a\n    volumes: [data:/d]\n    networks: [back]\n");
    let paths: Vec<_> = errors.iter().filter_map(|e| e.path.clone()).collect();
    assert_eq!(paths, ["services.web.volumes[0]", "services.web.networks.back"]);
}

#[test]
fn keys_windflow_does_not_apply_are_warnings() {
    let parsed = ok(
        "services:\n  web:\n    image: a\n    logging: { driver: none }\n    deploy: { placement: { constraints: [x] } }\nsecrets: {}\n",
    );
    let paths: Vec<_> = parsed.warnings.iter().filter_map(|w| w.path.clone()).collect();
    assert_eq!(paths, ["secrets", "services.web.logging", "services.web.deploy.placement"]);
}

#[test]
fn a_service_without_image_or_with_build_is_refused() {
    assert_eq!(errors("services:\n  web: { command: x }\n")[0].path.as_deref(), Some("services.web"));
    assert_eq!(errors("services:\n  web: { build: . }\n")[0].path.as_deref(), Some("services.web.build"));
}

#[test]
fn not_a_compose_file_is_refused() {
    assert!(errors("just a string")[0].message.contains("services"));
    assert!(errors("- a\n- b\n")[0].message.contains("services"));
}

#[test]
fn config_hashes_ignore_key_order_and_replicas_but_see_real_changes() {
    let a = ok("services:\n  w:\n    image: a\n    environment: { X: '1', Y: '2' }\n");
    let b = ok("services:\n  w:\n    image: a\n    deploy: { replicas: 3 }\n    environment: { Y: '2', X: '1' }\n");
    let c = ok("services:\n  w:\n    image: a\n    environment: { X: '1', Y: '3' }\n");
    assert_eq!(a.spec.services[0].config_hash(), b.spec.services[0].config_hash());
    assert_ne!(a.spec.services[0].config_hash(), c.spec.services[0].config_hash());
}

#[test]
fn shell_words_split_like_compose() {
    assert_eq!(shell_words(r#"sh -c "echo 'a b'" x\ y"#), ["sh", "-c", "echo 'a b'", "x y"]);
    assert_eq!(shell_words("  "), Vec::<String>::new());
}

const SWARM_STACK: &str = r#"
services:
  web:
    image: busybox:1.36
    ports: [{ target: 80, published: 8080, mode: host }, "9000:90"]
    secrets: [db_password, { source: tls, target: /etc/tls.pem, mode: 0400 }]
    configs: [{ source: site, target: /www/index.html }]
    deploy:
      replicas: 2
      placement: { constraints: ["node.role == manager"] }
      update_config: { parallelism: 1, delay: 2s, failure_action: rollback, monitor: 5s, max_failure_ratio: 0.25, order: start-first }
      rollback_config: { parallelism: 2 }
  agent:
    image: busybox:1.36
    deploy: { mode: global }
  plain:
    image: busybox:1.36
secrets:
  db_password: { environment: DB_PASSWORD }
  tls: { environment: TLS }
configs:
  site: { content: "<h1>hello</h1>" }
"#;

#[test]
fn swarm_keys_become_a_swarm_spec_next_to_the_stack() {
    let parsed = parse(SWARM_STACK, "s", &vars(&[("DB_PASSWORD", "hunter2"), ("TLS", "pem")])).expect("parses");
    let swarm = &parsed.swarm;
    assert_eq!(
        swarm.secrets.iter().map(|s| (s.name.as_str(), s.data.as_slice())).collect::<Vec<_>>(),
        [("db_password", b"hunter2".as_slice()), ("tls", b"pem".as_slice())]
    );
    assert_eq!(swarm.configs[0].data, b"<h1>hello</h1>");
    let web = &swarm.services["web"];
    assert_eq!(web.host_mode_ports, [80]);
    assert_eq!(web.constraints, ["node.role == manager"]);
    assert_eq!(web.secrets[0].target, "/run/secrets/db_password");
    assert_eq!((web.secrets[1].target.as_str(), web.secrets[1].mode), ("/etc/tls.pem", Some(0o400)));
    assert_eq!(web.configs[0].target, "/www/index.html");
    let update = web.update.as_ref().expect("update_config");
    assert_eq!((update.delay_ms, update.monitor_ms, update.max_failure_ratio_permille), (2000, Some(5000), 250));
    assert_eq!((update.failure_action, update.order), (FailureAction::Rollback, UpdateOrder::StartFirst));
    assert_eq!(web.rollback.as_ref().map(|r| r.parallelism), Some(2));
    assert!(swarm.services["agent"].global);
    assert!(!swarm.services.contains_key("plain"), "a service with nothing Swarm-only has no entry");
    assert_eq!(parsed.spec.services.iter().find(|s| s.name == "web").map(|s| s.replicas), Some(2));
}

#[test]
fn swarm_objects_need_a_source_the_stack_carries() {
    let yaml = "services:\n  web: { image: a }\nsecrets:\n  a: { file: ./a.txt }\n  b: { environment: MISSING }\n  c: { external: true }\nconfigs:\n  d: {}\n";
    let found: Vec<_> = errors(yaml).into_iter().map(|e| e.path.unwrap_or_default()).collect();
    assert_eq!(found, ["secrets.a.file", "secrets.b.environment", "secrets.c.external", "configs.d"]);
}

#[test]
fn bad_update_policies_name_the_field() {
    let yaml = "services:\n  web:\n    image: a\n    deploy: { update_config: { delay: soon, failure_action: explode, max_failure_ratio: 2 } }\n";
    let found: Vec<_> = errors(yaml).into_iter().map(|e| e.path.unwrap_or_default()).collect();
    assert_eq!(
        found,
        [
            "services.web.deploy.update_config.failure_action",
            "services.web.deploy.update_config.max_failure_ratio",
            "services.web.deploy.update_config.delay"
        ]
    );
}

#[test]
fn a_port_range_written_backwards_is_refused_with_its_place_not_a_panic() {
    // Found by the compose_pipeline fuzz target (control-plane/fuzz/regressions).
    let refused = errors("services:\n  web:\n    image: nginx:1\n    ports: [\"127.0.0.1:9000-9001:9080-9001/udp\"]\n");
    assert_eq!(refused[0].path.as_deref(), Some("services.web.ports[0]"));
    assert_eq!(refused[0].message, "the port range `9080-9001` ends before it starts");
    let long =
        errors("services:\n  web:\n    image: nginx:1\n    ports:\n      - {target: 80, published: \"8090-8080\"}\n");
    assert_eq!(long[0].path.as_deref(), Some("services.web.ports[0]"));
}

#[test]
fn a_duration_too_large_for_its_counter_is_refused_with_its_place_not_a_panic() {
    // Found by the compose_pipeline fuzz target (control-plane/fuzz/regressions).
    let refused = errors(
        "services:\n  web:\n    image: nginx:1\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      timeout: 1111111111111111111111111111115s\n",
    );
    assert_eq!(refused[0].path.as_deref(), Some("services.web.healthcheck.timeout"));
    assert!(refused[0].message.contains("too large"), "{:?}", refused[0]);
}

#[test]
fn helm_values_keyed_by_anything_but_names_are_refused_with_their_place_not_a_panic() {
    // Found by the compose_pipeline fuzz target (control-plane/fuzz/regressions).
    let refused =
        errors("services: {}\nx-helm:\n  chart: nginx\n  values:\n    replicas:\n      ? [a, b]\n      : 2\n");
    assert_eq!(refused[0].path.as_deref(), Some("x-helm.values.replicas"));
}
