//! The agent's link to the control plane: one outbound QUIC connection at a time, reconnected
//! with capped exponential backoff and jitter. It drives the sans-IO `AgentSession` on the
//! control stream, answers jobs on the streams the control plane opens, and renews its
//! certificate over the authenticated connection before it expires.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;
use windflow_protocol::backoff::Backoff;
use windflow_protocol::io::{StreamError, read_frame, write_frame};
use windflow_protocol::messages::{
    AgentEvent, AgentEventKind, AgentMessage, ControlMessage, Hello, JobEvent, JobOutcome, JobRequest,
    PROTOCOL_VERSION, StatusReport,
};
use windflow_protocol::session::{AgentSession, AgentSessionEvent, CloseReason};
use windflow_protocol::{JobEnvelope, MAX_FRAME_LEN, Refusal};

use crate::identity::{DataDir, Identity};
use crate::jobs::{Admission, AdmitError, Executor, JobGate};
use crate::journal::Journal;
use crate::unix_ms;

const ALPN: &[u8] = b"windflow/1";
/// QUIC close codes of the control plane: a revoked agent, and its own shutdown.
const CLOSE_REVOKED: u32 = 1;
const CLOSE_SHUTDOWN: u32 = 5;
const STATUS_INTERVAL: Duration = Duration::from_secs(30);
/// A session that lasted this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// A handshake not done by then is abandoned for a new one. QUIC backs its retransmissions off
/// exponentially, so a handshake begun while the link was cut could otherwise wait seconds
/// after the link came back; new attempts keep the gap between packets short.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a closed session may take to say so before the next attempt starts.
const CLOSE_DRAIN: Duration = Duration::from_millis(300);
/// How long a stopping agent waits for its running jobs (systemd's default stop timeout is 90 s).
const STOP_GRACE: Duration = Duration::from_secs(60);
/// The round-trip time assumed before one is measured: it sets how soon a lost handshake
/// packet is sent again (three times this, then doubling).
const INITIAL_RTT: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self { backoff_base: Duration::from_millis(200), backoff_max: Duration::from_secs(2) }
    }
}

/// The control plane revoked this agent; retrying cannot help.
#[derive(Debug, thiserror::Error)]
#[error("the control plane revoked this agent; enroll again with a new join token")]
pub struct Revoked;

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
enum SessionEnd {
    Lost,
    Revoked,
    /// The control plane said it is stopping (a restart or an upgrade).
    ShuttingDown,
}

/// Runs the agent until it is revoked (an error) or `shutdown` resolves.
pub async fn run(
    data: DataDir,
    config: LinkConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let identity = data.identity()?;
    let job_key = JobGate::parse_key(&identity.job_public_key).context("the pinned job key is invalid")?;
    let journal = Journal::open(&data.journal_path(), unix_ms())
        .with_context(|| format!("opening {}", data.journal_path().display()))?;
    let gate = Arc::new(JobGate::new(identity.agent_id, job_key, journal));
    let executor = Arc::new(Executor::default());
    let started = Instant::now();
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_max);
    tokio::pin!(shutdown);
    loop {
        let attempt_started = Instant::now();
        let outcome = tokio::select! {
            outcome = connect_and_serve(&data, &identity, &gate, &executor, started) => outcome,
            () = &mut shutdown => {
                let_running_jobs_end(&gate).await;
                return Ok(());
            }
        };
        if attempt_started.elapsed() >= STABLE_SESSION {
            backoff.reset();
        }
        let delay = match outcome {
            Ok(SessionEnd::Revoked) => return Err(Revoked.into()),
            Ok(SessionEnd::ShuttingDown) => {
                // Every agent heard this at the same moment: each waits a random part of the
                // longest delay, so that the fleet does not come back all at once.
                tracing::info!("the control plane is shutting down; reconnecting once it is back");
                backoff.reset();
                config.backoff_max.mul_f64(rand::random::<f64>())
            }
            Ok(SessionEnd::Lost) => {
                tracing::warn!("connection to the control plane lost");
                if backoff.attempt() == 0 {
                    // A session that had held was lost: the whole fleet may have lost theirs at
                    // the same moment (a control plane that crashed), so the first return is
                    // spread.
                    (config.backoff_max / 2).mul_f64(rand::random::<f64>())
                } else {
                    // Counted from the attempt's start: an attempt that already took its delay
                    // (a handshake that timed out) is followed by the next one at once.
                    backoff.next_delay(rand::random()).saturating_sub(attempt_started.elapsed())
                }
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "could not hold a session with the control plane");
                backoff.next_delay(rand::random()).saturating_sub(attempt_started.elapsed())
            }
        };
        tracing::info!(delay_ms = delay.as_millis() as u64, attempt = backoff.attempt(), "reconnecting");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = &mut shutdown => {
                let_running_jobs_end(&gate).await;
                return Ok(());
            }
        }
    }
}

