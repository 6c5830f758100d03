//! A stack as Swarm objects: overlay networks, content-addressed secrets and configs, and one
//! service per Compose service, named as `docker stack deploy` names them
//! (`<project>_<name>`) and labelled with `com.docker.stack.namespace`, so the Docker CLI sees
//! WindFlow's stacks as stacks.

use std::collections::HashMap;

use bollard_stubs::models::{
    ConfigSpec, EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum, EndpointSpec,
    HealthConfig, Limit, Mount, MountTmpfsOptions, MountType, MountVolumeOptions, NetworkAttachmentConfig,
    NetworkCreateRequest, ResourceObject, SecretSpec, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated,
    ServiceSpecRollbackConfig, ServiceSpecRollbackConfigFailureActionEnum, ServiceSpecRollbackConfigOrderEnum,
    ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum, ServiceSpecUpdateConfigOrderEnum, TaskSpec,
    TaskSpecContainerSpec, TaskSpecContainerSpecConfigs, TaskSpecContainerSpecFile, TaskSpecContainerSpecFile1,
    TaskSpecContainerSpecSecrets, TaskSpecPlacement, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use windflow_protocol::stack::{
    FailureAction, FileMount, MountSource, Protocol, RestartCondition, RestartPolicy, ServiceSpec as Service,
    StackSpec, SwarmService, SwarmSpec, UpdateOrder, UpdatePolicy,
};

use crate::{Finding, LABEL_DEPLOYMENT, LABEL_MANAGED, LABEL_PROJECT};

/// The label `docker stack` puts on a stack's objects.
pub const LABEL_NAMESPACE: &str = "com.docker.stack.namespace";
/// On a service: the Compose service's configuration hash, as Docker containers carry it.
pub const LABEL_CONFIG_HASH: &str = "io.windflow.config-hash";
/// On a service: the hash of the whole Swarm service spec WindFlow asked for, so an apply
/// updates only services whose spec changed (Swarm's own copy is filled with defaults).
pub const LABEL_SPEC_HASH: &str = "io.windflow.spec-hash";

pub fn service_name(project: &str, service: &str) -> String {
    format!("{project}_{service}")
}

pub fn network_name(spec: &StackSpec, network: &str) -> String {
    match spec.networks.iter().find(|n| n.name == network) {
        Some(n) if n.external => network.to_owned(),
        _ => format!("{}_{network}", spec.project),
    }
}

fn volume_name(spec: &StackSpec, volume: &str) -> String {
    match spec.volumes.iter().find(|v| v.name == volume) {
        Some(v) if v.external => volume.to_owned(),
        _ => format!("{}_{volume}", spec.project),
    }
}

/// A secret's or config's Swarm name: they cannot change in place, so a new content is a new
/// object, named by the start of its hash.
pub fn object_name(project: &str, name: &str, data: &[u8]) -> String {
    format!("{project}_{name}_{}", &hex::encode(Sha256::digest(data))[..10])
}

/// The labels of every object of the stack.
pub fn labels(project: &str, deployment_id: Uuid) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_NAMESPACE.to_owned(), project.to_owned()),
        (LABEL_PROJECT.to_owned(), project.to_owned()),
        (LABEL_MANAGED.to_owned(), "true".to_owned()),
        (LABEL_DEPLOYMENT.to_owned(), deployment_id.to_string()),
    ])
}

