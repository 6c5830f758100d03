//! The WindFlow agent: enrolls once with a join token, then holds one outbound mutual-TLS QUIC
//! connection to the control plane, reports its host, and applies signed jobs.
//!
//! It must never open a listening port, never run a job whose signature, addressee, validity
//! window or novelty it has not checked, and never send its private key anywhere.

pub mod driver;
pub mod enroll;
pub mod facts;
pub mod identity;
pub mod jobs;
pub mod journal;
pub mod link;
pub mod watch;

/// Exit code of `windflow-agent run` when the control plane revoked this agent: restarting
/// it cannot help, so service managers should not.
pub const EXIT_REVOKED: i32 = 3;

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
