//! Counters the control plane exposes at `/metrics` in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub agent_handshakes_accepted: AtomicU64,
    /// TLS refused the agent: no certificate, foreign CA, expired.
    pub agent_handshakes_refused: AtomicU64,
    /// The certificate chained to our CA but named a revoked agent.
    pub agent_certificates_revoked: AtomicU64,
    /// A session ended by a refusal (unknown agent, wrong version, identity mismatch).
    pub agent_sessions_refused: AtomicU64,
    /// A frame that was oversize or not a valid message.
    pub agent_frames_rejected: AtomicU64,
    pub agent_heartbeats: AtomicU64,
    pub agent_status_reports: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters, then the given gauges as (name, help, value).
    pub fn render(&self, gauges: &[(&str, &str, u64)]) -> String {
        let mut out = String::new();
        let counters = [
            (
                "windflow_agent_handshakes_accepted_total",
                "Agent QUIC handshakes that completed.",
                &self.agent_handshakes_accepted,
            ),
            (
                "windflow_agent_handshakes_refused_total",
                "Agent QUIC handshakes refused by TLS (no, foreign or expired certificate).",
                &self.agent_handshakes_refused,
            ),
            (
                "windflow_agent_certificates_revoked_total",
                "Handshakes refused because the agent is revoked.",
                &self.agent_certificates_revoked,
            ),
            (
                "windflow_agent_sessions_refused_total",
                "Agent sessions refused after the handshake.",
                &self.agent_sessions_refused,
            ),
            (
                "windflow_agent_frames_rejected_total",
                "Oversize or malformed frames received from agents.",
                &self.agent_frames_rejected,
            ),
            ("windflow_agent_heartbeats_total", "Heartbeats received from agents.", &self.agent_heartbeats),
            ("windflow_agent_status_reports_total", "Status reports received from agents.", &self.agent_status_reports),
        ];
        for (name, help, value) in counters {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
        }
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        out
    }
}
