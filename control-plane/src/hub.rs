//! The QUIC hub: accepts agents over mutual TLS, runs one control-stream session per agent,
//! and sends signed jobs on their own streams.
//!
//! The protocol logic is `windflow_protocol::session`; this module only pumps QUIC streams into
//! it and acts on its events. Live state (who is connected, last seen, facts) is kept in memory
//! and written to the store only when a session starts or ends: heartbeats never hit the disk.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;
use windflow_protocol::io::{StreamError, read_frame, write_frame};
use windflow_protocol::messages::{
    AgentMessage, ControlMessage, HostFacts, JobEvent, JobOutcome, JobRequest, StackStatus,
};
use windflow_protocol::session::{CloseReason, ControlSession, ControlSessionEvent};
use windflow_protocol::{FrameDecoder, JobEnvelope, JobPayload, MAX_FRAME_LEN, Refusal};

use crate::agents;
use crate::audit::{AuditLog, Fact};
use crate::metrics::Metrics;
use crate::pki::{Pki, agent_id_from_certificate};
use crate::store::Store;

/// Streams a fan-out keeps in flight at once: enough to fill the link, few enough that a large
/// fleet does not overflow the UDP receive buffers.
const FAN_OUT_IN_FLIGHT: usize = 1000;
/// Receive buffer asked for on the QUIC socket (the kernel caps it at net.core.rmem_max): the
/// default of about 200 KB drops datagrams when a thousand agents handshake at once.
const UDP_RECEIVE_BUFFER: usize = 32 * 1024 * 1024;

/// Largest read from the control stream at once.
const READ_CHUNK: usize = 64 * 1024;

/// Link failures (a job stream broken or unanswered) in a row that open an agent's circuit, and
/// how long it stays open: jobs for that agent then fail at once instead of each waiting for its
/// timeout. A new session closes the circuit (a fresh link).
pub const LINK_FAILURES: u32 = 3;
pub const LINK_PAUSE: Duration = Duration::from_secs(10);

/// ALPN of the agent link; a client speaking anything else is refused by TLS.
pub const ALPN: &[u8] = b"windflow/1";

/// QUIC application close codes, so an agent can tell why it was cut off.
pub mod close_code {
    pub const NORMAL: u32 = 0;
    pub const REVOKED: u32 = 1;
    pub const REFUSED: u32 = 2;
    pub const BAD_FRAME: u32 = 3;
    pub const REPLACED: u32 = 4;
    pub const SHUTDOWN: u32 = 5;
}

#[derive(Debug, Clone)]
pub struct HubConfig {
    pub heartbeat_interval: Duration,
    pub hello_timeout: Duration,
    pub agent_cert_lifetime: Duration,
    pub max_frame: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(2),
            hello_timeout: Duration::from_secs(10),
            agent_cert_lifetime: Duration::from_secs(7 * 86400),
            max_frame: MAX_FRAME_LEN,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("the agent is not connected")]
    NotConnected,
    #[error("the agent did not answer in time")]
    Timeout,
    #[error("the connection to the agent failed: {0}")]
    Link(String),
    #[error("the agent refused the job: {0}")]
    JobRefused(windflow_protocol::JobRejection),
    #[error("{0}")]
    JobFailed(String),
    #[error("jobs for this agent are paused for {} s: the last {LINK_FAILURES} failed on the link", .retry_in.as_secs_f64().ceil())]
    CircuitOpen { retry_in: Duration },
}

enum Command {
    Ping(oneshot::Sender<Duration>),
}

/// What the API shows about a connected agent.
#[derive(Debug, Clone)]
pub struct LiveStatus {
    pub connected_since_unix_ms: u64,
    pub last_seen_unix_ms: u64,
    pub facts: HostFacts,
    pub remote_address: SocketAddr,
    pub capabilities: Option<Vec<windflow_protocol::Capability>>,
}

struct LiveAgent {
    connection: quinn::Connection,
    commands: mpsc::Sender<Command>,
    connected_since_unix_ms: u64,
    last_seen_unix_ms: Arc<AtomicU64>,
    facts: HostFacts,
    capabilities: Option<Vec<windflow_protocol::Capability>>,
}

