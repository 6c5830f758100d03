# shellcheck shell=bash
# Shared helpers for the scripts in this folder. Sourced, not run.

export ROOT
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Build output lives outside the clone so that a fresh clone (as in CI) reuses earlier builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/windflow/target}"
# A CI run builds each clone once: incremental state would only pile up in the shared cache
# (a directory per clone, never reused).
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# memory-serve (which embeds the dashboard) would list every asset as a cargo warning.
export MEMORY_SERVE_QUIET=1
# Python tools for the tests (schemathesis) live in a virtualenv outside the clone too.
export WINDFLOW_VENV="${WINDFLOW_VENV:-/var/cache/windflow/venv}"
# LiteLLM's proxy for the AI tests, in a virtualenv of its own.
export WINDFLOW_LITELLM_VENV="${WINDFLOW_LITELLM_VENV:-/var/cache/windflow/litellm}"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Starts dockerd if no engine answers (there is no systemd on many CI machines).
# Each stack has a network of its own, and the engine's default address pools hold about
# thirty: fewer than the tests (or a busy host) use at once. /24s from 10.96.0.0/11 instead:
# 8192 networks, clear of the ranges the tests use (10.0.0.0/24, 10.231.0.0/24, 10.244.0.0/16).
ensure_docker_address_pools() {
  local config=/etc/docker/daemon.json
  if [ -f "$config" ] && grep -q default-address-pools "$config"; then return 0; fi
  mkdir -p /etc/docker
  python3 - "$config" <<'PY'
import json, os, sys
path = sys.argv[1]
config = json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) else {}
config["default-address-pools"] = [{"base": "10.96.0.0/11", "size": 24}]
json.dump(config, open(path, "w"), indent=2)
PY
  if docker version >/dev/null 2>&1; then
    say "the Docker engine's address pools change at its next start (/etc/docker/daemon.json)"
  fi
}

ensure_dockerd() {
  ensure_docker_address_pools
  if docker version >/dev/null 2>&1; then return 0; fi
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl start docker || true
  else
    say "starting dockerd"
    mkdir -p /var/log
    nohup dockerd >/var/log/windflow-dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 60); do
    docker version >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  tail -20 /var/log/windflow-dockerd.log >&2 || true
  fail "the Docker engine did not start"
}

# A second Docker engine, a single-node Swarm manager, for the Swarm tests. It runs in its own
# network namespace (10.231.0.2, reached from here over a veth pair) so that its Swarm ports,
# iptables rules and bridge never touch the main engine. `nsenter --net` rather than
# `ip netns exec`, which would also hide the host's cgroups from it. Nodes here have no
# registry, so tasks use the local image instead of trying a pull first.
export WINDFLOW_SWARM_DOCKER_HOST=unix:///run/windflow-swarm/docker.sock
export WINDFLOW_SWARM_ADDRESS=10.231.0.2
ensure_swarm_dockerd() {
  local swarm_docker=(docker -H "$WINDFLOW_SWARM_DOCKER_HOST")
  if "${swarm_docker[@]}" info --format '{{.Swarm.ControlAvailable}}' 2>/dev/null | grep -q true; then return 0; fi
  if [ ! -e /var/run/netns/wfswarm ]; then
    say "creating the Swarm test network namespace"
    ip netns add wfswarm
    ip link add wf-swarm-h type veth peer name wf-swarm-n
    ip link set wf-swarm-n netns wfswarm
    ip addr add 10.231.0.1/24 dev wf-swarm-h
    ip link set wf-swarm-h up
    ip netns exec wfswarm ip addr add "$WINDFLOW_SWARM_ADDRESS/24" dev wf-swarm-n
    ip netns exec wfswarm ip link set wf-swarm-n up
    ip netns exec wfswarm ip link set lo up
    ip netns exec wfswarm ip route add default via 10.231.0.1
  fi
  if ! "${swarm_docker[@]}" version >/dev/null 2>&1; then
    say "starting the Swarm test engine"
    mkdir -p /run/windflow-swarm /var/lib/windflow-swarm
    DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 nohup nsenter --net=/var/run/netns/wfswarm dockerd \
      --data-root /var/lib/windflow-swarm/docker --exec-root /run/windflow-swarm/exec \
      --pidfile /run/windflow-swarm/docker.pid --host "$WINDFLOW_SWARM_DOCKER_HOST" \
      >/var/log/windflow-swarm-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do
      "${swarm_docker[@]}" version >/dev/null 2>&1 && break
      sleep 0.5
    done
    "${swarm_docker[@]}" version >/dev/null 2>&1 || { tail -20 /var/log/windflow-swarm-dockerd.log >&2; fail "the Swarm test engine did not start"; }
  fi
  if ! "${swarm_docker[@]}" info --format '{{.Swarm.LocalNodeState}}' | grep -q active; then
    "${swarm_docker[@]}" swarm init --advertise-addr "$WINDFLOW_SWARM_ADDRESS" >/dev/null
  fi
}
