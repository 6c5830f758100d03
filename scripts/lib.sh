# shellcheck shell=bash
# Shared helpers for the scripts in this folder. Sourced, not run.

export ROOT
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Build output lives outside the clone so that a fresh clone (as in CI) reuses earlier builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/windflow/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# memory-serve (which embeds the dashboard) would list every asset as a cargo warning.
export MEMORY_SERVE_QUIET=1
# Python tools for the tests (schemathesis) live in a virtualenv outside the clone too.
export WINDFLOW_VENV="${WINDFLOW_VENV:-/var/cache/windflow/venv}"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Starts dockerd if no engine answers (there is no systemd on many CI machines).
ensure_dockerd() {
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