pub struct Hub {
    store: Arc<dyn Store>,
    pki: Arc<Pki>,
    config: HubConfig,
    live: Mutex<HashMap<Uuid, LiveAgent>>,
    revoked: Arc<RwLock<HashSet<Uuid>>>,
    /// The latest observed state of each deployment, as its agent last reported it.
    observed: Mutex<HashMap<Uuid, StackStatus>>,
    /// Woken when an agent connects or reports, so the reconciler looks again.
    changes: tokio::sync::Notify,
    pub metrics: Arc<Metrics>,
    audit: Arc<AuditLog>,
    /// One circuit breaker per agent link, by agent id.
    pub links: crate::breaker::Breakers,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("connected", &self.connected_count()).finish_non_exhaustive()
    }
}

pub fn unix_ms() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

impl Hub {
    pub fn new(
        store: Arc<dyn Store>,
        pki: Arc<Pki>,
        config: HubConfig,
        metrics: Arc<Metrics>,
        audit: Arc<AuditLog>,
    ) -> Result<Arc<Self>, crate::store::StoreError> {
        let revoked =
            agents::list(store.as_ref())?.into_iter().filter(|a| a.revoked_at_unix_s.is_some()).map(|a| a.id).collect();
        Ok(Arc::new(Self {
            store,
            pki,
            config,
            live: Mutex::new(HashMap::new()),
            revoked: Arc::new(RwLock::new(revoked)),
            observed: Mutex::new(HashMap::new()),
            changes: tokio::sync::Notify::new(),
            metrics,
            audit,
            links: crate::breaker::Breakers::new(LINK_FAILURES, LINK_PAUSE),
        }))
    }

