//! Simulated agents for fleet-scale tests and benchmarks.
//!
//! Every simulated agent is enrolled through the real path (a bulk join token, its own key and
//! CSR) and holds a real mutual-TLS QUIC session with its own certificate. [`ReconnectingAgent`]
//! drives the protocol's own sans-IO `AgentSession` (Hello, heartbeats, the silence that ends a
//! session), answers signed jobs, and after a lost session comes back the way the real agent
//! does: a capped, jittered backoff, and a random share of the longest delay after the control
//! plane said it was shutting down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ed25519_dalek::VerifyingKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use uuid::Uuid;
use windflow_protocol::backoff::Backoff;
use windflow_protocol::io::{read_frame, write_frame};
use windflow_protocol::messages::*;
use windflow_protocol::session::{AgentSession, AgentSessionEvent};
use windflow_protocol::{JobPayload, MAX_FRAME_LEN};

use crate::ControlPlane;

/// The control plane's QUIC close code for its own shutdown.
const CLOSE_SHUTDOWN: u32 = 5;
/// As the real agent (agent/src/link.rs).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

pub struct Identity {
    pub agent_id: Uuid,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Vec<u8>,
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// p50, p99, max and count of a set of figures.
pub fn summary(mut values: Vec<f64>) -> Value {
    values.sort_by(f64::total_cmp);
    json!({ "p50": percentile(&values, 0.5), "p99": percentile(&values, 0.99), "max": values.last().copied().unwrap_or(0.0), "count": values.len() })
}

/// Resident memory (KiB) and CPU time (clock ticks) of a process, from /proc.
pub fn process_usage(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (rss, ticks)
}

pub fn facts(n: usize) -> HostFacts {
    HostFacts {
        hostname: format!("sim-{n}"),
        os: "Simulated Linux".into(),
        arch: std::env::consts::ARCH.into(),
        kernel: "6.1".into(),
        cpus: 2,
        memory_bytes: 4 << 30,
        docker: Some(DockerFacts { version: "26.1".into(), api_version: "1.45".into(), swarm: SwarmState::Inactive }),
    }
}

/// Enrolls `count` agents with one bulk token; their identities and the job key they pin.
pub async fn enroll_all(cp: &ControlPlane, token: &str, count: usize) -> anyhow::Result<(Vec<Identity>, VerifyingKey)> {
    let permits = Arc::new(Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..count {
        let permits = permits.clone();
        let http = cp.http().clone();
        let url = cp.url("/api/v1/agents/enroll");
        let token = token.to_owned();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let key = rcgen::KeyPair::generate()?;
            let csr = rcgen::CertificateParams::default().serialize_request(&key)?.pem()?;
            let response = http
                .post(url)
                .json(&json!({"token": token, "csr_pem": csr, "name": format!("sim-{n}")}))
                .send()
                .await?;
            if !response.status().is_success() {
                bail!("enrollment {n}: {}", response.text().await.unwrap_or_default());
            }
            let answer: Value = response.json().await?;
            let chain =
                CertificateDer::pem_slice_iter(answer["certificate_pem"].as_str().unwrap_or_default().as_bytes())
                    .collect::<Result<Vec<_>, _>>()?;
            let agent_id = Uuid::try_parse(answer["agent_id"].as_str().unwrap_or_default())?;
            Ok::<_, anyhow::Error>((
                Identity { agent_id, chain, key: key.serialize_der() },
                answer["job_public_key"].as_str().unwrap_or_default().to_owned(),
            ))
        });
    }
    let mut identities = Vec::with_capacity(count);
    let mut job_key = String::new();
    while let Some(result) = tasks.join_next().await {
        let (identity, key) = result??;
        identities.push(identity);
        job_key = key;
    }
    let bytes: [u8; 32] = hex::decode(&job_key)?.try_into().map_err(|_| anyhow::anyhow!("bad job key"))?;
    Ok((identities, VerifyingKey::from_bytes(&bytes)?))
}

pub fn client_config(ca_pem: &str, identity: &Identity) -> anyhow::Result<quinn::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
    let key = PrivateKeyDer::try_from(identity.key.clone()).map_err(|e| anyhow::anyhow!(e))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(identity.chain.clone(), key)?;
    tls.alpn_protocols = vec![b"windflow/1".to_vec()];
    let mut config = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(16u8.into());
    transport.max_concurrent_uni_streams(0u8.into());
    transport.max_idle_timeout(Some(Duration::from_secs(30).try_into()?));
    transport.initial_rtt(Duration::from_millis(100));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A client endpoint shared by up to 500 simulated agents. Its socket gets a large receive
/// buffer: the handshake flights of hundreds of agents arrive at once, and a dropped datagram
/// costs a retransmission timeout, which would measure the simulation, not the control plane.
pub fn client_endpoint() -> anyhow::Result<quinn::Endpoint> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(16 * 1024 * 1024);
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    let runtime = quinn::default_runtime().context("no async runtime")?;
    Ok(quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket.into(), runtime)?)
}

