//! Golden bytes for every message: a change of any wire encoding fails here first.
//!
//! Re-bless deliberately (after a reviewed, compatible change) with
//! `WINDFLOW_BLESS=1 cargo test -p windflow-protocol --test golden`.

use std::path::PathBuf;

use serde::Serialize;
use uuid::Uuid;
use windflow_protocol::messages::*;
use windflow_protocol::stack::{
    FailureAction, FileMount, HelmChart, RestartCondition, SwarmObject, SwarmRestartPolicy, SwarmService, SwarmSpec,
    UpdateOrder, UpdatePolicy, VmSpec, VmTemplate,
};
use windflow_protocol::{
    JobEnvelope, JobPayload, JobRejection, MAX_FRAME_LEN, Platform, StackSpec, VmAction, Workload, encode_frame,
};

fn facts() -> HostFacts {
    HostFacts {
        hostname: "node-1".into(),
        os: "Debian GNU/Linux 12 (bookworm)".into(),
        arch: "x86_64".into(),
        kernel: "6.1.0".into(),
        cpus: 4,
        memory_bytes: 8 << 30,
        docker: Some(DockerFacts {
            version: "26.1.5".into(),
            api_version: "1.45".into(),
            swarm: SwarmState::Manager { node_id: "abc".into() },
        }),
    }
}

const AGENT: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00a1);
const JOB: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00b2);

fn check<T: Serialize>(name: &str, message: &T) {
    let bytes = encode_frame(message, MAX_FRAME_LEN).expect("encodes");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{name}.hex"));
    let actual = hex::encode(&bytes);
    if std::env::var_os("WINDFLOW_BLESS").is_some() {
        std::fs::write(&path, format!("{actual}\n")).expect("write fixture");
        return;
    }
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("missing fixture {}; bless it", path.display()));
    assert_eq!(actual, expected.trim(), "wire encoding of {name} changed");
}

#[test]
fn agent_messages() {
    check(
        "agent_hello",
        &AgentMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            agent_id: AGENT,
            facts: facts(),
        }),
    );
    check("agent_heartbeat", &AgentMessage::Heartbeat { seq: 129 });
    check(
        "agent_status",
        &AgentMessage::StatusReport(StatusReport { facts: facts(), running_jobs: 2, uptime_s: 3600 }),
    );
    check(
        "agent_event",
        &AgentMessage::Event(AgentEvent {
            at_unix_ms: 1_700_000_000_000,
            kind: AgentEventKind::JobRefused { job_id: Some(JOB), reason: JobRejection::Replayed { job_id: JOB } },
        }),
    );
    check("agent_pong", &AgentMessage::Pong { nonce: 7 });
    check("agent_renew", &AgentMessage::RenewCertificate { csr_der: vec![0x30, 0x82] });
    check(
        "agent_capabilities",
        &AgentMessage::Capabilities(vec![
            Capability { platform: Platform::Docker, available: true, detail: "Docker 28.2.2".into() },
            Capability { platform: Platform::Libvirt, available: false, detail: "built without libvirt".into() },
        ]),
    );
}

#[test]
fn control_messages() {
    check(
        "control_welcome",
        &ControlMessage::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            heartbeat_interval_ms: 5000,
            server_time_unix_ms: 1_700_000_000_000,
        }),
    );
    check("control_refused", &ControlMessage::Refused(Refusal::UnsupportedVersion { supported: 1, offered: 2 }));
    check("control_heartbeat_ack", &ControlMessage::HeartbeatAck { seq: 129 });
    check("control_ping", &ControlMessage::Ping { nonce: 7 });
    check("control_cert", &ControlMessage::CertificateRenewed { cert_der: vec![0x30, 0x82] });
    check("control_renewal_refused", &ControlMessage::RenewalRefused { reason: "no".into() });
}

