//! A stack as Kubernetes objects: a Namespace (unless the stack goes into a given one), a
//! Deployment per service — a StatefulSet when it keeps named volumes of its own, a DaemonSet
//! in global mode — a ClusterIP Service under the Compose service's name (so `db:5432` keeps
//! working), a LoadBalancer Service for published ports, Secrets, ConfigMaps and
//! PersistentVolumeClaims. Every object carries WindFlow's labels so the stack can be found
//! and removed by label, and the agent applies them with server-side apply as [`FIELD_MANAGER`].

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet,
    StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, ExecAction,
    HostAlias, KeyToPath, Namespace, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use windflow_protocol::stack::{
    FileMount, HelmChart, MountSource, Protocol, PullPolicy, RestartPolicy, ServiceSpec as ComposeService, StackSpec,
    SwarmObject, SwarmSpec, UpdateOrder, UpdatePolicy,
};

use crate::{Finding, LABEL_DEPLOYMENT, LABEL_MANAGED, LABEL_PROJECT};

/// The field manager of WindFlow's server-side applies.
pub const FIELD_MANAGER: &str = "windflow";
/// On every object of a service: the Compose service it comes from.
pub const LABEL_SERVICE: &str = "io.windflow.service";
/// On a pod template: the Compose service's configuration hash, as Docker containers carry it.
pub const ANNOTATION_CONFIG_HASH: &str = "io.windflow.config-hash";
/// On a pod template: the hash of the secrets and configs it mounts, so a new content rolls
/// the pods (files are mounted with `subPath`, which Kubernetes never refreshes in place).
pub const ANNOTATION_FILES_HASH: &str = "io.windflow.files-hash";
/// On a Compose volume: the size of its claim (a Kubernetes quantity); [`DEFAULT_CLAIM_SIZE`]
/// without it.
pub const LABEL_STORAGE_SIZE: &str = "io.windflow.storage-size";
pub const DEFAULT_CLAIM_SIZE: &str = "1Gi";
/// The suffix of the LoadBalancer Service carrying a service's published ports.
pub const PUBLISHED_SUFFIX: &str = "-published";

/// The namespace a stack gets when none is given: its project name as a DNS label.
pub fn namespace_for(project: &str) -> String {
    kube_name(project)
}

/// A Compose name as a Kubernetes object name: lowercase, `_` and `.` as `-`.
pub fn kube_name(name: &str) -> String {
    name.to_lowercase().replace(['_', '.'], "-").trim_matches('-').to_owned()
}

/// RFC 1035 label: what a Service name must be.
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// RFC 1123 label: what a claim may be named (a claim template's name is also a prefix of the
/// claims a StatefulSet makes, so it is kept to a label).
fn is_claim_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The labels of every object of the stack.
pub fn labels(project: &str, deployment_id: Uuid) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED.to_owned(), "true".to_owned()),
        (LABEL_PROJECT.to_owned(), project.to_owned()),
        (LABEL_DEPLOYMENT.to_owned(), deployment_id.to_string()),
        ("app.kubernetes.io/managed-by".to_owned(), "windflow".to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), project.to_owned()),
    ])
}

/// What selects a service's pods: stable across versions of the stack (a selector cannot change).
pub fn selector(project: &str, service: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_PROJECT.to_owned(), project.to_owned()), (LABEL_SERVICE.to_owned(), service.to_owned())])
}

