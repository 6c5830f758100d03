//! The stack the translations are specified with: a web service with a volume, a tmpfs, a
//! published port, a healthcheck, a secret and a rolling-update policy.

use std::collections::BTreeMap;

use windflow_protocol::stack::*;

fn web() -> ServiceSpec {
    ServiceSpec {
        name: "web".into(),
        image: "busybox:1".into(),
        pull_policy: PullPolicy::Missing,
        command: Some(vec!["httpd".into(), "-f".into()]),
        entrypoint: None,
        environment: BTreeMap::from([("MODE".into(), "prod".into())]),
        ports: vec![PortSpec { container_port: 80, host_port: Some(8080), host_ip: None, protocol: Protocol::Tcp }],
        mounts: vec![
            MountSpec { source: MountSource::Volume("site".into()), target: "/www".into(), read_only: true },
            MountSpec {
                source: MountSource::Tmpfs { size_bytes: Some(1 << 20) },
                target: "/tmp".into(),
                read_only: false,
            },
        ],
        networks: BTreeMap::from([("default".into(), vec!["www".into()])]),
        depends_on: vec![],
        healthcheck: Some(Healthcheck {
            test: vec!["CMD".into(), "true".into()],
            interval_ms: Some(2_000),
            timeout_ms: None,
            retries: Some(3),
            start_period_ms: None,
        }),
        restart: RestartPolicy::OnFailure { max_retries: Some(4) },
        resources: Resources { nano_cpus: Some(500_000_000), memory_bytes: Some(64 << 20), ..Default::default() },
        labels: BTreeMap::from([("team".into(), "web".into())]),
        replicas: 2,
        user: None,
        working_dir: None,
        hostname: None,
        extra_hosts: vec!["db:10.0.0.5".into()],
        stop_grace_period_ms: Some(1_500),
        read_only: false,
        privileged: false,
        cap_add: vec![],
        cap_drop: vec![],
    }
}

pub fn stack() -> StackSpec {
    StackSpec {
        project: "shop".into(),
        services: vec![web()],
        networks: vec![NetworkSpec {
            name: "default".into(),
            external: false,
            driver: None,
            internal: false,
            labels: BTreeMap::new(),
        }],
        volumes: vec![VolumeSpec { name: "site".into(), external: false, driver: None, labels: BTreeMap::new() }],
    }
}

pub fn extras() -> SwarmSpec {
    let update = UpdatePolicy {
        parallelism: 1,
        delay_ms: 1_000,
        failure_action: FailureAction::Rollback,
        monitor_ms: Some(5_000),
        max_failure_ratio_permille: 250,
        order: UpdateOrder::StartFirst,
    };
    SwarmSpec {
        services: BTreeMap::from([(
            "web".into(),
            SwarmService {
                constraints: vec!["node.role == manager".into()],
                global: false,
                rollback: Some(update.clone()),
                update: Some(update),
                secrets: vec![FileMount {
                    source: "token".into(),
                    target: "/run/secrets/token".into(),
                    uid: None,
                    gid: None,
                    mode: Some(0o400),
                }],
                configs: vec![],
                host_mode_ports: vec![80],
                restart: None,
            },
        )]),
        secrets: vec![SwarmObject { name: "token".into(), data: b"hunter2".to_vec() }],
        configs: vec![],
    }
}