/// What Swarm cannot do of this stack (blocking), and what it does differently (notes).
pub fn check(spec: &StackSpec, swarm: &SwarmSpec) -> Vec<Finding> {
    let mut findings = Vec::new();
    for service in &spec.services {
        let at = |key: &str| format!("services.{}.{key}", service.name);
        if service.privileged {
            findings.push(Finding::blocking(at("privileged"), "Swarm services cannot run privileged containers"));
        }
        for (i, port) in service.ports.iter().enumerate() {
            if let Some(ip) = &port.host_ip {
                findings.push(Finding::blocking(
                    format!("services.{}.ports[{i}]", service.name),
                    format!("Swarm publishes ports on every address of the node; it cannot bind to {ip} alone"),
                ));
            }
            if port.host_port.is_none()
                && swarm_service(swarm, &service.name).host_mode_ports.contains(&port.container_port)
            {
                findings.push(Finding::blocking(
                    format!("services.{}.ports[{i}]", service.name),
                    "a port published in host mode needs a published port number",
                ));
            }
        }
        if !service.depends_on.is_empty() {
            findings.push(Finding::note(
                at("depends_on"),
                "Swarm starts every service at once; depends_on and its conditions are not waited for",
            ));
        }
        if service.mounts.iter().any(|m| matches!(m.source, MountSource::Bind(_))) {
            findings.push(Finding::note(at("volumes"), "bind mounts use the path on whichever node runs the task"));
        }
        if !service.extra_hosts.is_empty() && service.hostname.is_some() {
            findings.push(Finding::note(at("hostname"), "the hostname is the same for every task of the service"));
        }
        let host_mode_replicas = !swarm_service(swarm, &service.name).host_mode_ports.is_empty()
            && service.replicas > 1
            && swarm_service(swarm, &service.name).constraints.is_empty();
        if host_mode_replicas {
            findings.push(Finding::note(
                at("ports"),
                "with a host-mode port, each node runs at most one task of the service; the others wait for a free node",
            ));
        }
    }
    for name in swarm.services.keys() {
        if !spec.services.iter().any(|s| &s.name == name) {
            findings.push(Finding::blocking(format!("services.{name}"), "no such service in the stack"));
        }
    }
    for (kind, objects, mounts) in [
        ("secrets", &swarm.secrets, swarm.services.values().flat_map(|s| &s.secrets).collect::<Vec<_>>()),
        ("configs", &swarm.configs, swarm.services.values().flat_map(|s| &s.configs).collect::<Vec<_>>()),
    ] {
        for mount in mounts {
            if !objects.iter().any(|o| o.name == mount.source) {
                findings.push(Finding::blocking(format!("{kind}.{}", mount.source), format!("no such {kind} entry")));
            }
        }
    }
    findings
}

fn swarm_service<'a>(swarm: &'a SwarmSpec, name: &str) -> std::borrow::Cow<'a, SwarmService> {
    swarm
        .services
        .get(name)
        .map_or_else(|| std::borrow::Cow::Owned(SwarmService::default()), std::borrow::Cow::Borrowed)
}

/// Everything the stack is on a Swarm, in the order it is created.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Objects {
    pub networks: Vec<NetworkCreateRequest>,
    pub secrets: Vec<SecretSpec>,
    pub configs: Vec<ConfigSpec>,
    pub services: Vec<ServiceSpec>,
}

fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The Swarm objects of the stack. `ids` gives the Swarm id of a secret or config by its Swarm
/// name (known once it is created; a stand-in when rendering).
pub fn objects(spec: &StackSpec, swarm: &SwarmSpec, deployment_id: Uuid, ids: &dyn Fn(&str) -> String) -> Objects {
    let project = &spec.project;
    let labels = labels(project, deployment_id);
    let networks = spec
        .networks
        .iter()
        .filter(|n| !n.external)
        .map(|n| NetworkCreateRequest {
            name: network_name(spec, &n.name),
            driver: Some(n.driver.clone().unwrap_or_else(|| "overlay".into())),
            attachable: Some(true),
            internal: Some(n.internal),
            labels: Some(labels.clone().into_iter().chain(n.labels.clone()).collect()),
            ..Default::default()
        })
        .collect();
    let object = |o: &windflow_protocol::stack::SwarmObject| (object_name(project, &o.name, &o.data), base64(&o.data));
    let secrets = swarm
        .secrets
        .iter()
        .map(|o| {
            let (name, data) = object(o);
            SecretSpec { name: Some(name), data: Some(data), labels: Some(labels.clone()), ..Default::default() }
        })
        .collect();
    let configs = swarm
        .configs
        .iter()
        .map(|o| {
            let (name, data) = object(o);
            ConfigSpec { name: Some(name), data: Some(data), labels: Some(labels.clone()), ..Default::default() }
        })
        .collect();
    let services = spec
        .services
        .iter()
        .map(|s| {
            let mut service = service(spec, swarm, s, &labels, ids);
            let hash = hex::encode(Sha256::digest(crate::sorted_yaml(&service)));
            service.labels.get_or_insert_default().insert(LABEL_SPEC_HASH.to_owned(), hash);
            service
        })
        .collect();
    Objects { networks, secrets, configs, services }
}