#[test]
fn job_stream_messages() {
    let envelope = JobEnvelope {
        job_id: JOB,
        agent_id: AGENT,
        issued_at_unix_ms: 1_700_000_000_000,
        expires_at_unix_ms: 1_700_000_060_000,
        payload: JobPayload::CollectFacts,
    };
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    check("job_request", &JobRequest::Job(envelope.sign(&key)));
    check("job_accepted", &JobEvent::Accepted { job_id: JOB });
    check("job_progress", &JobEvent::Progress { job_id: JOB, step: "pulling".into(), percent: Some(40) });
    check(
        "job_log",
        &JobEvent::Log(LogChunk {
            source: "web".into(),
            stream: LogStream::Stderr,
            timestamp_unix_ms: 1_700_000_000_000,
            data: b"hello\n".to_vec(),
        }),
    );
    check(
        "job_completed",
        &JobEvent::Completed { job_id: JOB, outcome: JobOutcome::Succeeded(JobOutput::Facts(facts())) },
    );
    check("job_failed", &JobEvent::Completed { job_id: JOB, outcome: JobOutcome::Failed { message: "boom".into() } });
    check("job_refused", &JobEvent::Refused { job_id: None, reason: JobRejection::BadSignature });
    check(
        "job_stack_status",
        &JobEvent::Completed { job_id: JOB, outcome: JobOutcome::Succeeded(JobOutput::Stack(stack_status())) },
    );
}

fn stack_status() -> StackStatus {
    StackStatus {
        deployment_id: JOB,
        project: "shop".into(),
        services: vec![ServiceStatus {
            service: "web".into(),
            containers: vec![ContainerStatus {
                name: "shop-web-1".into(),
                id: "abc".into(),
                state: ContainerState::Exited { code: 137 },
                health: Some(HealthState::Unhealthy),
                restart_count: 3,
                config_hash: "00ff".into(),
            }],
        }],
    }
}

