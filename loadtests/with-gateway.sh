#!/usr/bin/env bash
# Run a command against a gateway started for it, then stop the gateway and its vLLM servers.
#   loadtests/with-gateway.sh MANIFEST COMMAND [ARGS...]
# Starts `quantgate serve MANIFEST` on a free port, waits for /health, and runs COMMAND with
# QUANTGATE_URL set to the gateway. The gateway's log goes to $QUANTGATE_LOG (default: a temp file).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [[ $# -lt 2 ]]; then
  sed -n '2,5s/^# \{0,1\}//p' "$0" >&2
  exit 2
fi
manifest=$1
shift
quantgate="${QUANTGATE:-$root/.venv/bin/quantgate}"
port=$("$root/.venv/bin/python" -c \
  'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log="${QUANTGATE_LOG:-$(mktemp -t quantgate-serve.XXXXXX)}"

setsid "$quantgate" serve "$manifest" --port "$port" >"$log" 2>&1 &
gateway=$!
stop() {
  kill -TERM "$gateway" 2>/dev/null || return 0
  for _ in $(seq 120); do  # the gateway stops its vLLM servers on the way out
    kill -0 "$gateway" 2>/dev/null || return 0
    sleep 0.5
  done
  kill -KILL -- "-$gateway" 2>/dev/null || true
}
trap stop EXIT

export QUANTGATE_URL="http://127.0.0.1:$port"
for _ in $(seq 120); do
  curl -sf "$QUANTGATE_URL/health" >/dev/null && break
  if ! kill -0 "$gateway" 2>/dev/null; then
    echo "with-gateway: quantgate serve exited; its log ($log):" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  sleep 0.5
done
curl -sf "$QUANTGATE_URL/health" >/dev/null || { echo "with-gateway: no /health in 60 s" >&2; exit 1; }
echo "with-gateway: quantgate serve $manifest at $QUANTGATE_URL (log: $log)" >&2
"$@"