    /// The QUIC endpoint: TLS 1.3, client certificates from our CA required, revoked agents
    /// refused during the handshake.
    pub fn endpoint(&self, addr: SocketAddr) -> anyhow::Result<quinn::Endpoint> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.pki.ca_cert_der())?;
        let inner =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
        let verifier =
            Arc::new(AgentCertVerifier { inner, revoked: self.revoked.clone(), metrics: self.metrics.clone() });
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.pki.server_cert_chain(), self.pki.server_key_der())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        // An agent opens exactly one stream (control); jobs and log follows are ours to open.
        transport.max_concurrent_bidi_streams(2u8.into());
        transport.max_concurrent_uni_streams(0u8.into());
        transport.max_idle_timeout(Some(Duration::from_secs(30).try_into()?));
        server.transport_config(Arc::new(transport));
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        if let Err(error) = socket.set_recv_buffer_size(UDP_RECEIVE_BUFFER) {
            tracing::warn!(%error, "could not enlarge the QUIC receive buffer");
        }
        socket.bind(&addr.into())?;
        let runtime = quinn::default_runtime().ok_or_else(|| anyhow::anyhow!("no async runtime"))?;
        Ok(quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket.into(), runtime)?)
    }

    /// Accepts agents until `shutdown` resolves, then closes every connection.
    pub async fn run(self: Arc<Self>, endpoint: quinn::Endpoint, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                incoming = endpoint.accept() => match incoming {
                    Some(incoming) => { tokio::spawn(self.clone().handle_incoming(incoming)); }
                    None => break,
                },
                () = &mut shutdown => break,
            }
        }
        endpoint.close(close_code::SHUTDOWN.into(), b"control plane shutting down");
        endpoint.wait_idle().await;
    }

    async fn handle_incoming(self: Arc<Self>, incoming: quinn::Incoming) {
        let remote = incoming.remote_address();
        let connection = match incoming.await {
            Ok(connection) => connection,
            Err(error) => {
                let reason = refusal_reason(&error);
                self.metrics.observe_handshake_refusal(reason);
                tracing::warn!(%remote, %error, reason, "agent handshake refused");
                self.audit.record(Fact {
                    actor: "anonymous".into(),
                    kind: "agent.handshake_refused",
                    object: remote.to_string(),
                    detail: Some(error.to_string()),
                    remote: Some(remote.to_string()),
                    ..Fact::default()
                });
                return;
            }
        };
        Metrics::inc(&self.metrics.agent_handshakes_accepted);
        let Some(agent_id) = peer_agent_id(&connection) else {
            self.refuse(&connection, remote, None, &Refusal::UnknownAgent);
            return;
        };
        match agents::get(self.store.as_ref(), agent_id) {
            Ok(Some(agent)) if agent.revoked_at_unix_s.is_none() => {}
            Ok(Some(_)) => return self.refuse(&connection, remote, Some(agent_id), &Refusal::Revoked),
            Ok(None) => return self.refuse(&connection, remote, Some(agent_id), &Refusal::UnknownAgent),
            Err(error) => {
                tracing::error!(%agent_id, %error, "store read failed while admitting an agent");
                connection.close(close_code::REFUSED.into(), b"internal error");
                return;
            }
        }
        if let Err(error) = self.clone().run_session(agent_id, connection, remote).await {
            tracing::info!(%agent_id, %remote, %error, "agent session ended with an error");
        }
    }

    fn refuse(&self, connection: &quinn::Connection, remote: SocketAddr, agent_id: Option<Uuid>, refusal: &Refusal) {
        Metrics::inc(&self.metrics.agent_sessions_refused);
        tracing::warn!(%remote, agent_id = ?agent_id, %refusal, "agent session refused");
        let code = if *refusal == Refusal::Revoked { close_code::REVOKED } else { close_code::REFUSED };
        self.audit.record(Fact {
            actor: agent_id.map_or_else(|| "anonymous".to_owned(), |id| format!("agent:{id}")),
            kind: "agent.refused",
            object: agent_id.map_or_else(|| remote.to_string(), |id| id.to_string()),
            org_id: agent_id.and_then(|id| self.org_of(id)),
            detail: Some(refusal.to_string()),
            remote: Some(remote.to_string()),
            ..Fact::default()
        });
        connection.close(code.into(), refusal.to_string().as_bytes());
    }

    async fn run_session(
        self: Arc<Self>,
        agent_id: Uuid,
        connection: quinn::Connection,
        remote: SocketAddr,
    ) -> Result<(), StreamError> {
        let (mut send, recv) = match tokio::time::timeout(self.config.hello_timeout, connection.accept_bi()).await {
            Ok(Ok(streams)) => streams,
            Ok(Err(e)) => return Err(StreamError::Io(e.into())),
            Err(_) => {
                connection.close(close_code::REFUSED.into(), b"no control stream opened");
                return Ok(());
            }
        };
        let mut recv = recv;
        // Bytes go through the protocol's decoder on this task: `read_chunk` is cancel-safe, so
        // no reader task and no channel per agent are needed.
        let mut decoder = FrameDecoder::new(self.config.max_frame);
        let mut events: Vec<ControlSessionEvent> = Vec::new();
        let (commands_tx, mut commands) = mpsc::channel(16);
        let mut session =
            ControlSession::new(agent_id, Instant::now(), self.config.heartbeat_interval, self.config.hello_timeout);
        let last_seen = Arc::new(AtomicU64::new(unix_ms()));
        let mut pending_pings: HashMap<u64, oneshot::Sender<Duration>> = HashMap::new();
        let mut registered = false;

        let outcome = 'session: loop {
            if let Err(error) = flush(&mut session, &mut send, self.config.max_frame).await {
                break Err(error);
            }
            let deadline = session.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                chunk = recv.read_chunk(READ_CHUNK, true) => match chunk {
                    Ok(Some(chunk)) => {
                        let now = Instant::now();
                        let decoded = decoder.push(&chunk.bytes).and_then(|()| {
                            while let Some(message) = decoder.next_message::<AgentMessage>()? {
                                if matches!(message, AgentMessage::Heartbeat { .. }) {
                                    Metrics::inc(&self.metrics.agent_heartbeats);
                                }
                                events.extend(session.handle(message, now, unix_ms()));
                            }
                            Ok(())
                        });
                        last_seen.store(unix_ms(), Ordering::Relaxed);
                        if let Err(error) = decoded {
                            Metrics::inc(&self.metrics.agent_frames_rejected);
                            tracing::warn!(%agent_id, %remote, %error, "bad frame on the control stream; closing");
                            connection.close(close_code::BAD_FRAME.into(), error.to_string().as_bytes());
                            break 'session Err(StreamError::Frame(error));
                        }
                    }
                    Ok(None) | Err(_) => break 'session Ok(()),
                },
                Some(command) = commands.recv() => match command {
                    Command::Ping(reply) => {
                        let nonce = session.ping(Instant::now());
                        pending_pings.insert(nonce, reply);
                    }
                },
                () = sleep_until(deadline) => events.extend(session.handle_timeout(Instant::now())),
                _ = connection.closed() => break 'session Ok(()),
            }
            for event in events.drain(..) {
                match event {
                    ControlSessionEvent::Registered(hello) => {
                        registered = true;
                        tracing::info!(%agent_id, %remote, hostname = %hello.facts.hostname, version = %hello.agent_version, "agent connected");
                        self.audit.record(Fact {
                            actor: format!("agent:{agent_id}"),
                            kind: "agent.connected",
                            object: agent_id.to_string(),
                            org_id: self.org_of(agent_id),
                            detail: Some(format!("{} ({})", hello.facts.hostname, hello.agent_version)),
                            remote: Some(remote.to_string()),
                            ..Fact::default()
                        });
                        self.register(agent_id, &connection, commands_tx.clone(), last_seen.clone(), hello.facts);
                    }
                    ControlSessionEvent::Status(report) => {
                        Metrics::inc(&self.metrics.agent_status_reports);
                        self.update_facts(agent_id, report.facts);
                    }
                    ControlSessionEvent::StackStatus(status) => self.record_observed(status),
                    ControlSessionEvent::Capabilities(capabilities) => self.update_capabilities(agent_id, capabilities),
                    ControlSessionEvent::Event(event) => {
                        tracing::info!(%agent_id, event = ?event.kind, "agent event")
                    }
                    ControlSessionEvent::PingAnswered { nonce, round_trip } => {
                        if let Some(reply) = pending_pings.remove(&nonce) {
                            let _ = reply.send(round_trip);
                        }
                    }
                    ControlSessionEvent::RenewalRequested { csr_der } => {
                        let answer =
                            match self.pki.issue_agent_certificate(&csr_der, agent_id, self.config.agent_cert_lifetime)
                            {
                                Ok(cert) => {
                                    tracing::info!(%agent_id, "agent certificate renewed");
                                    ControlMessage::CertificateRenewed { cert_der: cert.der().to_vec() }
                                }
                                Err(error) => ControlMessage::RenewalRefused { reason: error.to_string() },
                            };
                        session.send(answer);
                    }
                    ControlSessionEvent::Closed(reason) => {
                        let _ = flush(&mut session, &mut send, self.config.max_frame).await;
                        let _ = send.finish();
                        match &reason {
                            CloseReason::Refused(refusal) => self.refuse(&connection, remote, Some(agent_id), refusal),
                            other => {
                                tracing::info!(%agent_id, reason = ?other, "agent session closed");
                                connection.close(close_code::NORMAL.into(), b"session closed");
                            }
                        }
                        break 'session Ok(());
                    }
                }
            }
        };
        if registered {
            self.unregister(agent_id, &connection, last_seen.load(Ordering::Relaxed));
        }
        outcome
    }

    fn register(
        &self,
        agent_id: Uuid,
        connection: &quinn::Connection,
        commands: mpsc::Sender<Command>,
        last_seen: Arc<AtomicU64>,
        facts: HostFacts,
    ) {
        let previous = self.lock_live().insert(
            agent_id,
            LiveAgent {
                connection: connection.clone(),
                commands,
                connected_since_unix_ms: unix_ms(),
                last_seen_unix_ms: last_seen,
                facts: facts.clone(),
                capabilities: None,
            },
        );
        self.changes.notify_one();
        self.links.get(&agent_id.to_string()).close();
        if let Some(previous) = previous {
            previous.connection.close(close_code::REPLACED.into(), b"replaced by a newer connection");
        }
        if let Err(error) = agents::observe(self.store.as_ref(), agent_id, |a| {
            a.facts = Some(facts);
            a.last_seen_unix_ms = Some(unix_ms());
        }) {
            tracing::error!(%agent_id, %error, "could not record the agent's facts");
        }
    }

    pub fn update_facts(&self, agent_id: Uuid, facts: HostFacts) {
        if let Some(live) = self.lock_live().get_mut(&agent_id) {
            live.facts = facts;
        }
    }

    pub fn update_capabilities(&self, agent_id: Uuid, capabilities: Vec<windflow_protocol::Capability>) {
        if let Some(live) = self.lock_live().get_mut(&agent_id) {
            live.capabilities = Some(capabilities.clone());
        }
        if let Err(error) = agents::observe(self.store.as_ref(), agent_id, |a| a.capabilities = Some(capabilities)) {
            tracing::error!(%agent_id, %error, "could not record the agent's capabilities");
        }
    }

    fn unregister(&self, agent_id: Uuid, connection: &quinn::Connection, last_seen: u64) {
        let mut live = self.lock_live();
        // Only remove the entry if it is still this connection, not a newer one.
        if live.get(&agent_id).is_some_and(|l| l.connection.stable_id() == connection.stable_id()) {
            live.remove(&agent_id);
            drop(live);
            tracing::info!(%agent_id, "agent disconnected");
            self.audit.record(Fact {
                actor: format!("agent:{agent_id}"),
                kind: "agent.disconnected",
                object: agent_id.to_string(),
                org_id: self.org_of(agent_id),
                ..Fact::default()
            });
            let _ = agents::observe(self.store.as_ref(), agent_id, |a| a.last_seen_unix_ms = Some(last_seen));
        }
    }

    /// The organisation an agent belongs to, for labelling audit entries.
    fn org_of(&self, agent_id: Uuid) -> Option<Uuid> {
        agents::get(self.store.as_ref(), agent_id).ok().flatten().map(|a| a.org_id)
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, LiveAgent>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removes), so a poisoned lock is still usable.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the latest observed state of a deployment (from a status push or a job result).
    pub fn record_observed(&self, status: StackStatus) {
        self.observed.lock().unwrap_or_else(|e| e.into_inner()).insert(status.deployment_id, status);
        self.changes.notify_one();
    }

    /// Resolves at the next agent connection or status report.
    pub async fn changed(&self) {
        self.changes.notified().await;
    }

    /// Forgets a removed deployment's observed state.
    pub fn forget_observed(&self, deployment_id: Uuid) {
        self.observed.lock().unwrap_or_else(|e| e.into_inner()).remove(&deployment_id);
    }

    pub fn observed(&self, deployment_id: Uuid) -> Option<StackStatus> {
        self.observed.lock().unwrap_or_else(|e| e.into_inner()).get(&deployment_id).cloned()
    }

    pub fn is_connected(&self, agent_id: Uuid) -> bool {
        self.lock_live().contains_key(&agent_id)
    }

    pub fn connected_count(&self) -> usize {
        self.lock_live().len()
    }

    pub fn status(&self, agent_id: Uuid) -> Option<LiveStatus> {
        self.lock_live().get(&agent_id).map(|l| LiveStatus {
            connected_since_unix_ms: l.connected_since_unix_ms,
            last_seen_unix_ms: l.last_seen_unix_ms.load(Ordering::Relaxed),
            facts: l.facts.clone(),
            remote_address: l.connection.remote_address(),
            capabilities: l.capabilities.clone(),
        })
    }

    /// Round-trips a ping through the agent's session.
    pub async fn ping(&self, agent_id: Uuid) -> Result<Duration, HubError> {
        let commands = self.lock_live().get(&agent_id).map(|l| l.commands.clone()).ok_or(HubError::NotConnected)?;
        let (reply, answer) = oneshot::channel();
        commands.send(Command::Ping(reply)).await.map_err(|_| HubError::NotConnected)?;
        tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .map_err(|_| HubError::Timeout)?
            .map_err(|_| HubError::NotConnected)
    }

    /// Marks the agent revoked: its live connection is closed at once and every later
    /// handshake with its certificate is refused.
    pub fn revoke(&self, agent_id: Uuid) {
        self.revoked.write().unwrap_or_else(|e| e.into_inner()).insert(agent_id);
        if let Some(live) = self.lock_live().remove(&agent_id) {
            live.connection.close(close_code::REVOKED.into(), b"agent revoked");
            tracing::warn!(%agent_id, "revoked agent disconnected");
        }
        self.audit.record(Fact {
            actor: "system".into(),
            kind: "agent.revoked",
            object: agent_id.to_string(),
            org_id: self.org_of(agent_id),
            ..Fact::default()
        });
    }

    /// Signs a job, opens its stream and sends it; the caller reads the job's events. Dropping
    /// or stopping the receive side tells the agent to stop (used by log follows).
    pub async fn open_job(
        &self,
        agent_id: Uuid,
        payload: JobPayload,
        validity: Duration,
    ) -> Result<quinn::RecvStream, HubError> {
        self.open_job_as(Uuid::now_v7(), agent_id, payload, validity).await
    }

    /// Like [`Hub::open_job`] under a given job id: a job sent again under its first id is
    /// applied by the agent at most once (its journal answers with the recorded outcome).
    async fn open_job_as(
        &self,
        job_id: Uuid,
        agent_id: Uuid,
        payload: JobPayload,
        validity: Duration,
    ) -> Result<quinn::RecvStream, HubError> {
        let connection = self.lock_live().get(&agent_id).map(|l| l.connection.clone()).ok_or(HubError::NotConnected)?;
        let now = unix_ms();
        let envelope = JobEnvelope {
            job_id,
            agent_id,
            issued_at_unix_ms: now,
            expires_at_unix_ms: now + u64::try_from(validity.as_millis()).unwrap_or(u64::MAX),
            payload,
        };
        let signed = envelope.sign(self.pki.job_key());
        let (mut send, recv) = connection.open_bi().await.map_err(|e| HubError::Link(e.to_string()))?;
        write_frame(&mut send, &JobRequest::Job(signed), self.config.max_frame)
            .await
            .map_err(|e| HubError::Link(e.to_string()))?;
        let _ = send.finish();
        Ok(recv)
    }

    /// Agents with a live session.
    pub fn connected_agents(&self) -> Vec<Uuid> {
        self.lock_live().keys().copied().collect()
    }

    /// Runs `payload` on every connected agent at once, at most `FAN_OUT_IN_FLIGHT` streams in
    /// flight, and returns each agent's outcome with how long it took.
    pub async fn fan_out(
        self: &Arc<Self>,
        agents: impl IntoIterator<Item = Uuid>,
        payload: JobPayload,
        timeout: Duration,
    ) -> Vec<(Uuid, Duration, Result<JobOutcome, HubError>)> {
        let permits = Arc::new(tokio::sync::Semaphore::new(FAN_OUT_IN_FLIGHT));
        let mut tasks = tokio::task::JoinSet::new();
        for agent_id in agents {
            let hub = self.clone();
            let payload = payload.clone();
            let permits = permits.clone();
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let started = Instant::now();
                let outcome = hub.run_job(agent_id, payload, timeout).await;
                (agent_id, started.elapsed(), outcome)
            });
        }
        let mut results = Vec::with_capacity(tasks.len());
        while let Some(result) = tasks.join_next().await {
            if let Ok(result) = result {
                results.push(result);
            }
        }
        results
    }

    pub fn max_frame(&self) -> usize {
        self.config.max_frame
    }

    /// Signs a job for the agent, sends it on a new stream and waits for its outcome.
    pub async fn run_job(
        &self,
        agent_id: Uuid,
        payload: JobPayload,
        timeout: Duration,
    ) -> Result<JobOutcome, HubError> {
        self.run_job_with_progress(agent_id, payload, timeout, |_, _| {}).await
    }

    /// Like [`Hub::run_job`], calling `on_progress` with each progress step as it arrives.
    pub async fn run_job_with_progress(
        &self,
        agent_id: Uuid,
        payload: JobPayload,
        timeout: Duration,
        on_progress: impl FnMut(String, Option<u8>) + Send,
    ) -> Result<JobOutcome, HubError> {
        self.run_job_as(Uuid::now_v7(), agent_id, payload, timeout, on_progress).await
    }

    /// Like [`Hub::run_job_with_progress`] under a given job id, for a job that is sent again
    /// under its first id until its outcome is known.
    pub async fn run_job_as(
        &self,
        job_id: Uuid,
        agent_id: Uuid,
        payload: JobPayload,
        timeout: Duration,
        mut on_progress: impl FnMut(String, Option<u8>) + Send,
    ) -> Result<JobOutcome, HubError> {
        if !self.is_connected(agent_id) {
            self.metrics.observe_job("not_connected");
            return Err(HubError::NotConnected);
        }
        let link = self.links.get(&agent_id.to_string());
        if let Err(refused) = link.admit(Instant::now()) {
            self.metrics.observe_job("circuit_open");
            return Err(HubError::CircuitOpen { retry_in: refused.retry_in });
        }
        let exchange = async {
            let mut recv = self.open_job_as(job_id, agent_id, payload, timeout).await?;
            loop {
                match read_frame::<JobEvent, _>(&mut recv, self.config.max_frame).await {
                    Ok(Some(JobEvent::Completed { outcome, .. })) => return Ok(outcome),
                    Ok(Some(JobEvent::Progress { step, percent, .. })) => on_progress(step, percent),
                    Ok(Some(JobEvent::Refused { reason, .. })) => return Err(HubError::JobRefused(reason)),
                    Ok(Some(_)) => continue,
                    Ok(None) => return Err(HubError::Link("the agent closed the job stream".into())),
                    Err(e) => return Err(HubError::Link(e.to_string())),
                }
            }
        };
        let result = tokio::time::timeout(timeout, exchange).await.map_err(|_| HubError::Timeout).and_then(|r| r);
        // The job's own failure says nothing against the link; a broken or silent stream does.
        let link_failed = matches!(result, Err(HubError::Timeout | HubError::Link(_) | HubError::NotConnected));
        link.record(!link_failed, Instant::now());
        self.metrics.observe_job(match &result {
            Ok(JobOutcome::Succeeded(_)) => "succeeded",
            Ok(JobOutcome::Failed { .. }) => "failed",
            Err(HubError::JobRefused(_)) => "refused",
            Err(HubError::Timeout) => "timeout",
            Err(HubError::NotConnected) => "not_connected",
            Err(HubError::CircuitOpen { .. }) => "circuit_open",
            Err(HubError::Link(_) | HubError::JobFailed(_)) => "link_error",
        });
        result
    }
}