/// On a stop, jobs already running end (and their outcomes are journalled) before the agent
/// exits, for up to [`STOP_GRACE`]; no new job is taken. The control plane asks for them again
/// once the agent is back and gets the recorded outcomes.
async fn let_running_jobs_end(gate: &JobGate) {
    let running = gate.running_count();
    if running == 0 {
        return;
    }
    tracing::info!(running, "stopping once the running jobs end");
    if tokio::time::timeout(STOP_GRACE, gate.idle()).await.is_err() {
        tracing::warn!(running = gate.running_count(), "stopping with jobs still running; they resume on restart");
    }
}

fn client_endpoint(data: &DataDir) -> anyhow::Result<quinn::Endpoint> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(data.ca_pem()?.as_bytes()).context("reading ca.pem")?)?;
    let chain = CertificateDer::pem_slice_iter(data.cert_pem()?.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("reading cert.pem")?;
    let key = PrivateKeyDer::from_pem_slice(data.key_pem()?.as_bytes()).context("reading key.pem")?;
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // The control plane opens job and log streams; we open only the control stream.
    transport.max_concurrent_bidi_streams(64u8.into());
    transport.max_concurrent_uni_streams(0u8.into());
    transport.max_idle_timeout(Some(Duration::from_secs(30).try_into()?));
    transport.initial_rtt(INITIAL_RTT);
    client.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

async fn connect_and_serve(
    data: &DataDir,
    identity: &Identity,
    gate: &Arc<JobGate>,
    executor: &Arc<Executor>,
    started: Instant,
) -> anyhow::Result<SessionEnd> {
    let address = tokio::net::lookup_host(&identity.quic_endpoint)
        .await
        .with_context(|| format!("resolving {}", identity.quic_endpoint))?
        .next()
        .with_context(|| format!("{} has no address", identity.quic_endpoint))?;
    // A new endpoint per attempt picks up a renewed certificate.
    let endpoint = client_endpoint(data)?;
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, endpoint.connect(address, &identity.server_name)?);
    let connection = match handshake.await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) if is_revocation(&error) => return Ok(SessionEnd::Revoked),
        Ok(Err(error)) => return Err(error).context("QUIC handshake"),
        Err(_) => bail!("no QUIC handshake with {address} within {HANDSHAKE_TIMEOUT:?}"),
    };
    let end = serve(data, identity, gate, executor, &connection, started).await;
    // Read before closing: a local close replaces the peer's reason.
    let closed = closed_reason(&connection);
    connection.close(0u32.into(), b"agent closing");
    // The close is said politely when the link works; over a dead link its draining could hold
    // the next attempt back for seconds (seen in the partition tests), and the next attempt has
    // an endpoint of its own anyway.
    let _ = tokio::time::timeout(CLOSE_DRAIN, endpoint.wait_idle()).await;
    // However the session failed, why the peer closed it is what the caller must hear about.
    match closed {
        SessionEnd::Lost => end,
        peer_reason => Ok(peer_reason),
    }
}

/// TLS alert `certificate_revoked` (44), carried as a QUIC crypto error.
const TLS_ALERT_CERTIFICATE_REVOKED: u8 = 44;

