//! Reconnect storms: a fleet of simulated agents (100 here; `WINDFLOW_STORM_AGENTS` sets more,
//! as for the figures in docs/reliability.md) comes back after the control plane is killed and
//! after it is restarted cleanly. The API keeps answering while they arrive (its p99 is
//! printed), and every agent is back within a bound.

use std::time::{Duration, Instant};

use windflow_tests::fleet::{start_fleet, summary};
use windflow_tests::*;

/// How long the whole fleet may take to be back after the control plane is ready again.
const ALL_BACK_WITHIN: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
enum Restart {
    /// SIGKILL: the agents find out from the silence of their sessions.
    Crash,
    /// SIGTERM: the control plane tells every agent it is going, and they come back spread out.
    Graceful,
}

/// Restarts the control plane and measures the storm: how the agents' returns spread, and the
/// API's latency while they arrive.
async fn storm(cp: &mut ControlPlane, agents: u64, restart: Restart) -> serde_json::Value {
    match restart {
        Restart::Crash => cp.crash_and_restart().await,
        Restart::Graceful => cp.restart().await,
    }
    let ready = Instant::now();
    let token = cp.access_token().await;
    let url = cp.url("/api/v1/targets?per_page=50");
    let mut latencies = Vec::new();
    let mut errors = 0u32;
    let mut returns = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        let started = Instant::now();
        match cp.http().get(&url).bearer_auth(&token).send().await {
            Ok(response) if response.status().is_success() => {
                let _ = response.bytes().await;
                latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            _ => errors += 1,
        }
        let back = cp.metric("windflow_agents_connected").await;
        while (returns.len() as u64) < back {
            returns.push(ready.elapsed().as_secs_f64());
        }
        if back >= agents {
            break;
        }
        assert!(
            ready.elapsed() < ALL_BACK_WITHIN,
            "{restart:?}: only {back} of {agents} agents back {:?} after the restart",
            ready.elapsed()
        );
    }
    serde_json::json!({
        "restart": format!("{restart:?}"),
        "agents": agents,
        "all_back_s": ready.elapsed().as_secs_f64(),
        "first_back_s": returns.first(),
        "half_back_s": returns.get(returns.len() / 2),
        "api_latency_ms": summary(latencies),
        "api_errors": errors,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_comes_back_spread_out_after_a_crash_and_a_restart_while_the_api_keeps_answering() {
    let agents: usize = std::env::var("WINDFLOW_STORM_AGENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let dir = tempfile::tempdir().expect("tempdir");
    // One address enrolls and polls for the whole fleet: no per-address or per-credential limit.
    let args = ["--rate-limit", "0", "--token-rate-limit", "0"].map(String::from).to_vec();
    let mut cp = ControlPlane::start_with(dir.path(), free_tcp_port(), free_udp_port(), args).await;
    let (_fleet, counters, _) = start_fleet(&mut cp, agents, 1).await.expect("fleet");
    let connected = eventually(Duration::from_secs(60), || {
        let counters = counters.clone();
        async move { counters.connected.load(std::sync::atomic::Ordering::Relaxed) == agents }
    })
    .await;
    assert!(connected, "the fleet never connected: {counters:?}");

    for restart in [Restart::Crash, Restart::Graceful] {
        let figures = storm(&mut cp, agents as u64, restart).await;
        println!("storm: {figures}");
        assert_eq!(figures["api_errors"], 0, "the API failed requests during the storm: {figures}");
    }
}
