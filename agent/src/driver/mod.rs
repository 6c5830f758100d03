//! Platform drivers: what turns a `StackSpec` into running workloads: the Docker engine's
//! containers, a Swarm's services when this host is a manager, a Kubernetes cluster's objects
//! when the agent has access to one, or a libvirt hypervisor's virtual machines.

pub mod docker;
pub mod helm;
pub mod kubernetes;
pub mod libvirt;
pub mod swarm;
pub mod usage;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot reach the Docker engine: {0}")]
    Unreachable(String),
    #[error("cannot reach the Kubernetes API: {0}")]
    ClusterUnreachable(String),
    #[error("{context}: {message}")]
    Engine { context: String, message: String },
    #[error("{0}")]
    /// The platform answered, but what was asked did not happen (a dependency, a rollout).
    Failed(String),
}

/// Progress of a long operation, reported as it happens (pulls, creates, health waits).
pub type ProgressSender = tokio::sync::mpsc::UnboundedSender<(String, Option<u8>)>;

/// Sends a progress line; a gone receiver is fine (nobody is watching).
pub fn report(progress: &ProgressSender, step: impl Into<String>, percent: Option<u8>) {
    let _ = progress.send((step.into(), percent));
}
