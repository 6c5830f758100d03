//! Platform drivers: what turns a `StackSpec` into running workloads on this host.
//! Today the Docker engine; Swarm, Kubernetes and libvirt join behind the same shape.

pub mod docker;

/// Progress of a long operation, reported as it happens (pulls, creates, health waits).
pub type ProgressSender = tokio::sync::mpsc::UnboundedSender<(String, Option<u8>)>;

/// Sends a progress line; a gone receiver is fine (nobody is watching).
pub fn report(progress: &ProgressSender, step: impl Into<String>, percent: Option<u8>) {
    let _ = progress.send((step.into(), percent));
}