async fn flush(session: &mut ControlSession, send: &mut quinn::SendStream, max: usize) -> Result<(), StreamError> {
    while let Some(message) = session.poll_transmit() {
        write_frame(send, &message, max).await?;
    }
    Ok(())
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn peer_agent_id(connection: &quinn::Connection) -> Option<Uuid> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast_ref::<Vec<CertificateDer<'static>>>()?;
    agent_id_from_certificate(chain.first()?)
}

/// WebPKI client verification (chain to our CA, validity) plus the revocation list.
#[derive(Debug)]
struct AgentCertVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<RwLock<HashSet<Uuid>>>,
    metrics: Arc<Metrics>,
}

impl ClientCertVerifier for AgentCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let id = agent_id_from_certificate(end_entity)
            .ok_or_else(|| rustls::Error::General("client certificate names no agent".into()))?;
        if self.revoked.read().unwrap_or_else(|e| e.into_inner()).contains(&id) {
            Metrics::inc(&self.metrics.agent_certificates_revoked);
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
/// Why a handshake failed, for the metrics: the TLS alert it ended with, by name.
pub fn refusal_reason(error: &quinn::ConnectionError) -> &'static str {
    let quinn::ConnectionError::TransportError(error) = error else {
        return match error {
            quinn::ConnectionError::TimedOut => "timed_out",
            quinn::ConnectionError::VersionMismatch => "quic_version",
            _ => "closed",
        };
    };
    // QUIC carries a TLS alert as the crypto error 0x100 + alert (RFC 9001, 4.8).
    match u64::from(error.code).checked_sub(0x100) {
        Some(40) => "handshake_failure",
        Some(42) => "bad_certificate",
        Some(44) => "certificate_revoked",
        Some(45) => "certificate_expired",
        Some(46) => "certificate_unknown",
        Some(48) => "unknown_ca",
        Some(116) => "certificate_required",
        Some(120) => "no_application_protocol",
        Some(alert) if alert < 0x100 => "other_tls_alert",
        _ => "transport_error",
    }
}
