//! `windflow-bench`: N simulated agents in one process against a real `windflow` process.
//!
//! Every simulated agent is enrolled through the real path (a bulk join token, its own key and
//! CSR), holds a real mutual-TLS QUIC session with its own certificate, and speaks the real
//! protocol: Hello, heartbeats, status reports, signed jobs (verified, acknowledged, answered)
//! and log streams. Figures go to standard output, or as JSON with `--json`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use ed25519_dalek::VerifyingKey;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use uuid::Uuid;
use windflow_protocol::io::{read_frame, write_frame};
use windflow_protocol::messages::*;
use windflow_protocol::{JobPayload, MAX_FRAME_LEN};
use windflow_tests::fleet::{
    client_config, client_endpoint, enroll_all, facts, process_usage, simulated_status, summary,
};
use windflow_tests::{Agent, ControlPlane, free_tcp_port, free_udp_port};

#[derive(Debug, Parser)]
#[command(name = "windflow-bench", about = "Fleet benchmark: simulated agents against a real control plane")]
struct Args {
    /// Simulated agents.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Heartbeat interval the control plane asks for.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Length of each timed phase (rest, sustained jobs, status reports, logs, API).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Status reports per agent per second during the status phase.
    #[arg(long, default_value_t = 1.0)]
    status_rate: f64,
    /// Requests per second to GET /api/v1/targets during the API phase.
    #[arg(long, default_value_t = 1000)]
    api_rate: u32,
    /// Bytes per log line the log phase streams.
    #[arg(long, default_value_t = 1024)]
    log_line_bytes: usize,
    /// How long to watch the real agent at idle (0 skips the agent footprint).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    agent_idle: Duration,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// What every simulated agent shares.
struct Shared {
    job_key: VerifyingKey,
    /// Receipt times of fan-out jobs, sent to the phase that measures them.
    receipts: mpsc::UnboundedSender<Instant>,
    status_period: std::sync::Mutex<Option<Duration>>,
    log_line_bytes: usize,
    log_bytes_sent: AtomicU64,
    stop: AtomicBool,
}

const CLOCK_TICKS: f64 = 100.0;

/// Average CPU use (% of one core) and final RSS (KiB) of `pid` over `window`.
async fn watch(pid: u32, window: Duration) -> (f64, u64) {
    let (_, before) = process_usage(pid);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let (rss, after) = process_usage(pid);
    let cpu = (after.saturating_sub(before)) as f64 / CLOCK_TICKS / started.elapsed().as_secs_f64() * 100.0;
    (cpu, rss)
}

/// One simulated agent: connects, says Hello, then heartbeats, reports and answers jobs until
/// the benchmark stops.
async fn run_agent(
    n: usize,
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    server: SocketAddr,
    agent_id: Uuid,
    shared: Arc<Shared>,
    connected: mpsc::UnboundedSender<Instant>,
) -> anyhow::Result<()> {
    let connection = endpoint.connect_with(config, server, "127.0.0.1")?.await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    let hello = AgentMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: "bench".into(),
        agent_id,
        facts: facts(n),
    });
    write_frame(&mut send, &hello, MAX_FRAME_LEN).await?;
    let heartbeat = match read_frame::<ControlMessage, _>(&mut recv, MAX_FRAME_LEN).await? {
        Some(ControlMessage::Welcome(welcome)) => Duration::from_millis(u64::from(welcome.heartbeat_interval_ms)),
        other => bail!("agent {n}: expected Welcome, got {other:?}"),
    };
    let _ = connected.send(Instant::now());
    let jobs = tokio::spawn(serve_jobs(n, connection.clone(), agent_id, shared.clone()));
    let (pings_tx, mut pings) = mpsc::channel(8);
    let reader = tokio::spawn(async move {
        while let Ok(Some(message)) = read_frame::<ControlMessage, _>(&mut recv, MAX_FRAME_LEN).await {
            if let ControlMessage::Ping { nonce } = message
                && pings_tx.send(nonce).await.is_err()
            {
                break;
            }
        }
    });
    let mut beat = tokio::time::interval(heartbeat);
    beat.tick().await;
    let mut seq = 0;
    let mut next_status = Instant::now();
    let started = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        let status_period = *shared.status_period.lock().unwrap_or_else(|e| e.into_inner());
        // Never more than one report owed, however long the phase was off.
        let status_due = status_period.map(|p| {
            tokio::time::Instant::from_std(next_status.max(Instant::now().checked_sub(p).unwrap_or(next_status)) + p)
        });
        tokio::select! {
            _ = beat.tick() => {
                seq += 1;
                write_frame(&mut send, &AgentMessage::Heartbeat { seq }, MAX_FRAME_LEN).await?;
            }
            Some(nonce) = pings.recv() => write_frame(&mut send, &AgentMessage::Pong { nonce }, MAX_FRAME_LEN).await?,
            () = async { match status_due { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                next_status = Instant::now();
                let report = AgentMessage::StatusReport(StatusReport { facts: facts(n), running_jobs: 0, uptime_s: started.elapsed().as_secs() });
                write_frame(&mut send, &report, MAX_FRAME_LEN).await?;
            }
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    jobs.abort();
    reader.abort();
    connection.close(0u32.into(), b"bench done");
    Ok(())
}

async fn serve_jobs(n: usize, connection: quinn::Connection, agent_id: Uuid, shared: Arc<Shared>) {
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(Some(JobRequest::Job(job))) = read_frame::<JobRequest, _>(&mut recv, MAX_FRAME_LEN).await else {
                return;
            };
            let received = Instant::now();
            let now_ms = u64::try_from(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0),
            )
            .unwrap_or(0);
            let envelope = match job.verify(&shared.job_key, agent_id, now_ms) {
                Ok(envelope) => envelope,
                Err(reason) => {
                    let _ = write_frame(
                        &mut send,
                        &JobEvent::Refused { job_id: job.unverified_job_id(), reason },
                        MAX_FRAME_LEN,
                    )
                    .await;
                    return;
                }
            };
            let job_id = envelope.job_id;
            let _ = write_frame(&mut send, &JobEvent::Accepted { job_id }, MAX_FRAME_LEN).await;
            let output = match envelope.payload {
                JobPayload::CollectFacts => {
                    let _ = shared.receipts.send(received);
                    JobOutput::Facts(facts(n))
                }
                JobPayload::DeployStack { deployment_id, spec } => {
                    JobOutput::Stack(simulated_status(n, deployment_id, &spec))
                }
                JobPayload::StreamLogs { follow: true, project, .. } => {
                    stream_logs(&mut send, &shared, &project).await;
                    JobOutput::None
                }
                _ => JobOutput::None,
            };
            let _ = write_frame(
                &mut send,
                &JobEvent::Completed { job_id, outcome: JobOutcome::Succeeded(output) },
                MAX_FRAME_LEN,
            )
            .await;
            let _ = send.finish();
        });
    }
}

