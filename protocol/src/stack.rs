//! `StackSpec`: a Compose project after the control plane parsed, interpolated and validated it.
//! Agents apply this typed form and never see YAML.
//!
//! Maps are `BTreeMap`s so that the encoding of a spec, and so the configuration hash of each
//! service, does not depend on the order keys were written in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackSpec {
    /// The Compose project name: lowercase letters, digits, `-` and `_`.
    pub project: String,
    /// In dependency order: every service comes after the services it depends on.
    pub services: Vec<ServiceSpec>,
    pub networks: Vec<NetworkSpec>,
    pub volumes: Vec<VolumeSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub image: String,
    pub pull_policy: PullPolicy,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub environment: BTreeMap<String, String>,
    pub ports: Vec<PortSpec>,
    pub mounts: Vec<MountSpec>,
    /// Networks of this project the service joins, with its aliases there.
    pub networks: BTreeMap<String, Vec<String>>,
    pub depends_on: Vec<Dependency>,
    pub healthcheck: Option<Healthcheck>,
    pub restart: RestartPolicy,
    pub resources: Resources,
    pub labels: BTreeMap<String, String>,
    pub replicas: u32,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub hostname: Option<String>,
    /// `host:address` entries for /etc/hosts.
    pub extra_hosts: Vec<String>,
    pub stop_grace_period_ms: Option<u64>,
    pub read_only: bool,
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullPolicy {
    /// Pull only when the image is not present (Compose's default, `missing`/`if_not_present`).
    Missing,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub container_port: u16,
    /// `None` publishes on an ephemeral port chosen by the engine; absent `host_port` with
    /// `published: false` (expose only) is not a port spec at all.
    pub host_port: Option<u16>,
    pub host_ip: Option<String>,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountSource {
    /// A named volume of this project (its Compose name, not the engine's).
    Volume(String),
    /// An anonymous volume.
    Anonymous,
    /// A path on the host.
    Bind(String),
    Tmpfs {
        size_bytes: Option<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub source: MountSource,
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DependencyCondition {
    Started,
    Healthy,
    CompletedSuccessfully,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub service: String,
    pub condition: DependencyCondition,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// As Docker takes it: `["CMD", …]`, `["CMD-SHELL", "…"]` or `["NONE"]`.
    pub test: Vec<String>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub retries: Option<u32>,
    pub start_period_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    No,
    Always,
    OnFailure { max_retries: Option<u32> },
    UnlessStopped,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU limit in billionths of a CPU, as Docker's `NanoCpus`.
    pub nano_cpus: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub memory_reservation_bytes: Option<u64>,
    pub pids_limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    /// Created outside the project; used, never created or removed.
    pub external: bool,
    pub driver: Option<String>,
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub name: String,
    pub external: bool,
    pub driver: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl ServiceSpec {
    /// A stable hash of everything that, when changed, requires recreating the service's
    /// containers. Equal specs hash equal on every machine and every build (FNV-1a over the
    /// postcard encoding, which is itself pinned by golden tests).
    /// The replica count is left out: scaling adds or removes containers, it does not
    /// recreate the others.
    pub fn config_hash(&self) -> String {
        let hashed = ServiceSpec { replicas: 0, ..self.clone() };
        let bytes = postcard::to_allocvec(&hashed).unwrap_or_default();
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{hash:016x}")
    }
}

/// What a Swarm needs beyond the Compose model itself: how services are placed and updated,
/// and the secrets and configs they mount. Sent next to the `StackSpec` of a Swarm deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmSpec {
    /// Per service name; services without an entry use Swarm's defaults.
    pub services: BTreeMap<String, SwarmService>,
    /// The stack's secrets, with their contents (they travel only in signed jobs).
    pub secrets: Vec<SwarmObject>,
    pub configs: Vec<SwarmObject>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmService {
    /// Placement constraints, as Swarm writes them (`node.role == manager`).
    pub constraints: Vec<String>,
    /// Every node runs one task (`deploy.mode: global`) instead of `replicas`.
    pub global: bool,
    pub update: Option<UpdatePolicy>,
    pub rollback: Option<UpdatePolicy>,
    pub secrets: Vec<FileMount>,
    pub configs: Vec<FileMount>,
    /// Container ports published on the node running each task (`mode: host`), not through
    /// the routing mesh.
    pub host_mode_ports: Vec<u16>,
    /// `deploy.restart_policy`; without it, the service's `restart` decides.
    pub restart: Option<SwarmRestartPolicy>,
}

/// When Swarm replaces a service's stopped tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmRestartPolicy {
    pub condition: RestartCondition,
    pub delay_ms: Option<u64>,
    /// Restarts before giving up (none: no limit).
    pub max_attempts: Option<u64>,
    /// How long a restart must stay up to count as a success.
    pub window_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartCondition {
    None,
    OnFailure,
    Any,
}

/// A rolling update (or rollback) as Swarm runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatePolicy {
    /// Tasks updated at once (0: all).
    pub parallelism: u64,
    pub delay_ms: u64,
    pub failure_action: FailureAction,
    /// How long a new task is watched for failure after it starts.
    pub monitor_ms: Option<u64>,
    /// Failures tolerated, in thousandths of the tasks updated.
    pub max_failure_ratio_permille: u32,
    pub order: UpdateOrder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureAction {
    Pause,
    Continue,
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateOrder {
    StopFirst,
    StartFirst,
}

/// A secret or config of the stack and its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmObject {
    /// Its name in the Compose file.
    pub name: String,
    pub data: Vec<u8>,
}

/// A secret or config mounted into a service's tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMount {
    /// The secret's or config's name in the Compose file.
    pub source: String,
    /// The file in the container: `/run/secrets/<source>` (secrets) or `/<source>` (configs)
    /// when the Compose file does not say.
    pub target: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
}

/// A Helm chart released as a stack (the stack's `x-helm` section): installed or upgraded with
/// the `helm` CLI where the agent runs, values interpolated from the stack's variables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelmChart {
    /// A chart name in `repo`, an `oci://` reference, or a path on the agent's host.
    pub chart: String,
    pub repo: Option<String>,
    pub version: Option<String>,
    /// The release's values, as YAML.
    pub values_yaml: String,
}

/// A virtual machine of a stack's `x-vms` section, for a libvirt hypervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Its name in the stack; the domain is `<project>-<name>`.
    pub name: String,
    pub template: VmTemplate,
    pub cpus: u32,
    pub memory_mib: u64,
    /// The size of its disk, a copy-on-write overlay on the template's base image.
    pub disk_gib: u64,
    /// The libvirt network its interface joins.
    pub network: String,
    /// Keys allowed to log in as the template's user (Linux templates).
    pub ssh_authorized_keys: Vec<String>,
    /// Packages installed on first boot (Linux templates).
    pub packages: Vec<String>,
    /// Commands run once on first boot.
    pub run_commands: Vec<String>,
    /// The administrator's password (Windows; sealed like the stack's other secrets).
    pub admin_password: Option<String>,
}

/// The operating systems WindFlow makes VMs of: each a base image the hypervisor host keeps,
/// a domain shape and a first-boot configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VmTemplate {
    Ubuntu2204,
    Debian12,
    Rocky9,
    Windows2022,
}

impl VmTemplate {
    pub const ALL: [VmTemplate; 4] =
        [VmTemplate::Ubuntu2204, VmTemplate::Debian12, VmTemplate::Rocky9, VmTemplate::Windows2022];

    /// The name people write in a stack and the base image's file name.
    pub fn slug(self) -> &'static str {
        match self {
            VmTemplate::Ubuntu2204 => "ubuntu-22.04",
            VmTemplate::Debian12 => "debian-12",
            VmTemplate::Rocky9 => "rocky-9",
            VmTemplate::Windows2022 => "windows-server-2022",
        }
    }

    pub fn from_slug(slug: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.slug() == slug)
    }

    pub fn is_windows(self) -> bool {
        self == VmTemplate::Windows2022
    }
}
