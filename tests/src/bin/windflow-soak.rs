//! `windflow-soak`: a long run of a simulated fleet against a real `windflow` process, watching
//! the control plane's memory. The agents (see `windflow_tests::fleet`) heartbeat, answer signed
//! jobs and stream logs; the soak keeps work flowing the whole time:
//!
//! - a fan-out of a signed job to every agent every `--fan-out-every`;
//! - deployments created, updated and removed on a rotating set of agents;
//! - log follows opened on running deployments, read for a while, and closed;
//! - API reads (targets, deployments, metrics).
//!
//! The control plane's RSS is sampled every `--sample-every`. After `--warm-up`, the first sample
//! is the reference: every later sample must stay within `--tolerance` of it. Exits non-zero when
//! it does not, or when work failed. Prints a table, or JSON with `--json`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use windflow_tests::fleet::{process_usage, start_fleet};
use windflow_tests::{ControlPlane, free_tcp_port, free_udp_port};

#[derive(Debug, Parser)]
#[command(name = "windflow-soak", about = "Soak: a simulated fleet with jobs and log streams for a long time")]
struct Args {
    #[arg(long, default_value_t = 500)]
    agents: usize,
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time before the reference sample: caches and pools filling up is not a leak.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    warm_up: Duration,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    sample_every: Duration,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    fan_out_every: Duration,
    /// Largest growth of the RSS over the reference allowed, in percent.
    #[arg(long, default_value_t = 5.0)]
    tolerance: f64,
    /// Deployments kept running at once (each on its own agent), updated and replaced in turn.
    #[arg(long, default_value_t = 20)]
    deployments: usize,
    #[arg(long)]
    json: bool,
}