/// What Kubernetes cannot do of this stack (blocking), and what it does differently (notes).
pub fn check(spec: &StackSpec, orchestration: &SwarmSpec) -> Vec<Finding> {
    let mut findings = Vec::new();
    if !is_dns_label(&namespace_for(&spec.project)) {
        findings.push(Finding::blocking(
            "name".into(),
            format!("the project name {:?} does not make a Kubernetes namespace name", spec.project),
        ));
    }
    let claims = claim_owners(spec, orchestration);
    for service in &spec.services {
        let at = |key: &str| format!("services.{}.{key}", service.name);
        let extras = orchestration.services.get(&service.name).cloned().unwrap_or_default();
        if !is_dns_label(&service.name) || service.name.len() + PUBLISHED_SUFFIX.len() > 63 {
            findings.push(Finding::blocking(
                format!("services.{}", service.name),
                format!(
                    "a Kubernetes Service is named after the Compose service, and {:?} is not a DNS label \
                     (at most 53 lowercase letters, digits and '-', starting with a letter): rename it, e.g. {:?}",
                    service.name,
                    kube_name(&service.name)
                ),
            ));
        }
        for (i, mount) in service.mounts.iter().enumerate() {
            if let MountSource::Bind(path) = &mount.source {
                findings.push(Finding::blocking(
                    format!("services.{}.volumes[{i}]", service.name),
                    format!(
                        "a bind mount of {path} needs a path on the host, and a pod runs on whichever node the \
                         cluster picks: use a named volume (a PersistentVolumeClaim) instead"
                    ),
                ));
            }
        }
        for (i, port) in service.ports.iter().enumerate() {
            if let Some(ip) = &port.host_ip {
                findings.push(Finding::blocking(
                    format!("services.{}.ports[{i}]", service.name),
                    format!("a LoadBalancer Service listens on the balancer's addresses; it cannot bind to {ip} alone"),
                ));
            }
        }
        if service.ports.iter().any(|p| p.host_port.is_some()) {
            findings.push(Finding::note(
                at("ports"),
                format!(
                    "published ports are served by the LoadBalancer Service {}{PUBLISHED_SUFFIX}; without a load \
                     balancer, on the node ports the cluster assigns",
                    service.name
                ),
            ));
        }
        if let Some(user) = &service.user
            && run_as(user).is_none()
        {
            findings.push(Finding::blocking(
                at("user"),
                format!("Kubernetes runs containers as numeric ids only; {user:?} is a name: use uid[:gid]"),
            ));
        }
        if service.privileged {
            findings.push(Finding::note(
                at("privileged"),
                "a privileged pod is admitted only in a namespace whose Pod Security level is privileged",
            ));
        }
        if !service.depends_on.is_empty() {
            findings.push(Finding::note(
                at("depends_on"),
                "Kubernetes starts every pod at once; depends_on and its conditions are not waited for",
            ));
        }
        if matches!(service.restart, RestartPolicy::No | RestartPolicy::OnFailure { .. }) {
            findings.push(Finding::note(at("restart"), "the pods of a Deployment are always restarted"));
        }
        if service.resources.pids_limit.is_some() {
            findings.push(Finding::note(
                at("pids_limit"),
                "Kubernetes limits processes per node (kubelet podPidsLimit), not per container",
            ));
        }
        if service.networks.values().any(|aliases| !aliases.is_empty()) {
            findings.push(Finding::note(
                at("networks"),
                "network aliases are not DNS names on Kubernetes; only the service name is",
            ));
        }
        for constraint in &extras.constraints {
            if node_selector(constraint).is_none() {
                findings.push(Finding::note(
                    at("deploy.placement.constraints"),
                    format!("{constraint:?} has no node label equivalent and is not applied"),
                ));
            }
        }
        if extras.secrets.iter().chain(&extras.configs).any(|m| m.uid.is_some() || m.gid.is_some()) {
            findings.push(Finding::note(
                at("secrets"),
                "Kubernetes mounts secret and config files owned by root; uid and gid are not applied",
            ));
        }
        if extras.update.as_ref().or(extras.rollback.as_ref()).is_some() {
            findings.push(Finding::note(
                at("deploy.update_config"),
                "the rolling update keeps parallelism and order; a failed rollout is rolled back by WindFlow \
                 re-applying the previous version",
            ));
        }
        let owned = service
            .mounts
            .iter()
            .any(|m| matches!(&m.source, MountSource::Volume(v) if claims.get(v) == Some(&Some(service.name.clone()))));
        if owned && service.replicas > 1 {
            findings.push(Finding::note(
                at("volumes"),
                "a StatefulSet gives each replica its own claim of the volume, where Docker shares one volume",
            ));
        }
    }
    let own_networks = spec.networks.iter().filter(|n| !n.external).count();
    if let Some(network) = spec.networks.iter().find(|n| n.internal || own_networks > 1) {
        findings.push(Finding::note(
            format!("networks.{}", network.name),
            "every pod can reach every other in a cluster's network; isolating services needs a NetworkPolicy",
        ));
    }
    for volume in &spec.volumes {
        let at = format!("volumes.{}", volume.name);
        if !is_claim_name(&kube_name(&volume.name)) {
            findings.push(Finding::blocking(at, "the volume name does not make a PersistentVolumeClaim name"));
            continue;
        }
        if claims.get(&volume.name) == Some(&None) && !volume.external {
            findings.push(Finding::note(
                at.clone(),
                "several services mount this volume: its claim needs storage that supports ReadWriteMany",
            ));
        }
        if volume.driver.is_some() {
            findings.push(Finding::note(at, "the volume driver is not used; the cluster's default storage class is"));
        }
    }
    for (kind, objects, mounts) in [
        (
            "secrets",
            &orchestration.secrets,
            orchestration.services.values().flat_map(|s| &s.secrets).collect::<Vec<_>>(),
        ),
        (
            "configs",
            &orchestration.configs,
            orchestration.services.values().flat_map(|s| &s.configs).collect::<Vec<_>>(),
        ),
    ] {
        for mount in mounts {
            if !objects.iter().any(|o| o.name == mount.source) {
                findings.push(Finding::blocking(format!("{kind}.{}", mount.source), format!("no such {kind} entry")));
            }
        }
    }
    for name in orchestration.services.keys() {
        if !spec.services.iter().any(|s| &s.name == name) {
            findings.push(Finding::blocking(format!("services.{name}"), "no such service in the stack"));
        }
    }
    findings
}

