//! The real agent against a scripted control plane over real QUIC: it must refuse every job
//! that is tampered with, expired or meant for another agent, say why on the job stream, report
//! it on the control stream, run the good ones, and never run one job twice.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use uuid::Uuid;
use windflow_protocol::io::{read_frame, write_frame};
use windflow_protocol::messages::*;
use windflow_protocol::{JobEnvelope, JobPayload, JobRejection, MAX_FRAME_LEN, SignedJob};
use windflow_tests::{Process, bin, free_udp_port};

struct ScriptedControlPlane {
    endpoint: quinn::Endpoint,
    job_key: SigningKey,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Writes an agent data directory as `windflow-agent enroll` would, from a CA made here.
fn provision(
    dir: &Path,
    agent_id: Uuid,
    port: u16,
    job_key: &SigningKey,
) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "scripted CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let issuer = rcgen::Issuer::new(ca, &ca_key);

    let issue = |cn: &str, san: Option<&str>| {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(san.map(|s| vec![s.to_owned()]).unwrap_or_default()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        (params.signed_by(&key, &issuer).expect("signed"), key)
    };
    let (agent_cert, agent_key) = issue(&agent_id.to_string(), None);
    let (server_cert, server_key) = issue("scripted control plane", Some("127.0.0.1"));

    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("ca");
    std::fs::write(dir.join("cert.pem"), agent_cert.pem()).expect("cert");
    std::fs::write(dir.join("key.pem"), agent_key.serialize_pem()).expect("key");
    let identity = json!({
        "version": 1,
        "agent_id": agent_id,
        "server_url": "https://127.0.0.1:1",
        "quic_endpoint": format!("127.0.0.1:{port}"),
        "server_name": "127.0.0.1",
        "job_public_key": hex::encode(job_key.verifying_key().as_bytes()),
    });
    std::fs::write(dir.join("agent.json"), identity.to_string()).expect("identity");
    (server_cert.der().clone(), PrivateKeyDer::try_from(server_key.serialize_der()).expect("key"))
}

impl ScriptedControlPlane {
    fn start(port: u16, cert: CertificateDer<'static>, key: PrivateKeyDer<'static>, job_key: SigningKey) -> Self {
        // The agent's certificate is not checked here: this test is about the job layer, which
        // must hold even on an authenticated connection.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("server cert");
        tls.alpn_protocols = vec![b"windflow/1".to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("QUIC TLS");
        let server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        Self { endpoint: quinn::Endpoint::server(server, addr).expect("bind"), job_key }
    }
}

async fn send_job(connection: &quinn::Connection, job: SignedJob) -> JobEvent {
    let (mut send, mut recv) = connection.open_bi().await.expect("job stream");
    write_frame(&mut send, &JobRequest::Job(job), MAX_FRAME_LEN).await.expect("write");
    let _ = send.finish();
    loop {
        let event: JobEvent = read_frame(&mut recv, MAX_FRAME_LEN).await.expect("read").expect("an answer");
        if !matches!(event, JobEvent::Accepted { .. } | JobEvent::Progress { .. } | JobEvent::Log(_)) {
            return event;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_refuses_tampered_expired_and_misaddressed_jobs_and_never_runs_a_job_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent_id = Uuid::now_v7();
    let job_key = SigningKey::from_bytes(&rand_seed());
    let port = free_udp_port();
    let (cert, key) = provision(&dir.path().join("agent"), agent_id, port, &job_key);
    let cp = ScriptedControlPlane::start(port, cert, key, job_key);

    let mut command = std::process::Command::new(bin("windflow-agent"));
    command.arg("run").arg("--data-dir").arg(dir.path().join("agent"));
    let _agent = Process::spawn(&mut command, dir.path().join("agent.log")).expect("agent");

    let connection = tokio::time::timeout(Duration::from_secs(10), async {
        cp.endpoint.accept().await.expect("incoming").await.expect("handshake")
    })
    .await
    .expect("the agent connects");
    let (mut control_send, mut control_recv) = connection.accept_bi().await.expect("control stream");
    let hello: AgentMessage = read_frame(&mut control_recv, MAX_FRAME_LEN).await.expect("read").expect("hello");
    assert!(matches!(&hello, AgentMessage::Hello(h) if h.agent_id == agent_id), "{hello:?}");
    let welcome = ControlMessage::Welcome(Welcome {
        protocol_version: PROTOCOL_VERSION,
        heartbeat_interval_ms: 60_000,
        server_time_unix_ms: now_ms(),
    });
    write_frame(&mut control_send, &welcome, MAX_FRAME_LEN).await.expect("welcome");

    let envelope = |agent: Uuid, expires_in_ms: i64| JobEnvelope {
        job_id: Uuid::now_v7(),
        agent_id: agent,
        issued_at_unix_ms: now_ms(),
        expires_at_unix_ms: (now_ms() as i64 + expires_in_ms) as u64,
        payload: JobPayload::CollectFacts,
    };

    // A good job runs.
    let good = envelope(agent_id, 60_000).sign(&cp.job_key);
    let answer = send_job(&connection, good.clone()).await;
    assert!(
        matches!(answer, JobEvent::Completed { outcome: JobOutcome::Succeeded(JobOutput::Facts(_)), .. }),
        "{answer:?}"
    );

    // The same job again (a replay, or a redelivery after a lost answer) is not run again: the
    // agent answers with the outcome it recorded the first time.
    let replay = send_job(&connection, good.clone()).await;
    assert_eq!(replay, answer);

    // Tampered: one bit of the envelope flipped after signing.
    let mut tampered = envelope(agent_id, 60_000).sign(&cp.job_key);
    let last = tampered.envelope.len() - 1;
    tampered.envelope[last] ^= 1;
    assert!(matches!(
        send_job(&connection, tampered).await,
        JobEvent::Refused { reason: JobRejection::BadSignature, .. }
    ));

    // Signed by someone else's key.
    let forged = envelope(agent_id, 60_000).sign(&SigningKey::from_bytes(&[9; 32]));
    assert!(matches!(
        send_job(&connection, forged).await,
        JobEvent::Refused { reason: JobRejection::BadSignature, .. }
    ));

    // Expired.
    let expired = envelope(agent_id, -1).sign(&cp.job_key);
    assert!(matches!(
        send_job(&connection, expired).await,
        JobEvent::Refused { reason: JobRejection::Expired { .. }, .. }
    ));

    // Meant for another agent.
    let other = Uuid::now_v7();
    let misaddressed = envelope(other, 60_000).sign(&cp.job_key);
    assert_eq!(
        send_job(&connection, misaddressed.clone()).await,
        JobEvent::Refused {
            job_id: misaddressed.unverified_job_id(),
            reason: JobRejection::WrongAgent { addressed_to: other }
        }
    );

    // Every refusal was also reported on the control stream.
    let mut reported = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while reported < 4 && tokio::time::Instant::now() < deadline {
        let message =
            tokio::time::timeout_at(deadline, read_frame::<AgentMessage, _>(&mut control_recv, MAX_FRAME_LEN)).await;
        match message {
            Ok(Ok(Some(AgentMessage::Event(AgentEvent { kind: AgentEventKind::JobRefused { .. }, .. })))) => {
                reported += 1
            }
            Ok(Ok(Some(_))) => continue,
            other => panic!("control stream ended: {other:?}"),
        }
    }
    assert_eq!(reported, 4, "each refusal is reported back");
}

fn rand_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    seed[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    seed
}
