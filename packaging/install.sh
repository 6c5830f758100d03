#!/bin/sh
# WindFlow agent installer, served by the control plane at /install.sh.
#
# Run it through the one-liner that the dashboard and `windflow token create` print:
#   curl -fsSL --pinnedpubkey 'sha256//…' -k 'https://cp:8443/install.sh' | WINDFLOW_JOIN_TOKEN='wfj_…' sh
# `-k` is only safe because of `--pinnedpubkey`: curl refuses any server whose public key is not
# the control plane's. Everything after the CA download is verified against that CA.
#
# Re-running it is safe: the binary is replaced, an enrolled agent keeps its identity, and the
# running agent is restarted.
set -eu

# Everything runs from main(), called on the last line, so a download cut short runs nothing.
main() {
SERVER_URL='@@SERVER_URL@@'
SERVER_PIN='@@SERVER_PIN@@'
CA_SHA256='@@CA_SHA256@@'

INSTALL_DIR="${WINDFLOW_INSTALL_DIR:-/usr/local/bin}"
DATA_DIR="${WINDFLOW_AGENT_DATA_DIR:-/var/lib/windflow-agent}"
LOG_FILE="${WINDFLOW_AGENT_LOG:-$DATA_DIR/agent.log}"
PID_FILE="${WINDFLOW_AGENT_PID_FILE:-$DATA_DIR/agent.pid}"

say() { printf 'windflow: %s\n' "$*"; }
fail() { printf 'windflow: error: %s\n' "$*" >&2; exit 1; }

command -v curl >/dev/null 2>&1 || fail "curl is required"
command -v sha256sum >/dev/null 2>&1 || fail "sha256sum is required"
[ -n "${WINDFLOW_JOIN_TOKEN:-}" ] || fail "WINDFLOW_JOIN_TOKEN is not set: paste the whole one-liner from the dashboard or from 'windflow token create'"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# 1. The CA, over TLS pinned to the control plane's public key, checked against the pinned hash.
curl -fsS --pinnedpubkey "$SERVER_PIN" -k "$SERVER_URL/ca.pem" -o "$tmp/ca.pem" \
  || fail "could not reach $SERVER_URL with the pinned key (wrong address, or not the control plane you were given)"
got=$(sha256sum "$tmp/ca.pem" | cut -d' ' -f1)
[ "$got" = "$CA_SHA256" ] || fail "the CA served by $SERVER_URL does not match the pinned hash; refusing to continue"

# 2. The agent binary, over TLS verified against that CA.
arch=$(uname -m)
mkdir -p "$INSTALL_DIR" "$DATA_DIR"
chmod 700 "$DATA_DIR"
curl -fsS --cacert "$tmp/ca.pem" "$SERVER_URL/downloads/windflow-agent-$arch" -o "$tmp/windflow-agent" \
  || fail "could not download the agent for $arch from $SERVER_URL"
chmod 755 "$tmp/windflow-agent"
mv -f "$tmp/windflow-agent" "$INSTALL_DIR/windflow-agent"
say "installed $INSTALL_DIR/windflow-agent"

# 3. Enrollment: the agent makes its own key pair; only a CSR and the token leave this host.
"$INSTALL_DIR/windflow-agent" enroll --server "$SERVER_URL" --ca-file "$tmp/ca.pem" --data-dir "$DATA_DIR" \
  || fail "enrollment failed (see the message above)"

# 4. Keep it running.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  cat > /etc/systemd/system/windflow-agent.service <<UNIT
[Unit]
Description=WindFlow agent
After=network-online.target docker.service
Wants=network-online.target

[Service]
ExecStart=$INSTALL_DIR/windflow-agent run --data-dir $DATA_DIR
Restart=always
RestartSec=2
NoNewPrivileges=true
ProtectSystem=full
ReadWritePaths=$DATA_DIR

[Install]
WantedBy=multi-user.target
UNIT
  systemctl daemon-reload
  systemctl enable windflow-agent >/dev/null
  systemctl restart windflow-agent
  say "started the windflow-agent systemd service (logs: journalctl -u windflow-agent)"
else
  if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    old=$(cat "$PID_FILE")
    kill "$old" 2>/dev/null || true
    i=0
    while kill -0 "$old" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    say "stopped the previous agent (pid $old)"
  fi
  detach=""
  command -v setsid >/dev/null 2>&1 && detach="setsid"
  $detach nohup "$INSTALL_DIR/windflow-agent" run --data-dir "$DATA_DIR" >>"$LOG_FILE" 2>&1 </dev/null &
  echo $! > "$PID_FILE"
  say "no systemd here: started the agent in the background (pid $(cat "$PID_FILE"), log $LOG_FILE, pid file $PID_FILE)"
fi
say "done: this host is enrolled with $SERVER_URL"
}

main "$@"