fn nanos(ms: u64) -> i64 {
    i64::try_from(ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
}

fn service(
    spec: &StackSpec,
    swarm: &SwarmSpec,
    service: &Service,
    labels: &HashMap<String, String>,
    ids: &dyn Fn(&str) -> String,
) -> ServiceSpec {
    let extras = swarm_service(swarm, &service.name);
    let to_i64 = |v: Option<u64>| v.and_then(|v| i64::try_from(v).ok());
    let mounts = service
        .mounts
        .iter()
        .map(|m| {
            let (typ, source, tmpfs_options) = match &m.source {
                MountSource::Volume(v) => (MountType::VOLUME, Some(volume_name(spec, v)), None),
                MountSource::Anonymous => (MountType::VOLUME, None, None),
                MountSource::Bind(path) => (MountType::BIND, Some(path.clone()), None),
                MountSource::Tmpfs { size_bytes } => (
                    MountType::TMPFS,
                    None,
                    Some(MountTmpfsOptions { size_bytes: to_i64(*size_bytes), ..Default::default() }),
                ),
            };
            // Named volumes get the stack's labels when Swarm creates them on a node.
            let volume_options = (typ == MountType::VOLUME && source.is_some())
                .then(|| MountVolumeOptions { labels: Some(labels.clone()), ..Default::default() });
            Mount {
                target: Some(m.target.clone()),
                source,
                typ: Some(typ),
                read_only: Some(m.read_only),
                tmpfs_options,
                volume_options,
                ..Default::default()
            }
        })
        .collect();
    let object_ref = |objects: &[windflow_protocol::stack::SwarmObject], mount: &FileMount| {
        let name = objects
            .iter()
            .find(|o| o.name == mount.source)
            .map_or_else(|| mount.source.clone(), |o| object_name(&spec.project, &o.name, &o.data));
        (ids(&name), name)
    };
    let file = |mount: &FileMount| TaskSpecContainerSpecFile {
        name: Some(mount.target.clone()),
        uid: Some(mount.uid.unwrap_or(0).to_string()),
        gid: Some(mount.gid.unwrap_or(0).to_string()),
        mode: Some(mount.mode.unwrap_or(0o444)),
    };
    let secrets = extras
        .secrets
        .iter()
        .map(|m| {
            let (id, name) = object_ref(&swarm.secrets, m);
            TaskSpecContainerSpecSecrets { file: Some(file(m)), secret_id: Some(id), secret_name: Some(name) }
        })
        .collect();
    let configs = extras
        .configs
        .iter()
        .map(|m| {
            let (id, name) = object_ref(&swarm.configs, m);
            let f = file(m);
            TaskSpecContainerSpecConfigs {
                file: Some(TaskSpecContainerSpecFile1 { name: f.name, uid: f.uid, gid: f.gid, mode: f.mode }),
                config_id: Some(id),
                config_name: Some(name),
                ..Default::default()
            }
        })
        .collect();
    let health_check = service.healthcheck.as_ref().map(|h| HealthConfig {
        test: Some(h.test.clone()),
        interval: h.interval_ms.map(nanos),
        timeout: h.timeout_ms.map(nanos),
        retries: h.retries.map(i64::from),
        start_period: h.start_period_ms.map(nanos),
        ..Default::default()
    });
    let mut container_labels: HashMap<String, String> = service.labels.clone().into_iter().collect();
    container_labels.extend(labels.clone());
    let container_spec = TaskSpecContainerSpec {
        image: Some(service.image.clone()),
        labels: Some(container_labels),
        command: service.entrypoint.clone(),
        args: service.command.clone(),
        hostname: service.hostname.clone(),
        env: Some(service.environment.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        dir: service.working_dir.clone(),
        user: service.user.clone(),
        read_only: Some(service.read_only),
        mounts: Some(mounts),
        stop_grace_period: service.stop_grace_period_ms.map(nanos),
        health_check,
        // Compose writes `host:address`, Swarm takes /etc/hosts lines: `address host`.
        hosts: Some(
            service
                .extra_hosts
                .iter()
                .filter_map(|h| h.split_once(':').map(|(host, address)| format!("{address} {host}")))
                .collect(),
        ),
        secrets: Some(secrets),
        configs: Some(configs),
        capability_add: (!service.cap_add.is_empty()).then(|| service.cap_add.clone()),
        capability_drop: (!service.cap_drop.is_empty()).then(|| service.cap_drop.clone()),
        ..Default::default()
    };
    // As `docker stack deploy`: `deploy.restart_policy`, else Swarm's default (`any`), which
    // `restart: on-failure` narrows.
    let restart_policy = match &extras.restart {
        Some(policy) => TaskSpecRestartPolicy {
            condition: Some(match policy.condition {
                RestartCondition::None => TaskSpecRestartPolicyConditionEnum::NONE,
                RestartCondition::OnFailure => TaskSpecRestartPolicyConditionEnum::ON_FAILURE,
                RestartCondition::Any => TaskSpecRestartPolicyConditionEnum::ANY,
            }),
            delay: policy.delay_ms.map(nanos),
            max_attempts: to_i64(policy.max_attempts),
            window: policy.window_ms.map(nanos),
        },
        None => match service.restart {
            RestartPolicy::OnFailure { max_retries } => TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE),
                max_attempts: max_retries.map(i64::from),
                ..Default::default()
            },
            _ => {
                TaskSpecRestartPolicy { condition: Some(TaskSpecRestartPolicyConditionEnum::ANY), ..Default::default() }
            }
        },
    };
    let resources = TaskSpecResources {
        limits: Some(Limit {
            nano_cpus: to_i64(service.resources.nano_cpus),
            memory_bytes: to_i64(service.resources.memory_bytes),
            pids: to_i64(service.resources.pids_limit),
        }),
        reservations: Some(ResourceObject {
            memory_bytes: to_i64(service.resources.memory_reservation_bytes),
            ..Default::default()
        }),
        ..Default::default()
    };
    let networks = service
        .networks
        .iter()
        .map(|(network, aliases)| NetworkAttachmentConfig {
            target: Some(network_name(spec, network)),
            aliases: Some(std::iter::once(service.name.clone()).chain(aliases.iter().cloned()).collect()),
            ..Default::default()
        })
        .collect();
    let ports = service
        .ports
        .iter()
        .map(|p| EndpointPortConfig {
            protocol: Some(match p.protocol {
                Protocol::Tcp => EndpointPortConfigProtocolEnum::TCP,
                Protocol::Udp => EndpointPortConfigProtocolEnum::UDP,
            }),
            target_port: Some(i64::from(p.container_port)),
            published_port: p.host_port.map(i64::from),
            publish_mode: Some(if extras.host_mode_ports.contains(&p.container_port) {
                EndpointPortConfigPublishModeEnum::HOST
            } else {
                EndpointPortConfigPublishModeEnum::INGRESS
            }),
            ..Default::default()
        })
        .collect();
    let mode = if extras.global {
        ServiceSpecMode { global: Some(HashMap::new()), ..Default::default() }
    } else {
        ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(i64::from(service.replicas)) }),
            ..Default::default()
        }
    };
    let mut service_labels = labels.clone();
    service_labels.extend(service.labels.clone());
    service_labels.insert(LABEL_CONFIG_HASH.to_owned(), service.config_hash());
    ServiceSpec {
        name: Some(service_name(&spec.project, &service.name)),
        labels: Some(service_labels),
        task_template: Some(TaskSpec {
            container_spec: Some(container_spec),
            resources: Some(resources),
            restart_policy: Some(restart_policy),
            placement: Some(TaskSpecPlacement { constraints: Some(extras.constraints.clone()), ..Default::default() }),
            networks: Some(networks),
            ..Default::default()
        }),
        mode: Some(mode),
        update_config: extras.update.as_ref().map(update_config),
        rollback_config: extras.rollback.as_ref().map(rollback_config),
        endpoint_spec: Some(EndpointSpec { ports: Some(ports), ..Default::default() }),
        ..Default::default()
    }
}