/// One sample of the control plane.
struct Sample {
    at_s: f64,
    rss_kib: u64,
    /// Bytes on disk in the control plane's data directory: the store's growth, to tell a cache
    /// following its data from a leak.
    data_bytes: u64,
    connected: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = tempfile::tempdir()?;
    let mut cp = ControlPlane::start_with(
        work.path(),
        free_tcp_port(),
        free_udp_port(),
        // One address enrolls and calls the API for the whole fleet.
        ["--rate-limit", "0", "--token-rate-limit", "0"].map(String::from).to_vec(),
    )
    .await;
    let pid = cp.process.pid().context("control plane pid")?;
    let (_fleet, counters, agent_ids) = start_fleet(&mut cp, args.agents, 20).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while counters.connected.load(std::sync::atomic::Ordering::Relaxed) < args.agents {
        if Instant::now() > deadline {
            bail!("only {:?} of {} agents connected", counters.connected, args.agents);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("soak: {} agents connected; running for {:?}", args.agents, args.duration);

    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut next_sample = Instant::now();
    let mut next_fan_out = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    let (mut fan_outs, mut deploys, mut removals, mut follows, mut follow_lines, mut api_reads) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    // (deployment, stack) running in each slot.
    let mut slots: Vec<Option<(Value, String)>> = vec![None; args.deployments.min(agent_ids.len())];
    let mut turn = 0usize;
    while started.elapsed() < args.duration {
        if failures.len() > 20 {
            break;
        }
        if Instant::now() >= next_sample {
            next_sample += args.sample_every;
            let (rss_kib, _) = process_usage(pid);
            let connected = cp.metric("windflow_agents_connected").await;
            let data_bytes = disk_usage(work.path());
            samples.push(Sample { at_s: started.elapsed().as_secs_f64(), rss_kib, data_bytes, connected });
            eprintln!(
                "soak: {:>6.0} s  rss {:>7.1} MiB  data {:>7.1} MiB  connected {connected}",
                started.elapsed().as_secs_f64(),
                rss_kib as f64 / 1024.0,
                data_bytes as f64 / MIB
            );
        }
        if Instant::now() >= next_fan_out {
            next_fan_out += args.fan_out_every;
            let (status, answer) = cp.api(Method::POST, "/targets/facts", None).await;
            fan_outs += 1;
            if !status.is_success() || answer["failed"].as_u64().unwrap_or(0) > 0 {
                failures.push(format!("fan-out {fan_outs}: {status} {answer}"));
            }
        }

        // A deployment slot in turn: remove what it holds, deploy a new one, follow its logs.
        let slot = turn % slots.len().max(1);
        turn += 1;
        if let Some((previous, stack_id)) = slots[slot].take() {
            let id = previous["id"].as_str().unwrap_or_default().to_owned();
            let (status, removal) = cp.api(Method::DELETE, &format!("/deployments/{id}"), None).await;
            removals += 1;
            if status.as_u16() != 202 {
                failures.push(format!("removal of {id}: {status} {removal}"));
            } else if cp.settled(&removal).await["state"] != "removed" {
                failures.push(format!("{id} was not removed"));
            }
            // People clean up: the stack goes with its last deployment.
            let (status, body) = cp.api(Method::DELETE, &format!("/stacks/{stack_id}"), None).await;
            if status.as_u16() != 204 {
                failures.push(format!("deleting stack {stack_id}: {status} {body}"));
            }
        }
        let name = format!("soak-{turn}");
        let compose = format!("services:\n  app:\n    image: soak:{turn}\n  worker:\n    image: soak:{turn}\n");
        let (status, stack) = cp.api(Method::POST, "/stacks", Some(json!({"name": name, "compose": compose}))).await;
        if status.as_u16() != 201 {
            failures.push(format!("stack {name}: {status} {stack}"));
            continue;
        }
        let target = agent_ids[slot];
        let (status, deployment) = cp
            .api(Method::POST, &format!("/stacks/{}/deploy/{target}", stack["id"].as_str().unwrap_or_default()), None)
            .await;
        deploys += 1;
        if status.as_u16() != 202 {
            failures.push(format!("deploy of {name}: {status} {deployment}"));
            continue;
        }
        let id = deployment["id"].as_str().unwrap_or_default().to_owned();
        let settled = cp.settled(&deployment).await;
        if settled["state"] != "running" {
            failures.push(format!("{name} did not run: {settled}"));
        }
        slots[slot] = Some((deployment.clone(), stack["id"].as_str().unwrap_or_default().to_owned()));
        let token = cp.access_token().await;
        follow_lines += follow_for(&cp, &token, &id, Duration::from_secs(2)).await.unwrap_or_else(|e| {
            failures.push(format!("log follow of {name}: {e:#}"));
            0
        });
        follows += 1;
        for path in ["/targets?per_page=50", "/deployments?per_page=50"] {
            let (status, _) = cp.api(Method::GET, path, None).await;
            api_reads += 1;
            if !status.is_success() {
                failures.push(format!("GET {path}: {status}"));
            }
        }
    }

    let reference = samples.iter().find(|s| s.at_s >= args.warm_up.as_secs_f64()).map(|s| s.rss_kib);
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at_s >= args.warm_up.as_secs_f64()).collect();
    let max_after = after.iter().map(|s| s.rss_kib).max();
    let last = samples.last().map(|s| s.rss_kib);
    let growth = |value: Option<u64>| match (reference, value) {
        (Some(r), Some(v)) if r > 0 => (v as f64 / r as f64 - 1.0) * 100.0,
        _ => 0.0,
    };
    let report = json!({
        "agents": args.agents,
        "duration_s": started.elapsed().as_secs_f64(),
        "warm_up_s": args.warm_up.as_secs_f64(),
        "rss_first_mib": samples.first().map(|s| s.rss_kib as f64 / 1024.0),
        "rss_reference_mib": reference.map(|r| r as f64 / 1024.0),
        "rss_max_after_warm_up_mib": max_after.map(|r| r as f64 / 1024.0),
        "rss_last_mib": last.map(|r| r as f64 / 1024.0),
        "rss_max_growth_percent": growth(max_after),
        "rss_last_growth_percent": growth(last),
        "tolerance_percent": args.tolerance,
        "min_connected": samples.iter().map(|s| s.connected).min(),
        "fan_outs": fan_outs,
        "jobs_answered": counters.jobs.load(std::sync::atomic::Ordering::Relaxed),
        "deploys": deploys,
        "removals": removals,
        "log_follows": follows,
        "log_lines_read": follow_lines,
        "api_reads": api_reads,
        "failures": failures,
        "data_first_mib": samples.first().map(|s| s.data_bytes as f64 / MIB),
        "data_last_mib": samples.last().map(|s| s.data_bytes as f64 / MIB),
        // [seconds, RSS MiB, data MiB]
        "samples": samples
            .iter()
            .map(|s| json!([s.at_s.round(), (s.rss_kib as f64 / 102.4).round() / 10.0, (s.data_bytes as f64 / MIB * 10.0).round() / 10.0]))
            .collect::<Vec<Value>>(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if let Some(map) = report.as_object() {
        for (name, value) in map {
            if name != "samples" {
                println!("{name:<28} {value}");
            }
        }
    }
    if !report["failures"].as_array().is_none_or(Vec::is_empty) {
        bail!("work failed during the soak");
    }
    if reference.is_none() {
        bail!("the run was shorter than its warm-up: nothing to compare");
    }
    if growth(max_after) > args.tolerance {
        bail!(
            "the control plane's RSS grew {:.1} % over the reference (tolerance {} %)",
            growth(max_after),
            args.tolerance
        );
    }
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

/// Bytes of the files under `dir`, recursively.
fn disk_usage(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => disk_usage(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Follows a deployment's logs for `window`; the number of lines read.
async fn follow_for(cp: &ControlPlane, token: &str, id: &str, window: Duration) -> anyhow::Result<u64> {
    let response = cp
        .http()
        .get(cp.url(&format!("/api/v1/deployments/{id}/logs?follow=true&tail=0")))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?;
    let mut body = response.bytes_stream();
    let mut lines = 0u64;
    let end = tokio::time::Instant::now() + window;
    while let Ok(Some(chunk)) = tokio::time::timeout_at(end, body.next()).await {
        lines += chunk?.split(|b| *b == b'\n').filter(|l| l.starts_with(b"data:")).count() as u64;
    }
    Ok(lines)
}