/// For each named volume of the project: the one service that mounts it (it becomes a claim
/// template of that service's StatefulSet), or `None` when several services share it, or it is
/// external, or its service runs in global mode (then it is a standalone claim).
fn claim_owners(spec: &StackSpec, orchestration: &SwarmSpec) -> BTreeMap<String, Option<String>> {
    let mut owners: BTreeMap<String, Option<String>> = BTreeMap::new();
    for service in &spec.services {
        let global = orchestration.services.get(&service.name).is_some_and(|s| s.global);
        for mount in &service.mounts {
            if let MountSource::Volume(volume) = &mount.source {
                let external = spec.volumes.iter().any(|v| &v.name == volume && v.external);
                owners
                    .entry(volume.clone())
                    .and_modify(|owner| {
                        if owner.as_ref() != Some(&service.name) {
                            *owner = None;
                        }
                    })
                    .or_insert_with(|| (!external && !global).then(|| service.name.clone()));
            }
        }
    }
    owners
}

/// A Compose `user` (`uid[:gid]`) as numeric ids.
fn run_as(user: &str) -> Option<(i64, Option<i64>)> {
    match user.split_once(':') {
        Some((uid, gid)) => Some((uid.parse().ok()?, Some(gid.parse().ok()?))),
        None => Some((user.parse().ok()?, None)),
    }
}

/// A Swarm placement constraint as a node label, where one means the same.
fn node_selector(constraint: &str) -> Option<(String, String)> {
    let (key, value) = constraint.split_once("==")?;
    let (key, value) = (key.trim(), value.trim().to_owned());
    match key {
        "node.hostname" => Some(("kubernetes.io/hostname".into(), value)),
        "node.platform.os" => Some(("kubernetes.io/os".into(), value)),
        "node.platform.arch" => Some((
            "kubernetes.io/arch".into(),
            match value.as_str() {
                "x86_64" => "amd64".into(),
                "aarch64" => "arm64".into(),
                _ => value,
            },
        )),
        _ => key.strip_prefix("node.labels.").map(|label| (label.to_owned(), value)),
    }
}

/// A workload controller: which kind depends on the service.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Controller {
    Deployment(Deployment),
    StatefulSet(StatefulSet),
    DaemonSet(DaemonSet),
}

impl Controller {
    pub fn name(&self) -> &str {
        let metadata = match self {
            Controller::Deployment(d) => &d.metadata,
            Controller::StatefulSet(s) => &s.metadata,
            Controller::DaemonSet(d) => &d.metadata,
        };
        metadata.name.as_deref().unwrap_or_default()
    }
}

/// Everything the stack is on a cluster, in the order it is applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Objects {
    pub namespace_name: String,
    /// Present when the stack owns its namespace (it is removed with the stack); absent when
    /// the stack was put into a given, shared one.
    pub namespace: Option<Namespace>,
    pub secrets: Vec<Secret>,
    pub config_maps: Vec<ConfigMap>,
    pub claims: Vec<PersistentVolumeClaim>,
    pub controllers: Vec<Controller>,
    pub services: Vec<Service>,
}