fn update_config(policy: &UpdatePolicy) -> ServiceSpecUpdateConfig {
    ServiceSpecUpdateConfig {
        parallelism: i64::try_from(policy.parallelism).ok(),
        delay: Some(nanos(policy.delay_ms)),
        failure_action: Some(match policy.failure_action {
            FailureAction::Pause => ServiceSpecUpdateConfigFailureActionEnum::PAUSE,
            FailureAction::Continue => ServiceSpecUpdateConfigFailureActionEnum::CONTINUE,
            FailureAction::Rollback => ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK,
        }),
        monitor: policy.monitor_ms.map(nanos),
        max_failure_ratio: Some(f64::from(policy.max_failure_ratio_permille) / 1000.0),
        order: Some(match policy.order {
            UpdateOrder::StopFirst => ServiceSpecUpdateConfigOrderEnum::STOP_FIRST,
            UpdateOrder::StartFirst => ServiceSpecUpdateConfigOrderEnum::START_FIRST,
        }),
    }
}

fn rollback_config(policy: &UpdatePolicy) -> ServiceSpecRollbackConfig {
    ServiceSpecRollbackConfig {
        parallelism: i64::try_from(policy.parallelism).ok(),
        delay: Some(nanos(policy.delay_ms)),
        // A rollback cannot itself roll back.
        failure_action: Some(match policy.failure_action {
            FailureAction::Continue => ServiceSpecRollbackConfigFailureActionEnum::CONTINUE,
            FailureAction::Pause | FailureAction::Rollback => ServiceSpecRollbackConfigFailureActionEnum::PAUSE,
        }),
        monitor: policy.monitor_ms.map(nanos),
        max_failure_ratio: Some(f64::from(policy.max_failure_ratio_permille) / 1000.0),
        order: Some(match policy.order {
            UpdateOrder::StopFirst => ServiceSpecRollbackConfigOrderEnum::STOP_FIRST,
            UpdateOrder::StartFirst => ServiceSpecRollbackConfigOrderEnum::START_FIRST,
        }),
    }
}

/// What would be created on a Swarm, as YAML documents (secret contents left out).
pub fn render(spec: &StackSpec, swarm: &SwarmSpec) -> String {
    let mut objects = objects(spec, swarm, Uuid::nil(), &|name| format!("<id of {name}>"));
    for (secret, original) in objects.secrets.iter_mut().zip(&swarm.secrets) {
        secret.data = Some(format!("<{} bytes, not shown>", original.data.len()));
    }
    let mut documents = Vec::new();
    let mut push = |kind: &str, value: serde_json::Value| {
        documents.push(crate::sorted_yaml(&serde_json::json!({ "kind": kind, "spec": value })));
    };
    for n in &objects.networks {
        push("Network", serde_json::to_value(n).unwrap_or_default());
    }
    for s in &objects.secrets {
        push("Secret", serde_json::to_value(s).unwrap_or_default());
    }
    for c in &objects.configs {
        push("Config", serde_json::to_value(c).unwrap_or_default());
    }
    for s in &objects.services {
        push("Service", serde_json::to_value(s).unwrap_or_default());
    }
    documents.join("---\n")
}

#[cfg(test)]
mod tests;