/// What the fleet did, counted across its agents.
#[derive(Debug, Default)]
pub struct FleetCounters {
    /// Agents with an established session now.
    pub connected: AtomicUsize,
    /// Sessions established, reconnections included.
    pub sessions: AtomicU64,
    pub jobs: AtomicU64,
    pub log_lines: AtomicU64,
}

/// One simulated agent that keeps coming back until its task is dropped.
pub struct ReconnectingAgent {
    pub n: usize,
    pub agent_id: Uuid,
    pub endpoint: quinn::Endpoint,
    pub config: quinn::ClientConfig,
    pub server: SocketAddr,
    pub job_key: VerifyingKey,
    pub counters: Arc<FleetCounters>,
    /// Log lines per second a followed deployment's log stream carries.
    pub log_lines_per_s: u32,
    /// A broken agent: it holds its session but resets every job stream unanswered.
    pub break_jobs: bool,
}

/// How a session ended.
enum Ended {
    Lost,
    ShuttingDown,
}

impl ReconnectingAgent {
    pub async fn run(self) {
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);
        loop {
            let started = Instant::now();
            let ended = self.session().await;
            if started.elapsed() >= Duration::from_secs(10) {
                backoff.reset();
            }
            let delay = match ended {
                Ok(Ended::ShuttingDown) => {
                    backoff.reset();
                    BACKOFF_MAX.mul_f64(rand::random::<f64>())
                }
                Ok(Ended::Lost) if backoff.attempt() == 0 => (BACKOFF_MAX / 2).mul_f64(rand::random::<f64>()),
                Ok(Ended::Lost) | Err(_) => backoff.next_delay(rand::random()).saturating_sub(started.elapsed()),
            };
            tokio::time::sleep(delay).await;
        }
    }

    async fn session(&self) -> anyhow::Result<Ended> {
        let connecting = self.endpoint.connect_with(self.config.clone(), self.server, "127.0.0.1")?;
        let connection = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await.context("handshake timed out")??;
        let (mut send, mut recv) = connection.open_bi().await?;
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "sim".into(),
            agent_id: self.agent_id,
            facts: facts(self.n),
        };
        let mut session = AgentSession::new(hello, Instant::now(), Duration::from_secs(10));
        let jobs = tokio::spawn(serve_jobs(
            self.n,
            connection.clone(),
            self.agent_id,
            self.job_key,
            self.counters.clone(),
            self.log_lines_per_s,
            self.break_jobs,
        ));
        let mut established = false;
        let (frames_tx, mut frames) = tokio::sync::mpsc::channel(16);
        let reader = tokio::spawn(async move {
            while let Ok(Some(message)) = read_frame::<ControlMessage, _>(&mut recv, MAX_FRAME_LEN).await {
                if frames_tx.send(message).await.is_err() {
                    break;
                }
            }
        });
        let ended = loop {
            while let Some(message) = session.poll_transmit() {
                if write_frame(&mut send, &message, MAX_FRAME_LEN).await.is_err() {
                    break;
                }
            }
            let deadline = session.poll_timeout().map(tokio::time::Instant::from_std);
            let event = tokio::select! {
                frame = frames.recv() => match frame {
                    Some(message) => session.handle(message, Instant::now()),
                    None => break closed(&connection),
                },
                () = async { match deadline { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                    session.handle_timeout(Instant::now())
                }
                _ = connection.closed() => break closed(&connection),
            };
            match event {
                Some(AgentSessionEvent::Established(_)) => {
                    established = true;
                    self.counters.connected.fetch_add(1, Ordering::Relaxed);
                    self.counters.sessions.fetch_add(1, Ordering::Relaxed);
                }
                Some(AgentSessionEvent::Closed(_)) => break Ended::Lost,
                _ => {}
            }
        };
        if established {
            self.counters.connected.fetch_sub(1, Ordering::Relaxed);
        }
        jobs.abort();
        reader.abort();
        connection.close(0u32.into(), b"agent closing");
        Ok(ended)
    }
}

fn closed(connection: &quinn::Connection) -> Ended {
    match connection.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) if close.error_code == CLOSE_SHUTDOWN.into() => {
            Ended::ShuttingDown
        }
        _ => Ended::Lost,
    }
}