fn meta(name: &str, namespace: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(labels),
        ..Default::default()
    }
}

/// The objects of the stack in `namespace`.
pub fn objects(spec: &StackSpec, orchestration: &SwarmSpec, namespace: &str, deployment_id: Uuid) -> Objects {
    let project = &spec.project;
    let labels = labels(project, deployment_id);
    let owns_namespace = namespace == namespace_for(project);
    let namespace_object = owns_namespace.then(|| Namespace {
        metadata: ObjectMeta { name: Some(namespace.to_owned()), labels: Some(labels.clone()), ..Default::default() },
        ..Default::default()
    });
    let secrets = orchestration
        .secrets
        .iter()
        .map(|o| Secret {
            metadata: meta(&kube_name(&o.name), namespace, labels.clone()),
            data: Some(BTreeMap::from([(o.name.clone(), ByteString(o.data.clone()))])),
            type_: Some("Opaque".into()),
            ..Default::default()
        })
        .collect();
    let config_maps = orchestration
        .configs
        .iter()
        .map(|o| {
            let (data, binary_data) = match String::from_utf8(o.data.clone()) {
                Ok(text) => (Some(BTreeMap::from([(o.name.clone(), text)])), None),
                Err(_) => (None, Some(BTreeMap::from([(o.name.clone(), ByteString(o.data.clone()))]))),
            };
            ConfigMap {
                metadata: meta(&kube_name(&o.name), namespace, labels.clone()),
                data,
                binary_data,
                ..Default::default()
            }
        })
        .collect();
    let owners = claim_owners(spec, orchestration);
    let claims = owners
        .iter()
        .filter(|(volume, owner)| owner.is_none() && !spec.volumes.iter().any(|v| &v.name == *volume && v.external))
        .map(|(volume, _)| claim(spec, volume, namespace, &labels, "ReadWriteMany"))
        .collect();
    let controllers =
        spec.services.iter().map(|s| controller(spec, orchestration, s, namespace, &labels, &owners)).collect();
    let services = spec.services.iter().flat_map(|s| services(project, s, namespace, &labels)).collect();
    Objects {
        namespace_name: namespace.to_owned(),
        namespace: namespace_object,
        secrets,
        config_maps,
        claims,
        controllers,
        services,
    }
}

fn claim(
    spec: &StackSpec,
    volume: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    access: &str,
) -> PersistentVolumeClaim {
    let size = spec
        .volumes
        .iter()
        .find(|v| v.name == volume)
        .and_then(|v| v.labels.get(LABEL_STORAGE_SIZE).cloned())
        .unwrap_or_else(|| DEFAULT_CLAIM_SIZE.to_owned());
    PersistentVolumeClaim {
        metadata: meta(&kube_name(volume), namespace, labels.clone()),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![access.to_owned()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_owned(), Quantity(size))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn seconds(ms: u64) -> i64 {
    i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX)
}

fn seconds_i32(ms: u64) -> i32 {
    i32::try_from(ms.div_ceil(1000)).unwrap_or(i32::MAX)
}

fn protocol(p: Protocol) -> String {
    match p {
        Protocol::Tcp => "TCP".into(),
        Protocol::Udp => "UDP".into(),
    }
}

fn hash(parts: impl IntoIterator<Item = Vec<u8>>) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hex::encode(hasher.finalize())[..16].to_owned()
}