fn stack_spec() -> StackSpec {
    use std::collections::BTreeMap;
    use windflow_protocol::stack::*;
    StackSpec {
        project: "shop".into(),
        services: vec![ServiceSpec {
            name: "web".into(),
            image: "busybox:1.36".into(),
            pull_policy: PullPolicy::Missing,
            command: Some(vec!["httpd".into(), "-f".into()]),
            entrypoint: None,
            environment: BTreeMap::from([("MODE".into(), "prod".into())]),
            ports: vec![PortSpec {
                container_port: 80,
                host_port: Some(8080),
                host_ip: Some("127.0.0.1".into()),
                protocol: Protocol::Tcp,
            }],
            mounts: vec![
                MountSpec { source: MountSource::Volume("site".into()), target: "/www".into(), read_only: true },
                MountSpec {
                    source: MountSource::Tmpfs { size_bytes: Some(1024) },
                    target: "/tmp".into(),
                    read_only: false,
                },
            ],
            networks: BTreeMap::from([("default".into(), vec!["www".into()])]),
            depends_on: vec![Dependency {
                service: "init".into(),
                condition: DependencyCondition::CompletedSuccessfully,
            }],
            healthcheck: Some(Healthcheck {
                test: vec!["CMD".into(), "true".into()],
                interval_ms: Some(1000),
                timeout_ms: None,
                retries: Some(3),
                start_period_ms: None,
            }),
            restart: RestartPolicy::OnFailure { max_retries: Some(5) },
            resources: Resources {
                nano_cpus: Some(500_000_000),
                memory_bytes: Some(64 << 20),
                memory_reservation_bytes: None,
                pids_limit: Some(100),
            },
            labels: BTreeMap::from([("team".into(), "web".into())]),
            replicas: 2,
            user: Some("1000".into()),
            working_dir: Some("/www".into()),
            hostname: None,
            extra_hosts: vec!["db:10.0.0.2".into()],
            stop_grace_period_ms: Some(1000),
            read_only: false,
            privileged: false,
            cap_add: vec![],
            cap_drop: vec!["ALL".into()],
        }],
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

fn swarm_workload() -> Workload {
    let update = UpdatePolicy {
        parallelism: 1,
        delay_ms: 5_000,
        failure_action: FailureAction::Rollback,
        monitor_ms: Some(10_000),
        max_failure_ratio_permille: 0,
        order: UpdateOrder::StartFirst,
    };
    let service = SwarmService {
        constraints: vec!["node.role == manager".into()],
        global: false,
        update: Some(update.clone()),
        rollback: Some(UpdatePolicy { failure_action: FailureAction::Pause, ..update }),
        secrets: vec![FileMount {
            source: "db".into(),
            target: "/run/secrets/db".into(),
            uid: None,
            gid: None,
            mode: Some(0o400),
        }],
        configs: vec![FileMount {
            source: "site".into(),
            target: "/etc/site.conf".into(),
            uid: Some(0),
            gid: Some(0),
            mode: None,
        }],
        host_mode_ports: vec![80],
        restart: Some(SwarmRestartPolicy {
            condition: RestartCondition::OnFailure,
            delay_ms: Some(5_000),
            max_attempts: Some(3),
            window_ms: None,
        }),
    };
    Workload::Swarm {
        spec: stack_spec(),
        swarm: SwarmSpec {
            services: [("web".to_owned(), service)].into(),
            secrets: vec![SwarmObject { name: "db".into(), data: b"s3cret".to_vec() }],
            configs: vec![SwarmObject { name: "site".into(), data: b"listen 80".to_vec() }],
        },
    }
}

#[test]
fn stack_jobs_and_status() {
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let deploy = JobEnvelope {
        job_id: JOB,
        agent_id: AGENT,
        issued_at_unix_ms: 1_700_000_000_000,
        expires_at_unix_ms: 1_700_000_060_000,
        payload: JobPayload::DeployStack { deployment_id: JOB, spec: stack_spec() },
    };
    check("job_deploy_stack", &JobRequest::Job(deploy.sign(&key)));
    let remove = JobPayload::RemoveStack { deployment_id: JOB, project: "shop".into(), remove_volumes: true };
    check("job_remove_stack", &remove);
    let logs = JobPayload::StreamLogs {
        project: "shop".into(),
        service: Some("web".into()),
        tail: Some(100),
        since_unix_s: None,
        follow: true,
    };
    check("job_stream_logs", &logs);
    check("agent_stack_status", &AgentMessage::StackStatus(stack_status()));
    check("job_deploy_workload_swarm", &JobPayload::DeployWorkload { deployment_id: JOB, workload: swarm_workload() });
    let remove = JobPayload::RemoveWorkload {
        deployment_id: JOB,
        project: "shop".into(),
        platform: Platform::Swarm,
        remove_volumes: false,
    };
    check("job_remove_workload", &remove);
    let Workload::Swarm { spec, swarm } = swarm_workload() else { unreachable!() };
    let kubernetes = Workload::Kubernetes { spec, orchestration: swarm, namespace: "shop".into() };
    check("job_deploy_workload_kubernetes", &JobPayload::DeployWorkload { deployment_id: JOB, workload: kubernetes });
    let chart = HelmChart {
        chart: "nginx".into(),
        repo: Some("https://charts.example.com".into()),
        version: Some("1.2.3".into()),
        values_yaml: "replicaCount: 2\n".into(),
    };
    let helm = Workload::Helm { project: "shop".into(), namespace: "shop".into(), chart };
    check("job_deploy_workload_helm", &JobPayload::DeployWorkload { deployment_id: JOB, workload: helm });
    let vm = VmSpec {
        name: "web".into(),
        template: VmTemplate::Debian12,
        cpus: 2,
        memory_mib: 2048,
        disk_gib: 20,
        network: "default".into(),
        ssh_authorized_keys: vec!["ssh-ed25519 AAAA admin".into()],
        packages: vec!["nginx".into()],
        run_commands: vec!["systemctl enable --now nginx".into()],
        admin_password: None,
    };
    let vms = Workload::Libvirt { project: "shop".into(), vms: vec![vm] };
    check("job_deploy_workload_libvirt", &JobPayload::DeployWorkload { deployment_id: JOB, workload: vms });
    let action = JobPayload::VmAction { project: "shop".into(), vm: "web".into(), action: VmAction::Reboot };
    check("job_vm_action", &action);
    let logs = JobPayload::StreamWorkloadLogs {
        platform: Platform::Swarm,
        project: "shop".into(),
        service: None,
        tail: Some(10),
        since_unix_s: Some(1_700_000_000),
        follow: false,
    };
    check("job_stream_workload_logs", &logs);
    // The configuration hash is part of the contract with running containers: it must not move.
    assert_eq!(stack_spec().services[0].config_hash(), include_str!("golden/config_hash.txt").trim());
}