/// Streams synthetic lines as fast as the stream takes them, each starting with its send time
/// in nanoseconds so the reader can measure latency, until the control plane stops the stream.
async fn stream_logs(send: &mut quinn::SendStream, shared: &Shared, project: &str) {
    let stopped = send.stopped();
    tokio::pin!(stopped);
    let padding = "x".repeat(shared.log_line_bytes.saturating_sub(24));
    loop {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let line = format!("{nanos:020} {padding}\n");
        let chunk = LogChunk {
            source: format!("{project}-app-1"),
            stream: LogStream::Stdout,
            timestamp_unix_ms: (nanos / 1_000_000) as u64,
            data: line.into_bytes(),
        };
        let len = chunk.data.len() as u64;
        let event = JobEvent::Log(chunk);
        tokio::select! {
            written = write_frame(send, &event, MAX_FRAME_LEN) => {
                if written.is_err() {
                    return;
                }
                shared.log_bytes_sent.fetch_add(len, Ordering::Relaxed);
            }
            _ = &mut stopped => return,
        }
    }
}

/// Open-loop load: `rate` requests per second for `duration`, latencies in ms.
async fn api_latency(cp: &ControlPlane, token: &str, rate: u32, duration: Duration) -> (Vec<f64>, u64) {
    let url = cp.url("/api/v1/targets?per_page=50");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let errors = Arc::new(AtomicU64::new(0));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + duration;
    while Instant::now() < end {
        tick.tick().await;
        let (http, url, token, tx, errors) =
            (cp.http().clone(), url.clone(), token.to_owned(), tx.clone(), errors.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            match http.get(url).bearer_auth(token).send().await {
                Ok(r) if r.status().is_success() => {
                    let _ = r.bytes().await;
                    let _ = tx.send(started.elapsed().as_secs_f64() * 1000.0);
                }
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    drop(tx);
    let mut latencies = Vec::new();
    while let Some(latency) = rx.recv().await {
        latencies.push(latency);
    }
    (latencies, errors.load(Ordering::Relaxed))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = tempfile::tempdir()?;
    let mut report = BTreeMap::<&str, Value>::new();
    report.insert("agents", json!(args.agents));

    let mut cp = ControlPlane::start_with(
        work.path(),
        free_tcp_port(),
        free_udp_port(),
        vec![
            "--heartbeat-interval".into(),
            humantime::format_duration(args.heartbeat).to_string(),
            // The whole simulated fleet enrolls and calls the API from one address, with one
            // credential.
            "--rate-limit".into(),
            "0".into(),
            "--token-rate-limit".into(),
            "0".into(),
        ],
    )
    .await;
    let cp_pid = cp.process.pid().context("control plane pid")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (baseline_rss, _) = process_usage(cp_pid);

    // Enrollment through the real path.
    let token = cp.join_token(u32::try_from(args.agents).unwrap_or(u32::MAX), 3600).await;
    let started = Instant::now();
    let (identities, job_key) = enroll_all(&cp, token["token"].as_str().unwrap_or_default(), args.agents).await?;
    let enroll_secs = started.elapsed().as_secs_f64();
    report.insert("enrollments_per_s", json!(args.agents as f64 / enroll_secs));

    // Connections.
    let (receipts_tx, mut receipts) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        job_key,
        receipts: receipts_tx,
        status_period: std::sync::Mutex::new(None),
        log_line_bytes: args.log_line_bytes,
        log_bytes_sent: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let server: SocketAddr = format!("127.0.0.1:{}", cp.quic_port).parse()?;
    let ca = cp.ca_pem();
    let (connected_tx, mut connected) = mpsc::unbounded_channel();
    let mut endpoints = Vec::new();
    let mut agents = tokio::task::JoinSet::new();
    let started = Instant::now();
    let connect_permits = Arc::new(Semaphore::new(500));
    for (n, identity) in identities.iter().enumerate() {
        if n % 500 == 0 {
            endpoints.push(client_endpoint()?);
        }
        let endpoint = endpoints.last().cloned().context("endpoint")?;
        let config = client_config(&ca, identity)?;
        let (shared, connected_tx, agent_id, permits) =
            (shared.clone(), connected_tx.clone(), identity.agent_id, connect_permits.clone());
        agents.spawn(async move {
            // Bounded handshakes in flight, like a fleet reconnecting with jitter.
            let permit = permits.acquire_owned().await;
            let (ready_tx, mut ready) = mpsc::unbounded_channel();
            let run = run_agent(n, endpoint, config, server, agent_id, shared, ready_tx);
            tokio::pin!(run);
            tokio::select! {
                result = &mut run => return result,
                Some(at) = ready.recv() => { let _ = connected_tx.send(at); }
            }
            drop(permit);
            run.await
        });
    }
    drop(connected_tx);
    let mut connected_count = 0;
    while connected_count < args.agents {
        match tokio::time::timeout(Duration::from_secs(120), connected.recv()).await {
            Ok(Some(_)) => connected_count += 1,
            _ => break,
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    if connected_count < args.agents {
        bail!("only {connected_count} of {} agents connected", args.agents);
    }
    report.insert("connections_per_s", json!(args.agents as f64 / connect_secs));
    let listed = cp.api(Method::GET, "/targets?per_page=1", None).await.1;
    if listed["total"] != json!(args.agents) {
        bail!("the control plane lists {} targets, expected {}", listed["total"], args.agents);
    }

    // At rest.
    let (rest_cpu, rest_rss) = watch(cp_pid, args.duration).await;
    report.insert("cp_rest_cpu_percent", json!(rest_cpu));
    report.insert("cp_rest_rss_mib", json!(rest_rss as f64 / 1024.0));
    report.insert("cp_rss_per_agent_kib", json!((rest_rss.saturating_sub(baseline_rss)) as f64 / args.agents as f64));

    // Fan-out of one signed job to every agent.
    while receipts.try_recv().is_ok() {}
    let started = Instant::now();
    let (status, answer) = cp.api(Method::POST, "/targets/facts", None).await;
    let fan_out_ms = started.elapsed().as_secs_f64() * 1000.0;
    if !status.is_success() || answer["succeeded"] != json!(args.agents) {
        bail!("fan-out: {status} {answer}");
    }
    let mut delivered = Vec::new();
    while let Ok(at) = receipts.try_recv() {
        delivered.push(at.duration_since(started).as_secs_f64() * 1000.0);
    }
    report.insert("fan_out_all_acknowledged_ms", json!(fan_out_ms));
    report.insert("fan_out_delivery_ms", summary(delivered));
    report.insert("fan_out_round_trip_ms", answer["latency_ms"].clone());

    // Sustained jobs: fan-outs back to back.
    let started = Instant::now();
    let mut jobs = 0u64;
    while started.elapsed() < args.duration {
        let (_, answer) = cp.api(Method::POST, "/targets/facts", None).await;
        jobs += answer["succeeded"].as_u64().unwrap_or(0);
    }
    report.insert("jobs_per_s", json!(jobs as f64 / started.elapsed().as_secs_f64()));

    // Status reports.
    let before = cp.metric("windflow_agent_status_reports_total").await;
    *shared.status_period.lock().unwrap_or_else(|e| e.into_inner()) =
        Some(Duration::from_secs_f64(1.0 / args.status_rate.max(0.001)));
    let started = Instant::now();
    tokio::time::sleep(args.duration).await;
    *shared.status_period.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let after = cp.metric("windflow_agent_status_reports_total").await;
    report.insert("status_reports_per_s", json!((after - before) as f64 / started.elapsed().as_secs_f64()));

    // Logs from one agent to one SSE follower.
    let first = identities.first().context("no agents")?.agent_id;
    let (_, stack) = cp
        .api(
            Method::POST,
            "/stacks",
            Some(json!({"name": "bench-logs", "compose": "services:\n  app:\n    image: bench\n"})),
        )
        .await;
    let (_, deployment) = cp
        .api(Method::POST, &format!("/stacks/{}/deploy/{first}", stack["id"].as_str().unwrap_or_default()), None)
        .await;
    let deployment_id = deployment["id"].as_str().unwrap_or_default().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while cp.api(Method::GET, &format!("/deployments/{deployment_id}"), None).await.1["state"] != "running" {
        if Instant::now() > deadline {
            bail!("the log benchmark's deployment never ran");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bearer = cp.admin_login().await;
    let response = cp
        .http()
        .get(cp.url(&format!("/api/v1/deployments/{deployment_id}/logs?follow=true&tail=0")))
        .bearer_auth(&bearer)
        .send()
        .await?;
    let mut body = response.bytes_stream();
    let mut latencies = Vec::new();
    let mut line_bytes = 0u64;
    let mut buffer = String::new();
    let started = Instant::now();
    while started.elapsed() < args.duration {
        let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(5), body.next()).await else { break };
        buffer.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            let Some(data) = line.strip_prefix("data:") else { continue };
            let Ok(value) = serde_json::from_str::<Value>(data.trim()) else { continue };
            // A `log` event holds one line, a `logs` event an array of them.
            let lines = match value {
                Value::Array(lines) => lines,
                single => vec![single],
            };
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
            for text in lines.iter().filter_map(|l| l["line"].as_str()) {
                line_bytes += text.len() as u64 + 1;
                if let Some(sent) = text.get(..20).and_then(|n| n.parse::<u128>().ok()) {
                    latencies.push(now.saturating_sub(sent) as f64 / 1e6);
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(body);
    report.insert("log_follower_mb_per_s", json!(line_bytes as f64 / elapsed / 1e6));
    report
        .insert("log_agent_sent_mb_per_s", json!(shared.log_bytes_sent.load(Ordering::Relaxed) as f64 / elapsed / 1e6));
    report.insert("log_latency_ms", summary(latencies));

    // GET /api/v1/targets at a fixed rate.
    let (latencies, errors) = api_latency(&cp, &bearer, args.api_rate, args.duration).await;
    report.insert("api_targets_latency_ms", summary(latencies));
    report.insert("api_targets_rate", json!(args.api_rate));
    report.insert("api_targets_errors", json!(errors));

    shared.stop.store(true, Ordering::Relaxed);
    agents.abort_all();

    // The real agent's footprint.
    if !args.agent_idle.is_zero() {
        let token = cp.join_token(1, 600).await;
        let mut agent =
            Agent::enroll(&cp, &work.path().join("real-agent"), token["token"].as_str().unwrap_or_default())?;
        agent.start();
        let pid = agent.process.as_ref().and_then(|p| p.pid()).context("agent pid")?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (cpu, rss) = watch(pid, args.agent_idle).await;
        report.insert("agent_idle_rss_mib", json!(rss as f64 / 1024.0));
        report.insert("agent_idle_cpu_percent", json!(cpu));
        report.insert("agent_idle_window_s", json!(args.agent_idle.as_secs()));
        let size = std::fs::metadata(windflow_tests::bin("windflow-agent")).map(|m| m.len()).unwrap_or(0);
        report.insert("agent_binary_mib", json!(size as f64 / 1_048_576.0));
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for (name, value) in &report {
            println!("{name:<30} {value}");
        }
    }
    Ok(())
}