fn controller(
    spec: &StackSpec,
    orchestration: &SwarmSpec,
    service: &ComposeService,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    owners: &BTreeMap<String, Option<String>>,
) -> Controller {
    let extras = orchestration.services.get(&service.name).cloned().unwrap_or_default();
    let selector_labels = selector(&spec.project, &service.name);
    let mut object_labels = labels.clone();
    object_labels.extend(selector_labels.clone());
    object_labels.insert("app.kubernetes.io/name".into(), service.name.clone());
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut claim_templates = Vec::new();
    for (i, mount) in service.mounts.iter().enumerate() {
        let name = match &mount.source {
            MountSource::Volume(volume) => {
                let name = kube_name(volume);
                match owners.get(volume) {
                    Some(Some(_)) => claim_templates.push(claim(spec, volume, namespace, labels, "ReadWriteOnce")),
                    _ => volumes.push(Volume {
                        name: name.clone(),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: name.clone(),
                            read_only: Some(mount.read_only),
                        }),
                        ..Default::default()
                    }),
                }
                name
            }
            MountSource::Anonymous | MountSource::Bind(_) | MountSource::Tmpfs { .. } => {
                let name = format!("scratch-{i}");
                let medium = matches!(mount.source, MountSource::Tmpfs { .. }).then(|| "Memory".to_owned());
                let size_limit = match mount.source {
                    MountSource::Tmpfs { size_bytes: Some(bytes) } => Some(Quantity(bytes.to_string())),
                    _ => None,
                };
                volumes.push(Volume {
                    name: name.clone(),
                    empty_dir: Some(EmptyDirVolumeSource { medium, size_limit }),
                    ..Default::default()
                });
                name
            }
        };
        mounts.push(VolumeMount {
            name,
            mount_path: mount.target.clone(),
            read_only: Some(mount.read_only),
            ..Default::default()
        });
    }
    let mut files = Vec::new();
    let file_mounts =
        [("secret", &extras.secrets, &orchestration.secrets), ("config", &extras.configs, &orchestration.configs)];
    for (kind, mounted, objects) in file_mounts {
        for mount in mounted {
            let Some(object) = objects.iter().find(|o| o.name == mount.source) else { continue };
            files.push(object.data.clone());
            let (volume, volume_mount) = file_volume(kind, object, mount);
            if !volumes.iter().any(|v: &Volume| v.name == volume.name) {
                volumes.push(volume);
            }
            mounts.push(volume_mount);
        }
    }
    let mut annotations: BTreeMap<String, String> = service.labels.clone();
    annotations.insert(ANNOTATION_CONFIG_HASH.into(), service.config_hash());
    if !files.is_empty() {
        annotations.insert(ANNOTATION_FILES_HASH.into(), hash(files));
    }
    let node_selector: BTreeMap<String, String> = extras.constraints.iter().filter_map(|c| node_selector(c)).collect();
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(object_labels.clone()),
            annotations: Some(annotations),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container(service, mounts)],
            volumes: Some(volumes),
            hostname: service.hostname.clone(),
            host_aliases: host_aliases(&service.extra_hosts),
            termination_grace_period_seconds: service.stop_grace_period_ms.map(seconds),
            node_selector: (!node_selector.is_empty()).then_some(node_selector),
            // Compose apps do not expect Kubernetes' `<SERVICE>_PORT` variables, which clash
            // with some images' own settings (REDIS_PORT, …).
            enable_service_links: Some(false),
            ..Default::default()
        }),
    };
    let selector = LabelSelector { match_labels: Some(selector_labels), ..Default::default() };
    let metadata = meta(&service.name, namespace, object_labels);
    let replicas = Some(i32::try_from(service.replicas).unwrap_or(i32::MAX));
    let min_ready_seconds = extras.update.as_ref().and_then(|u| u.monitor_ms).map(seconds_i32);
    if extras.global {
        Controller::DaemonSet(DaemonSet {
            metadata,
            spec: Some(DaemonSetSpec { selector, template, min_ready_seconds, ..Default::default() }),
            ..Default::default()
        })
    } else if !claim_templates.is_empty() {
        Controller::StatefulSet(StatefulSet {
            metadata,
            spec: Some(StatefulSetSpec {
                replicas,
                selector,
                template,
                service_name: Some(service.name.clone()),
                volume_claim_templates: Some(claim_templates),
                // Compose starts every replica at once.
                pod_management_policy: Some("Parallel".into()),
                min_ready_seconds,
                ..Default::default()
            }),
            ..Default::default()
        })
    } else {
        Controller::Deployment(Deployment {
            metadata,
            spec: Some(DeploymentSpec {
                replicas,
                selector,
                template,
                strategy: extras.update.as_ref().map(strategy),
                min_ready_seconds,
                ..Default::default()
            }),
            ..Default::default()
        })
    }
}

