//! Golden bytes for every message: a change of any wire encoding fails here first.
//!
//! Re-bless deliberately (after a reviewed, compatible change) with
//! `WINDFLOW_BLESS=1 cargo test -p windflow-protocol --test golden`.

use std::path::PathBuf;

use serde::Serialize;
use uuid::Uuid;
use windflow_protocol::messages::*;
use windflow_protocol::{JobEnvelope, JobPayload, JobRejection, MAX_FRAME_LEN, encode_frame};

fn facts() -> HostFacts {
    HostFacts {
        hostname: "node-1".into(),
        os: "Debian GNU/Linux 12 (bookworm)".into(),
        arch: "x86_64".into(),
        kernel: "6.1.0".into(),
        cpus: 4,
        memory_bytes: 8 << 30,
        docker: Some(DockerFacts {
            version: "26.1.5".into(),
            api_version: "1.45".into(),
            swarm: SwarmState::Manager { node_id: "abc".into() },
        }),
    }
}

const AGENT: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00a1);
const JOB: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00b2);

fn check<T: Serialize>(name: &str, message: &T) {
    let bytes = encode_frame(message, MAX_FRAME_LEN).expect("encodes");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{name}.hex"));
    let actual = hex::encode(&bytes);
    if std::env::var_os("WINDFLOW_BLESS").is_some() {
        std::fs::write(&path, format!("{actual}\n")).expect("write fixture");
        return;
    }
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("missing fixture {}; bless it", path.display()));
    assert_eq!(actual, expected.trim(), "wire encoding of {name} changed");
}

#[test]
fn agent_messages() {
    check(
        "agent_hello",
        &AgentMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            agent_id: AGENT,
            facts: facts(),
        }),
    );
    check("agent_heartbeat", &AgentMessage::Heartbeat { seq: 129 });
    check(
        "agent_status",
        &AgentMessage::StatusReport(StatusReport { facts: facts(), running_jobs: 2, uptime_s: 3600 }),
    );
    check(
        "agent_event",
        &AgentMessage::Event(AgentEvent {
            at_unix_ms: 1_700_000_000_000,
            kind: AgentEventKind::JobRefused { job_id: Some(JOB), reason: JobRejection::Replayed { job_id: JOB } },
        }),
    );
    check("agent_pong", &AgentMessage::Pong { nonce: 7 });
    check("agent_renew", &AgentMessage::RenewCertificate { csr_der: vec![0x30, 0x82] });
}

#[test]
fn control_messages() {
    check(
        "control_welcome",
        &ControlMessage::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            heartbeat_interval_ms: 5000,
            server_time_unix_ms: 1_700_000_000_000,
        }),
    );
    check("control_refused", &ControlMessage::Refused(Refusal::UnsupportedVersion { supported: 1, offered: 2 }));
    check("control_heartbeat_ack", &ControlMessage::HeartbeatAck { seq: 129 });
    check("control_ping", &ControlMessage::Ping { nonce: 7 });
    check("control_cert", &ControlMessage::CertificateRenewed { cert_der: vec![0x30, 0x82] });
    check("control_renewal_refused", &ControlMessage::RenewalRefused { reason: "no".into() });
}

#[test]
fn job_stream_messages() {
    let envelope = JobEnvelope {
        job_id: JOB,
        agent_id: AGENT,
        issued_at_unix_ms: 1_700_000_000_000,
        expires_at_unix_ms: 1_700_000_060_000,
        payload: JobPayload::CollectFacts,
    };
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    check("job_request", &JobRequest::Job(envelope.sign(&key)));
    check("job_accepted", &JobEvent::Accepted { job_id: JOB });
    check("job_progress", &JobEvent::Progress { job_id: JOB, step: "pulling".into(), percent: Some(40) });
    check(
        "job_log",
        &JobEvent::Log(LogChunk {
            source: "web".into(),
            stream: LogStream::Stderr,
            timestamp_unix_ms: 1_700_000_000_000,
            data: b"hello\n".to_vec(),
        }),
    );
    check(
        "job_completed",
        &JobEvent::Completed { job_id: JOB, outcome: JobOutcome::Succeeded(JobOutput::Facts(facts())) },
    );
    check("job_failed", &JobEvent::Completed { job_id: JOB, outcome: JobOutcome::Failed { message: "boom".into() } });
    check("job_refused", &JobEvent::Refused { job_id: None, reason: JobRejection::BadSignature });
}