async fn serve_jobs(
    n: usize,
    connection: quinn::Connection,
    agent_id: Uuid,
    job_key: VerifyingKey,
    counters: Arc<FleetCounters>,
    log_lines_per_s: u32,
    break_jobs: bool,
) {
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        if break_jobs {
            let _ = send.reset(0u32.into());
            let _ = recv.stop(0u32.into());
            continue;
        }
        let counters = counters.clone();
        tokio::spawn(async move {
            let Ok(Some(JobRequest::Job(job))) = read_frame::<JobRequest, _>(&mut recv, MAX_FRAME_LEN).await else {
                return;
            };
            let now_ms = u64::try_from(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0),
            )
            .unwrap_or(0);
            let envelope = match job.verify(&job_key, agent_id, now_ms) {
                Ok(envelope) => envelope,
                Err(reason) => {
                    let refused = JobEvent::Refused { job_id: job.unverified_job_id(), reason };
                    let _ = write_frame(&mut send, &refused, MAX_FRAME_LEN).await;
                    return;
                }
            };
            counters.jobs.fetch_add(1, Ordering::Relaxed);
            let job_id = envelope.job_id;
            let _ = write_frame(&mut send, &JobEvent::Accepted { job_id }, MAX_FRAME_LEN).await;
            let output = match envelope.payload {
                JobPayload::CollectFacts => JobOutput::Facts(facts(n)),
                JobPayload::DeployStack { deployment_id, spec } => {
                    JobOutput::Stack(simulated_status(n, deployment_id, &spec))
                }
                JobPayload::StreamLogs { follow: true, project, .. } => {
                    stream_logs(&mut send, &project, log_lines_per_s, &counters).await;
                    JobOutput::None
                }
                _ => JobOutput::None,
            };
            let completed = JobEvent::Completed { job_id, outcome: JobOutcome::Succeeded(output) };
            let _ = write_frame(&mut send, &completed, MAX_FRAME_LEN).await;
            let _ = send.finish();
        });
    }
}

/// Every service of `spec` running, one container per replica.
pub fn simulated_status(n: usize, deployment_id: Uuid, spec: &windflow_protocol::stack::StackSpec) -> StackStatus {
    StackStatus {
        deployment_id,
        project: spec.project.clone(),
        services: spec
            .services
            .iter()
            .map(|s| ServiceStatus {
                service: s.name.clone(),
                containers: (1..=s.replicas)
                    .map(|r| ContainerStatus {
                        name: format!("{}-{}-{r}", spec.project, s.name),
                        id: format!("sim{n}{r}"),
                        state: ContainerState::Running,
                        health: None,
                        restart_count: 0,
                        config_hash: s.config_hash(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// A log stream at a steady pace until the control plane stops it.
async fn stream_logs(send: &mut quinn::SendStream, project: &str, per_s: u32, counters: &FleetCounters) {
    let stopped = send.stopped();
    tokio::pin!(stopped);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(per_s.max(1))));
    let mut line = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                line += 1;
                let chunk = LogChunk {
                    source: format!("{project}-app-1"),
                    stream: LogStream::Stdout,
                    timestamp_unix_ms: 0,
                    data: format!("line {line} of a simulated service\n").into_bytes(),
                };
                if write_frame(send, &JobEvent::Log(chunk), MAX_FRAME_LEN).await.is_err() {
                    return;
                }
                counters.log_lines.fetch_add(1, Ordering::Relaxed);
            }
            _ = &mut stopped => return,
        }
    }
}

/// Enrolls and starts `count` reconnecting agents against `cp`; they run until the returned
/// set is dropped.
pub async fn start_fleet(
    cp: &mut ControlPlane,
    count: usize,
    log_lines_per_s: u32,
) -> anyhow::Result<(tokio::task::JoinSet<()>, Arc<FleetCounters>, Vec<Uuid>)> {
    start_fleet_with(cp, count, log_lines_per_s, false).await
}

/// As [`start_fleet`]; with `break_jobs`, agents that hold their sessions but break every job.
pub async fn start_fleet_with(
    cp: &mut ControlPlane,
    count: usize,
    log_lines_per_s: u32,
    break_jobs: bool,
) -> anyhow::Result<(tokio::task::JoinSet<()>, Arc<FleetCounters>, Vec<Uuid>)> {
    let token = cp.join_token(u32::try_from(count).unwrap_or(u32::MAX), 3600).await;
    let (identities, job_key) = enroll_all(cp, token["token"].as_str().unwrap_or_default(), count).await?;
    let server: SocketAddr = format!("127.0.0.1:{}", cp.quic_port).parse()?;
    let ca = cp.ca_pem();
    let counters = Arc::new(FleetCounters::default());
    let mut agents = tokio::task::JoinSet::new();
    let mut endpoint = client_endpoint()?;
    for (n, identity) in identities.iter().enumerate() {
        if n % 500 == 0 && n > 0 {
            endpoint = client_endpoint()?;
        }
        let agent = ReconnectingAgent {
            n,
            agent_id: identity.agent_id,
            endpoint: endpoint.clone(),
            config: client_config(&ca, identity)?,
            server,
            job_key,
            counters: counters.clone(),
            log_lines_per_s,
            break_jobs,
        };
        agents.spawn(agent.run());
    }
    Ok((agents, counters, identities.iter().map(|i| i.agent_id).collect()))
}
