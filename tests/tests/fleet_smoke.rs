//! The fleet benchmark at small scale: it must run through every phase and report every
//! figure. How fast is for `scripts/bench fleet`, never for a test.

#[test]
fn the_fleet_benchmark_runs_every_phase_with_a_small_fleet() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_windflow-bench"))
        .args(["--agents", "20", "--duration", "1s", "--api-rate", "50", "--agent-idle", "1s", "--json"])
        .env("WINDFLOW_LOG", "warn")
        .output()
        .expect("the benchmark runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    for figure in [
        "enrollments_per_s",
        "connections_per_s",
        "cp_rss_per_agent_kib",
        "fan_out_all_acknowledged_ms",
        "jobs_per_s",
        "status_reports_per_s",
        "log_follower_mb_per_s",
        "agent_idle_rss_mib",
        "agent_binary_mib",
    ] {
        assert!(report[figure].as_f64().is_some_and(|v| v >= 0.0), "{figure} missing in {report:#}");
    }
    assert_eq!(report["fan_out_delivery_ms"]["count"], 20, "every agent got the fanned-out job");
    assert!(report["log_latency_ms"]["count"].as_u64().is_some_and(|n| n > 0), "log lines reached the follower");
    assert_eq!(report["api_targets_errors"], 0);
}