/// A secret or config file: a volume of the object with its one key, mounted by `subPath`.
fn file_volume(kind: &str, object: &SwarmObject, mount: &FileMount) -> (Volume, VolumeMount) {
    let name = format!("{kind}-{}", kube_name(&object.name));
    let items = Some(vec![KeyToPath {
        key: object.name.clone(),
        path: object.name.clone(),
        mode: mount.mode.and_then(|m| i32::try_from(m).ok()),
    }]);
    let volume = if kind == "secret" {
        Volume {
            name: name.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(kube_name(&object.name)),
                items,
                ..Default::default()
            }),
            ..Default::default()
        }
    } else {
        Volume {
            name: name.clone(),
            config_map: Some(ConfigMapVolumeSource { name: kube_name(&object.name), items, ..Default::default() }),
            ..Default::default()
        }
    };
    let volume_mount = VolumeMount {
        name,
        mount_path: mount.target.clone(),
        sub_path: Some(object.name.clone()),
        read_only: Some(true),
        ..Default::default()
    };
    (volume, volume_mount)
}

fn container(service: &ComposeService, volume_mounts: Vec<VolumeMount>) -> Container {
    let mut seen = BTreeSet::new();
    let ports: Vec<ContainerPort> = service
        .ports
        .iter()
        .filter(|p| seen.insert((p.container_port, p.protocol == Protocol::Udp)))
        .map(|p| ContainerPort {
            container_port: i32::from(p.container_port),
            protocol: Some(protocol(p.protocol)),
            ..Default::default()
        })
        .collect();
    let mut limits = BTreeMap::new();
    if let Some(nano) = service.resources.nano_cpus {
        limits.insert("cpu".to_owned(), Quantity(format!("{}m", nano.div_ceil(1_000_000))));
    }
    if let Some(bytes) = service.resources.memory_bytes {
        limits.insert("memory".to_owned(), Quantity(bytes.to_string()));
    }
    let requests: BTreeMap<String, Quantity> = service
        .resources
        .memory_reservation_bytes
        .map(|bytes| ("memory".to_owned(), Quantity(bytes.to_string())))
        .into_iter()
        .collect();
    let (run_as_user, run_as_group) =
        service.user.as_deref().and_then(run_as).map_or((None, None), |(u, g)| (Some(u), g));
    let cap = |caps: &[String]| {
        (!caps.is_empty()).then(|| caps.iter().map(|c| c.trim_start_matches("CAP_").to_owned()).collect())
    };
    let probe = service.healthcheck.as_ref().and_then(|h| {
        let command = match h.test.split_first() {
            Some((kind, args)) if kind == "CMD" => args.to_vec(),
            Some((kind, args)) if kind == "CMD-SHELL" => {
                vec!["/bin/sh".into(), "-c".into(), args.join(" ")]
            }
            _ => return None,
        };
        Some(Probe {
            exec: Some(ExecAction { command: Some(command) }),
            period_seconds: h.interval_ms.map(seconds_i32),
            timeout_seconds: h.timeout_ms.map(seconds_i32),
            failure_threshold: h.retries.and_then(|r| i32::try_from(r).ok()),
            initial_delay_seconds: h.start_period_ms.map(seconds_i32),
            ..Default::default()
        })
    });
    Container {
        name: service.name.clone(),
        image: Some(service.image.clone()),
        image_pull_policy: Some(
            match service.pull_policy {
                PullPolicy::Missing => "IfNotPresent",
                PullPolicy::Always => "Always",
                PullPolicy::Never => "Never",
            }
            .into(),
        ),
        command: service.entrypoint.clone(),
        args: service.command.clone(),
        env: Some(
            service
                .environment
                .iter()
                .map(|(name, value)| EnvVar { name: name.clone(), value: Some(value.clone()), ..Default::default() })
                .collect(),
        ),
        ports: Some(ports),
        working_dir: service.working_dir.clone(),
        volume_mounts: Some(volume_mounts),
        resources: Some(ResourceRequirements {
            limits: (!limits.is_empty()).then_some(limits),
            requests: (!requests.is_empty()).then_some(requests),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            privileged: service.privileged.then_some(true),
            read_only_root_filesystem: service.read_only.then_some(true),
            run_as_user,
            run_as_group,
            capabilities: (!service.cap_add.is_empty() || !service.cap_drop.is_empty())
                .then(|| Capabilities { add: cap(&service.cap_add), drop: cap(&service.cap_drop) }),
            ..Default::default()
        }),
        // Swarm replaces unhealthy tasks and routes only to healthy ones: a pod gets both.
        liveness_probe: probe.clone(),
        readiness_probe: probe,
        ..Default::default()
    }
}

