#!/usr/bin/env python3
"""Turns the JSON reports of `windflow-bench --json` (one per rung, on standard input) into the
Markdown table that scripts/bench fleet records in docs/benchmarks.md."""

import json
import sys


def reports(text):
    """The JSON objects in `text`, which holds several one after the other."""
    decoder, index, found = json.JSONDecoder(), 0, []
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        value, index = decoder.raw_decode(text, index)
        found.append(value)
    return found


def number(value, digits=1):
    return f"{value:,.{digits}f}"


def triple(summary, keys, digits=1):
    return " / ".join(number(summary[key], digits) for key in keys)


def api(report):
    text = triple(report["api_targets_latency_ms"], ("p50", "p99"), 2)
    errors = report["api_targets_errors"]
    return f"{text} ({errors} errors)" if errors else text


ROWS = [
    ("enrollments per second", lambda r: number(r["enrollments_per_s"], 0)),
    ("connections per second", lambda r: number(r["connections_per_s"], 0)),
    ("control-plane RSS at rest (MiB)", lambda r: number(r["cp_rest_rss_mib"])),
    ("control-plane RSS per agent (KiB)", lambda r: number(r["cp_rss_per_agent_kib"])),
    ("control-plane CPU at rest (% of a core)", lambda r: number(r["cp_rest_cpu_percent"], 2)),
    ("fan-out of one job: all acknowledged (ms)", lambda r: number(r["fan_out_all_acknowledged_ms"])),
    ("fan-out delivery per agent p50 / p99 / max (ms)", lambda r: triple(r["fan_out_delivery_ms"], ("p50", "p99", "max"))),
    ("sustained jobs per second", lambda r: number(r["jobs_per_s"], 0)),
    ("status reports per second (1 per agent per s)", lambda r: number(r["status_reports_per_s"], 0)),
    ("log stream, one agent to one SSE follower (MB/s)", lambda r: number(r["log_follower_mb_per_s"])),
    ("log latency p50 / p99 (ms)", lambda r: triple(r["log_latency_ms"], ("p50", "p99"))),
    ("GET /api/v1/targets p50 / p99 at 1,000 req/s (ms)", api),
]


def main():
    runs = reports(sys.stdin.read())
    print("| agents | " + " | ".join(f"{r['agents']:,}" for r in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for name, cell in ROWS:
        print(f"| {name} | " + " | ".join(cell(r) for r in runs) + " |")
    first = runs[0]
    if "agent_idle_rss_mib" in first:
        print()
        print(
            f"The real `windflow-agent` (release, stripped): {first['agent_binary_mib']:.1f} MiB binary, "
            f"{first['agent_idle_rss_mib']:.1f} MiB RSS and {first['agent_idle_cpu_percent']:.2f} % CPU at idle "
            f"over {first['agent_idle_window_s']} s (connected, Docker engine present, 5 s heartbeats)."
        )


if __name__ == "__main__":
    main()