/// The control plane closes a live revoked agent with an application code, and refuses its
/// later handshakes with the TLS alert `certificate_revoked`.
fn is_revocation(error: &quinn::ConnectionError) -> bool {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => close.error_code == CLOSE_REVOKED.into(),
        quinn::ConnectionError::ConnectionClosed(close) => {
            close.error_code == quinn::TransportErrorCode::crypto(TLS_ALERT_CERTIFICATE_REVOKED)
        }
        _ => false,
    }
}

/// Tells the control plane what this agent can drive, when that changed since it last said.
async fn report_capabilities(
    session: &mut AgentSession,
    facts: &windflow_protocol::HostFacts,
    reported: &mut Option<Vec<windflow_protocol::Capability>>,
) {
    let capabilities = crate::facts::capabilities(facts).await;
    if reported.as_ref() != Some(&capabilities) {
        session.send(AgentMessage::Capabilities(capabilities.clone()));
        *reported = Some(capabilities);
    }
}

async fn serve(
    data: &DataDir,
    identity: &Identity,
    gate: &Arc<JobGate>,
    executor: &Arc<Executor>,
    connection: &quinn::Connection,
    started: Instant,
) -> anyhow::Result<SessionEnd> {
    let (mut send, recv) = connection.open_bi().await.context("opening the control stream")?;
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        agent_id: identity.agent_id,
        facts: crate::facts::collect().await,
    };
    let mut session = AgentSession::new(hello, Instant::now(), Duration::from_secs(10));
    let (frames_tx, mut frames) = mpsc::channel(32);
    tokio::spawn(read_frames(recv, frames_tx));
    let (events_tx, mut events) = mpsc::channel::<AgentMessage>(64);
    // Ended with the session, also when the session is dropped because the agent stops: no new
    // job is taken after that (those running end on their own tasks).
    let _reporter = AbortOnDrop(tokio::spawn(crate::watch::report_stacks(executor.clone(), events_tx.clone())));
    let _jobs = AbortOnDrop(tokio::spawn(accept_jobs(connection.clone(), gate.clone(), executor.clone(), events_tx)));
    let mut status = tokio::time::interval(STATUS_INTERVAL);
    status.tick().await;
    let mut renewal: Option<String> = None;
    let mut reported_capabilities = None;

    let end = loop {
        while let Some(message) = session.poll_transmit() {
            write_frame(&mut send, &message, MAX_FRAME_LEN).await.context("writing to the control stream")?;
        }
        if session.is_established() && renewal.is_none() && renewal_due(data) {
            let (key_pem, csr_pem) = crate::enroll::new_key_and_csr(&identity.agent_id.to_string())?;
            let csr_der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())?;
            tracing::info!("certificate due for renewal; asking the control plane");
            session.send(AgentMessage::RenewCertificate { csr_der: csr_der.as_ref().to_vec() });
            renewal = Some(key_pem);
            continue;
        }
        let deadline = session.poll_timeout().map(tokio::time::Instant::from_std);
        let event = tokio::select! {
            frame = frames.recv() => match frame {
                Some(Ok(message)) => session.handle(message, Instant::now()),
                Some(Err(error)) => bail!("bad frame from the control plane: {error}"),
                None => break closed_reason(connection),
            },
            // Held in the channel until the session is up, so nothing is dropped.
            Some(message) = events.recv(), if session.is_established() => {
                session.send(message);
                None
            }
            _ = status.tick() => {
                let facts = crate::facts::collect().await;
                report_capabilities(&mut session, &facts, &mut reported_capabilities).await;
                session.report_status(StatusReport { facts, running_jobs: 0, uptime_s: started.elapsed().as_secs() });
                None
            }
            () = sleep_until(deadline) => session.handle_timeout(Instant::now()),
            _ = connection.closed() => break closed_reason(connection),
        };
        match event {
            None => {}
            Some(AgentSessionEvent::Established(_)) => {
                tracing::info!(agent_id = %identity.agent_id, server = %identity.quic_endpoint, "connected to the control plane");
                let facts = crate::facts::collect().await;
                report_capabilities(&mut session, &facts, &mut reported_capabilities).await;
            }
            Some(AgentSessionEvent::CertificateRenewed { cert_der }) => {
                if let Some(key_pem) = renewal.take() {
                    let cert_pem = pem_encode("CERTIFICATE", &cert_der);
                    data.save_renewal(&key_pem, &cert_pem)?;
                    let not_after = cert_not_after(&cert_der).unwrap_or_default();
                    tracing::info!(not_after_unix_s = not_after, "certificate renewed");
                    session.send(AgentMessage::Event(AgentEvent {
                        at_unix_ms: unix_ms(),
                        kind: AgentEventKind::CertificateRenewed { not_after_unix_s: not_after },
                    }));
                }
            }
            Some(AgentSessionEvent::RenewalRefused { reason }) => {
                tracing::error!(%reason, "the control plane refused to renew the certificate");
                renewal = None;
            }
            Some(AgentSessionEvent::Closed(CloseReason::Refused(Refusal::Revoked))) => break SessionEnd::Revoked,
            Some(AgentSessionEvent::Closed(CloseReason::Refused(refusal))) => {
                bail!("the control plane refused the session: {refusal}")
            }
            Some(AgentSessionEvent::Closed(reason)) => {
                tracing::warn!(?reason, "session closed");
                break SessionEnd::Lost;
            }
        }
    };
    Ok(end)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn closed_reason(connection: &quinn::Connection) -> SessionEnd {
    match connection.close_reason() {
        Some(error) if is_revocation(&error) => SessionEnd::Revoked,
        Some(quinn::ConnectionError::ApplicationClosed(close)) if close.error_code == CLOSE_SHUTDOWN.into() => {
            SessionEnd::ShuttingDown
        }
        _ => SessionEnd::Lost,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn read_frames(mut recv: quinn::RecvStream, out: mpsc::Sender<Result<ControlMessage, StreamError>>) {
    loop {
        let frame = read_frame::<ControlMessage, _>(&mut recv, MAX_FRAME_LEN).await;
        let last = !matches!(frame, Ok(Some(_)));
        match frame {
            Ok(Some(message)) => {
                if out.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(error) => {
                let _ = out.send(Err(error)).await;
            }
        }
        if last {
            return;
        }
    }
}

/// Serves the job streams the control plane opens, one task per job.
async fn accept_jobs(
    connection: quinn::Connection,
    gate: Arc<JobGate>,
    executor: Arc<Executor>,
    events: mpsc::Sender<AgentMessage>,
) {
    while let Ok((send, recv)) = connection.accept_bi().await {
        tokio::spawn(handle_job(send, recv, gate.clone(), executor.clone(), events.clone()));
    }
}

async fn handle_job(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    gate: Arc<JobGate>,
    executor: Arc<Executor>,
    events: mpsc::Sender<AgentMessage>,
) {
    let job = match read_frame::<JobRequest, _>(&mut recv, MAX_FRAME_LEN).await {
        Ok(Some(JobRequest::Job(job))) => job,
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(%error, "unreadable job stream");
            let _ = recv.stop(3u32.into());
            return;
        }
    };
    let reply = match gate.admit(&job, unix_ms()) {
        Ok(Admission::Run(envelope)) => run_admitted(&mut send, &envelope, false, &gate, &executor).await,
        Ok(Admission::Resume(envelope)) => run_admitted(&mut send, &envelope, true, &gate, &executor).await,
        Ok(Admission::Running(job_id)) => {
            // Asked again while it runs: the first answer was lost with the link.
            tracing::info!(%job_id, "job asked for again while it runs; answering when it ends");
            let _ = write_frame(&mut send, &JobEvent::Accepted { job_id }, MAX_FRAME_LEN).await;
            JobEvent::Completed { job_id, outcome: gate.outcome(job_id).await }
        }
        Ok(Admission::Ended(job_id, outcome)) => {
            tracing::info!(%job_id, "job asked for again after it ended; answering with its recorded outcome");
            JobEvent::Completed { job_id, outcome }
        }
        Err(AdmitError::Refused(reason)) => {
            let job_id = job.unverified_job_id();
            tracing::warn!(job_id = ?job_id, %reason, "job refused");
            let _ = events
                .send(AgentMessage::Event(AgentEvent {
                    at_unix_ms: unix_ms(),
                    kind: AgentEventKind::JobRefused { job_id, reason: reason.clone() },
                }))
                .await;
            JobEvent::Refused { job_id, reason }
        }
        Err(AdmitError::Journal(error)) => {
            tracing::error!(%error, "job journal unwritable; refusing to run jobs");
            JobEvent::Completed {
                job_id: job.unverified_job_id().unwrap_or_default(),
                outcome: JobOutcome::Failed { message: format!("agent journal unwritable: {error}") },
            }
        }
    };
    let _ = write_frame(&mut send, &reply, MAX_FRAME_LEN).await;
    let _ = send.finish();
}

async fn run_admitted(
    send: &mut quinn::SendStream,
    envelope: &JobEnvelope,
    resumed: bool,
    gate: &JobGate,
    executor: &Executor,
) -> JobEvent {
    let job_id = envelope.job_id;
    tracing::info!(%job_id, kind = envelope.payload.kind(), resumed, "job admitted");
    let _ = write_frame(send, &JobEvent::Accepted { job_id }, MAX_FRAME_LEN).await;
    let outcome = run_job(send, envelope, executor).await;
    gate.finish(job_id, &outcome, unix_ms());
    tracing::info!(%job_id, succeeded = matches!(outcome, JobOutcome::Succeeded(_)), "job finished");
    JobEvent::Completed { job_id, outcome }
}

/// Runs an admitted job, streaming its progress and log lines on its stream. The job runs to
/// its end even if the control plane stops listening: it is journalled as started, so it must
/// really be applied, and its outcome is kept for when it is asked for again.
async fn run_job(send: &mut quinn::SendStream, envelope: &JobEnvelope, executor: &Executor) -> JobOutcome {
    let job_id = envelope.job_id;
    let (progress, mut steps) = mpsc::unbounded_channel();
    let (logs, mut lines) = mpsc::channel(64);
    let run = executor.execute(&envelope.payload, &progress, &logs);
    tokio::pin!(run);
    // The control plane stops a log stream by stopping its end of this stream.
    let stopped = send.stopped();
    tokio::pin!(stopped);
    let mut stop_seen = false;
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome,
            Some((step, percent)) = steps.recv() => {
                let _ = write_frame(send, &JobEvent::Progress { job_id, step, percent }, MAX_FRAME_LEN).await;
            }
            Some(chunk) = lines.recv() => {
                if write_frame(send, &JobEvent::Log(chunk), MAX_FRAME_LEN).await.is_err() {
                    lines.close();
                }
            }
            _ = &mut stopped, if !stop_seen => {
                stop_seen = true;
                lines.close();
            }
        }
    };
    // What the job queued before it finished still goes out, in order.
    while let Ok((step, percent)) = steps.try_recv() {
        let _ = write_frame(send, &JobEvent::Progress { job_id, step, percent }, MAX_FRAME_LEN).await;
    }
    while let Ok(chunk) = lines.try_recv() {
        if write_frame(send, &JobEvent::Log(chunk), MAX_FRAME_LEN).await.is_err() {
            break;
        }
    }
    outcome
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

fn cert_not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// True once two thirds of the current certificate's lifetime have passed.
fn renewal_due(data: &DataDir) -> bool {
    let Ok(pem) = data.cert_pem() else { return false };
    let Ok(der) = CertificateDer::from_pem_slice(pem.as_bytes()) else { return false };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else { return false };
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    let now = i64::try_from(unix_ms() / 1000).unwrap_or(i64::MAX);
    now >= not_before + (not_after - not_before) * 2 / 3
}