/// Compose writes `host:address`; Kubernetes groups host names by address.
fn host_aliases(extra_hosts: &[String]) -> Option<Vec<HostAlias>> {
    let mut by_ip: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in extra_hosts {
        if let Some((host, ip)) = entry.split_once(':') {
            by_ip.entry(ip.to_owned()).or_default().push(host.to_owned());
        }
    }
    (!by_ip.is_empty())
        .then(|| by_ip.into_iter().map(|(ip, hostnames)| HostAlias { ip, hostnames: Some(hostnames) }).collect())
}

fn strategy(policy: &UpdatePolicy) -> DeploymentStrategy {
    // Parallelism 0 means "all at once" in Swarm.
    let at_once = if policy.parallelism == 0 {
        IntOrString::String("100%".into())
    } else {
        IntOrString::Int(i32::try_from(policy.parallelism).unwrap_or(i32::MAX))
    };
    let (max_surge, max_unavailable) = match policy.order {
        UpdateOrder::StartFirst => (at_once, IntOrString::Int(0)),
        UpdateOrder::StopFirst => (IntOrString::Int(0), at_once),
    };
    DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(max_surge),
            max_unavailable: Some(max_unavailable),
        }),
    }
}

/// A ClusterIP Service under the Compose name for the container ports, and a LoadBalancer one
/// for the published ports (mapping the published port to the container port, as Compose does).
fn services(
    project: &str,
    service: &ComposeService,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<Service> {
    let mut object_labels = labels.clone();
    object_labels.insert(LABEL_SERVICE.into(), service.name.clone());
    let port_name = |port: u16, p: Protocol| format!("{}-{port}", protocol(p).to_lowercase());
    let mut seen = BTreeSet::new();
    let internal: Vec<ServicePort> = service
        .ports
        .iter()
        .filter(|p| seen.insert((p.container_port, p.protocol == Protocol::Udp)))
        .map(|p| ServicePort {
            name: Some(port_name(p.container_port, p.protocol)),
            port: i32::from(p.container_port),
            target_port: Some(IntOrString::Int(i32::from(p.container_port))),
            protocol: Some(protocol(p.protocol)),
            ..Default::default()
        })
        .collect();
    let published: Vec<ServicePort> = service
        .ports
        .iter()
        .filter_map(|p| {
            let host_port = p.host_port?;
            Some(ServicePort {
                name: Some(port_name(host_port, p.protocol)),
                port: i32::from(host_port),
                target_port: Some(IntOrString::Int(i32::from(p.container_port))),
                protocol: Some(protocol(p.protocol)),
                // The same number on the nodes when it is in Kubernetes' node port range.
                node_port: (30000..=32767).contains(&host_port).then_some(i32::from(host_port)),
                ..Default::default()
            })
        })
        .collect();
    let selector = Some(selector(project, &service.name));
    let mut made = Vec::new();
    if !internal.is_empty() {
        made.push(Service {
            metadata: meta(&service.name, namespace, object_labels.clone()),
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                selector: selector.clone(),
                ports: Some(internal),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if !published.is_empty() {
        made.push(Service {
            metadata: meta(&format!("{}{PUBLISHED_SUFFIX}", service.name), namespace, object_labels),
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                selector,
                ports: Some(published),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    made
}

/// What would be applied to a cluster, as YAML documents kubectl would take (secret contents
/// left out).
pub fn render(spec: &StackSpec, orchestration: &SwarmSpec, namespace: Option<&str>) -> String {
    let namespace = namespace.map_or_else(|| namespace_for(&spec.project), str::to_owned);
    let mut objects = objects(spec, orchestration, &namespace, Uuid::nil());
    for secret in &mut objects.secrets {
        let shown = secret.data.take().unwrap_or_default();
        secret.string_data =
            Some(shown.into_iter().map(|(k, v)| (k, format!("<{} bytes, not shown>", v.0.len()))).collect());
    }
    let mut documents = Vec::new();
    let mut push = |value: serde_json::Result<serde_json::Value>| {
        documents.push(crate::sorted_yaml(&value.unwrap_or_default()));
    };
    if let Some(namespace) = &objects.namespace {
        push(serde_json::to_value(namespace));
    }
    objects.secrets.iter().for_each(|o| push(serde_json::to_value(o)));
    objects.config_maps.iter().for_each(|o| push(serde_json::to_value(o)));
    objects.claims.iter().for_each(|o| push(serde_json::to_value(o)));
    objects.controllers.iter().for_each(|o| push(serde_json::to_value(o)));
    objects.services.iter().for_each(|o| push(serde_json::to_value(o)));
    documents.join("---\n")
}

/// `helm upgrade --install` of a Helm stack, as the agent runs it (before its post-renderer,
/// which labels every object like WindFlow's own): installed when new, upgraded otherwise, and
/// rolled back by Helm itself (`--atomic`) when the upgrade does not become ready.
pub fn helm_upgrade_args(project: &str, namespace: &str, chart: &HelmChart, values_file: &str) -> Vec<String> {
    let mut args: Vec<String> =
        ["upgrade", "--install", project, &chart.chart, "--namespace", namespace, "--create-namespace"]
            .into_iter()
            .map(str::to_owned)
            .collect();
    if let Some(repo) = &chart.repo {
        args.extend(["--repo".to_owned(), repo.clone()]);
    }
    if let Some(version) = &chart.version {
        args.extend(["--version".to_owned(), version.clone()]);
    }
    args.extend(["--values", values_file, "--atomic", "--wait", "--timeout", "10m"].map(str::to_owned));
    args
}

/// Helm's post-renderer step: every object of the release gets WindFlow's labels (its
/// controllers and their pod templates also the service label, named after the controller), so
/// status, logs and removal find a chart's objects as they find WindFlow's own.
pub fn label_manifests(manifests: &str, project: &str, deployment_id: Uuid) -> Result<String, serde_yaml::Error> {
    use serde::Deserialize;
    let labels = labels(project, deployment_id);
    let mut out = Vec::new();
    for document in serde_yaml::Deserializer::from_str(manifests) {
        let mut object = serde_yaml::Value::deserialize(document)?;
        if !object.is_mapping() {
            continue;
        }
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let controller = matches!(object["kind"].as_str(), Some("Deployment" | "StatefulSet" | "DaemonSet"));
        let add = |target: &mut serde_yaml::Value| {
            if !target.is_mapping() {
                *target = serde_yaml::Value::Mapping(Default::default());
            }
            for (key, value) in &labels {
                target[key.as_str()] = serde_yaml::Value::String(value.clone());
            }
            if controller {
                target[LABEL_SERVICE] = serde_yaml::Value::String(name.clone());
            }
        };
        if !object["metadata"].is_mapping() {
            object["metadata"] = serde_yaml::Value::Mapping(Default::default());
        }
        add(&mut object["metadata"]["labels"]);
        if controller && object["spec"]["template"].is_mapping() {
            if !object["spec"]["template"]["metadata"].is_mapping() {
                object["spec"]["template"]["metadata"] = serde_yaml::Value::Mapping(Default::default());
            }
            add(&mut object["spec"]["template"]["metadata"]["labels"]);
        }
        out.push(serde_yaml::to_string(&object)?);
    }
    Ok(out.join("---\n"))
}

/// What a Helm stack applies: the release, the command and its values (the chart's own
/// manifests come from the chart, on the agent).
pub fn render_helm(project: &str, chart: &HelmChart) -> String {
    let namespace = namespace_for(project);
    let command = helm_upgrade_args(project, &namespace, chart, "values.yaml").join(" ");
    let values: serde_yaml::Value = serde_yaml::from_str(&chart.values_yaml).unwrap_or(serde_yaml::Value::Null);
    // Values with keys JSON cannot hold (a sequence as a key) are refused when the stack is
    // read; here they must not panic either.
    let values = serde_json::to_value(&values).unwrap_or(serde_json::Value::Null);
    let release = serde_json::json!({
        "kind": "HelmRelease",
        "release": project,
        "namespace": namespace,
        "chart": chart.chart,
        "repo": chart.repo,
        "version": chart.version,
        "command": format!("helm {command}"),
        "values": values,
    });
    crate::sorted_yaml(&release)
}

/// What stands in the way of a Helm stack on a platform: only Kubernetes runs charts.
pub fn check_helm(platform: windflow_protocol::Platform) -> Vec<Finding> {
    match platform {
        windflow_protocol::Platform::Kubernetes => vec![],
        other => vec![Finding::blocking(
            "x-helm".into(),
            format!("a Helm chart is released on a Kubernetes cluster, not on {}", other.as_str()),
        )],
    }
}

#[cfg(test)]
mod tests;
