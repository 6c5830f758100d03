//! Counters the control plane exposes at `/metrics` in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the HTTP latency histogram buckets.
const LATENCY_BUCKETS: [f64; 11] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

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
    /// Requests by (method, route, status).
    http_requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// Latency by route.
    http_latency: Mutex<BTreeMap<String, Histogram>>,
    /// Jobs by outcome (succeeded, failed, refused, link_error, timeout, not_connected).
    jobs: Mutex<BTreeMap<&'static str, u64>>,
    /// Refused handshakes by reason (the TLS alert: unknown_ca, certificate_expired, …).
    handshake_refusals: Mutex<BTreeMap<&'static str, u64>>,
    /// Server-Sent Event streams open now (events, logs, audit).
    pub sse_open: AtomicI64,
}

/// A gauge with one label: (name, help, label name, [(label value, value)]).
pub type LabelledGauge<'a> = (&'a str, &'a str, &'a str, Vec<(String, u64)>);

/// Counts one open SSE stream for as long as it lives.
#[derive(Debug)]
pub struct SseGuard(std::sync::Arc<Metrics>);

impl SseGuard {
    pub fn new(metrics: std::sync::Arc<Metrics>) -> Self {
        metrics.sse_open.fetch_add(1, Ordering::Relaxed);
        Self(metrics)
    }
}

/// `stream`, counted in `sse_open` until it is dropped.
pub fn tracked<S: futures_util::Stream>(
    stream: S,
    metrics: std::sync::Arc<Metrics>,
) -> impl futures_util::Stream<Item = S::Item> {
    use futures_util::StreamExt;
    let guard = SseGuard::new(metrics);
    stream.map(move |item| {
        let _open = &guard;
        item
    })
}

impl Drop for SseGuard {
    fn drop(&mut self) {
        self.0.sse_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        *self
            .http_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default() += 1;
        let mut latency = self.http_latency.lock().unwrap_or_else(|e| e.into_inner());
        let histogram = latency.entry(route.to_owned()).or_default();
        let seconds = took.as_secs_f64();
        for (bucket, bound) in histogram.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    pub fn observe_job(&self, outcome: &'static str) {
        *self.jobs.lock().unwrap_or_else(|e| e.into_inner()).entry(outcome).or_default() += 1;
    }

    /// Counts a refused handshake, in the total and under its reason.
    pub fn observe_handshake_refusal(&self, reason: &'static str) {
        Self::inc(&self.agent_handshakes_refused);
        *self.handshake_refusals.lock().unwrap_or_else(|e| e.into_inner()).entry(reason).or_default() += 1;
    }

    /// Everything, in the Prometheus text format, with the given gauges after the counters.
    pub fn render(&self, gauges: &[(&str, &str, u64)], labelled: &[LabelledGauge<'_>]) -> String {
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
        let _ = writeln!(
            out,
            "# HELP windflow_http_requests_total API requests by method, route and status.\n# TYPE windflow_http_requests_total counter"
        );
        for ((method, route, status), count) in self.http_requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(
                out,
                "windflow_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP windflow_http_request_duration_seconds API latency by route.\n# TYPE windflow_http_request_duration_seconds histogram"
        );
        for (route, histogram) in self.http_latency.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            for (bound, count) in LATENCY_BUCKETS.iter().zip(histogram.buckets) {
                let _ = writeln!(
                    out,
                    "windflow_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "windflow_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                histogram.count
            );
            let _ = writeln!(out, "windflow_http_request_duration_seconds_sum{{route=\"{route}\"}} {}", histogram.sum);
            let _ =
                writeln!(out, "windflow_http_request_duration_seconds_count{{route=\"{route}\"}} {}", histogram.count);
        }
        let _ = writeln!(
            out,
            "# HELP windflow_jobs_total Signed jobs sent to agents, by outcome.\n# TYPE windflow_jobs_total counter"
        );
        for (outcome, count) in self.jobs.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "windflow_jobs_total{{outcome=\"{outcome}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "# HELP windflow_agent_handshake_refusals_total Agent handshakes refused, by reason.\n# TYPE windflow_agent_handshake_refusals_total counter"
        );
        for (reason, count) in self.handshake_refusals.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "windflow_agent_handshake_refusals_total{{reason=\"{reason}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "# HELP windflow_sse_streams_open Server-Sent Event streams open now.\n# TYPE windflow_sse_streams_open gauge\nwindflow_sse_streams_open {}",
            self.sse_open.load(Ordering::Relaxed)
        );
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        for (name, help, label, values) in labelled {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (label_value, value) in values {
                let _ = writeln!(out, "{name}{{{label}=\"{label_value}\"}} {value}");
            }
        }
        out
    }
}
