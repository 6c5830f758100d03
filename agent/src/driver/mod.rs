//! Platform drivers: what turns a `StackSpec` into running workloads on this host: the Docker
//! engine's containers, or a Swarm's services when this host is a manager.

pub mod docker;
pub mod swarm;

/// Progress of a long operation, reported as it happens (pulls, creates, health waits).
pub type ProgressSender = tokio::sync::mpsc::UnboundedSender<(String, Option<u8>)>;

/// Sends a progress line; a gone receiver is fine (nobody is watching).
pub fn report(progress: &ProgressSender, step: impl Into<String>, percent: Option<u8>) {
    let _ = progress.send((step.into(), percent));
}
