//! Every message that crosses the agent link.
//!
//! Compatibility rule: these types are encoded with postcard, which identifies enum variants by
//! position. Variants are only ever appended at the end of an enum, and a struct that is on the
//! wire never changes shape: a new shape is a new variant. The golden-byte tests in
//! `tests/golden.rs` fail on any accidental change.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::job::{JobRejection, SignedJob};

/// The protocol version this build speaks. A peer with another version is refused with
/// [`Refusal::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u16 = 1;

/// What an agent knows about its host, sent in [`Hello`] and in status reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub hostname: String,
    /// Pretty name of the operating system, e.g. "Debian GNU/Linux 12 (bookworm)".
    pub os: String,
    /// CPU architecture as Rust names it (`x86_64`, `aarch64`).
    pub arch: String,
    pub kernel: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Present when a Docker engine answers on the host.
    pub docker: Option<DockerFacts>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerFacts {
    pub version: String,
    pub api_version: String,
    pub swarm: SwarmState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SwarmState {
    Inactive,
    Manager {
        node_id: String,
    },
    Worker {
        node_id: String,
    },
    /// Pending, error or locked: the engine's own word for it.
    Other(String),
}

/// First message on the control stream, from the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u16,
    pub agent_version: String,
    /// The identity the agent believes it has; the control plane checks it against the
    /// certificate and refuses a mismatch.
    pub agent_id: Uuid,
    pub facts: HostFacts,
}

/// The control plane's answer to an accepted [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u16,
    pub heartbeat_interval_ms: u32,
    pub server_time_unix_ms: u64,
}

/// Why the control plane will not hold a session. Sent before it closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    UnsupportedVersion { supported: u16, offered: u16 },
    Revoked,
    IdentityMismatch { certificate: Uuid, claimed: Uuid },
    UnknownAgent,
    ProtocolViolation(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::UnsupportedVersion { supported, offered } => {
                write!(f, "protocol version {offered} is not supported (the control plane speaks {supported})")
            }
            Refusal::Revoked => f.write_str("this agent has been revoked"),
            Refusal::IdentityMismatch { certificate, claimed } => {
                write!(f, "agent claims id {claimed} but its certificate is for {certificate}")
            }
            Refusal::UnknownAgent => f.write_str("this agent is not enrolled"),
            Refusal::ProtocolViolation(what) => write!(f, "protocol violation: {what}"),
        }
    }
}

/// A periodic report of the agent's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub facts: HostFacts,
    pub running_jobs: u32,
    pub uptime_s: u64,
}

/// Something that happened on the agent that the control plane should record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEvent {
    pub at_unix_ms: u64,
    pub kind: AgentEventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentEventKind {
    /// A job was refused before it ran (bad signature, replay, …).
    JobRefused {
        job_id: Option<Uuid>,
        reason: JobRejection,
    },
    EngineConnected,
    EngineDisconnected {
        error: String,
    },
    CertificateRenewed {
        not_after_unix_s: i64,
    },
}

/// Agent → control plane, on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentMessage {
    Hello(Hello),
    Heartbeat {
        seq: u64,
    },
    StatusReport(StatusReport),
    Event(AgentEvent),
    Pong {
        nonce: u64,
    },
    /// A certificate signing request (DER) for the agent's next certificate.
    RenewCertificate {
        csr_der: Vec<u8>,
    },
    /// The observed state of a deployed stack, pushed when it changes and periodically.
    StackStatus(StackStatus),
    /// Which platforms this agent can drive, sent after the handshake and whenever it changes.
    Capabilities(Vec<Capability>),
}

/// Whether the agent can deploy to a platform, and why (or why not), in words for people:
/// "Kubernetes v1.33.1 at https://10.0.0.1:443", "no cluster access: no kubeconfig found".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    pub platform: crate::job::Platform,
    pub available: bool,
    pub detail: String,
}

impl Capability {
    /// What the host's Docker engine offers, as its facts tell: containers, and Swarm services
    /// when it is a manager.
    pub fn of_engine(facts: &HostFacts) -> [Capability; 2] {
        use crate::job::Platform;
        let Some(docker) = &facts.docker else {
            return [
                Capability { platform: Platform::Docker, available: false, detail: "no Docker engine answers".into() },
                Capability { platform: Platform::Swarm, available: false, detail: "no Docker engine answers".into() },
            ];
        };
        let engine =
            Capability { platform: Platform::Docker, available: true, detail: format!("Docker {}", docker.version) };
        let swarm = match &docker.swarm {
            SwarmState::Manager { node_id } => {
                Capability { platform: Platform::Swarm, available: true, detail: format!("Swarm manager {node_id}") }
            }
            SwarmState::Worker { .. } => Capability {
                platform: Platform::Swarm,
                available: false,
                detail: "this node is a Swarm worker; services are deployed through a manager".into(),
            },
            SwarmState::Inactive => Capability {
                platform: Platform::Swarm,
                available: false,
                detail: "the Docker engine is not part of a Swarm".into(),
            },
            SwarmState::Other(state) => {
                Capability { platform: Platform::Swarm, available: false, detail: format!("the Swarm is {state}") }
            }
        };
        [engine, swarm]
    }
}

/// Control plane → agent, on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlMessage {
    Welcome(Welcome),
    Refused(Refusal),
    HeartbeatAck {
        seq: u64,
    },
    Ping {
        nonce: u64,
    },
    /// The renewed certificate (DER), signed by the control plane's CA.
    CertificateRenewed {
        cert_der: Vec<u8>,
    },
    RenewalRefused {
        reason: String,
    },
}

/// Control plane → agent, on a job stream (one bidirectional stream per job).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobRequest {
    Job(SignedJob),
}

/// Agent → control plane, on a job stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobEvent {
    Accepted {
        job_id: Uuid,
    },
    Progress {
        job_id: Uuid,
        step: String,
        percent: Option<u8>,
    },
    Log(LogChunk),
    Completed {
        job_id: Uuid,
        outcome: JobOutcome,
    },
    /// The job was not run. `job_id` is absent when the envelope could not be read at all.
    Refused {
        job_id: Option<Uuid>,
        reason: JobRejection,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobOutcome {
    Succeeded(JobOutput),
    Failed { message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobOutput {
    None,
    Facts(HostFacts),
    Stack(StackStatus),
    /// What each running container of a project used while it was watched.
    Usage(Vec<ContainerUsage>),
}

/// A container's CPU and memory over a sampling window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerUsage {
    pub container: String,
    pub service: String,
    /// Readings taken.
    pub samples: u32,
    /// Thousandths of a CPU core, on average and at the busiest interval.
    pub cpu_millicores_avg: u32,
    pub cpu_millicores_peak: u32,
    /// The working set (page cache that can be dropped left out).
    pub memory_bytes_avg: u64,
    pub memory_bytes_peak: u64,
    /// The limit the engine enforces, if any.
    pub memory_limit_bytes: Option<u64>,
}

/// What runs of a deployed stack, as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackStatus {
    pub deployment_id: Uuid,
    pub project: String,
    pub services: Vec<ServiceStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub service: String,
    pub containers: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub name: String,
    pub id: String,
    pub state: ContainerState,
    pub health: Option<HealthState>,
    pub restart_count: u32,
    pub config_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Restarting,
    Paused,
    Exited { code: i64 },
    Dead,
    Other(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthState {
    Starting,
    Healthy,
    Unhealthy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// A piece of a log, from a job or a log follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// What produced it, e.g. a service name.
    pub source: String,
    pub stream: LogStream,
    pub timestamp_unix_ms: u64,
    pub data: Vec<u8>,
}
