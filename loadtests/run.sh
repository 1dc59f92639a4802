#!/usr/bin/env bash
# A headless Locust run against an OpenAI-compatible API (the gateway, or vLLM directly).
#   loadtests/run.sh [--host URL] [--users N] [--spawn-rate R] [--duration T] [--out DIR] [LOCUST ARGS...]
#     --host        default $QUANTGATE_URL, else http://127.0.0.1:8000
#     --users       concurrent users (default 4); --spawn-rate: users started per second (default: all at once)
#     --duration    run time, e.g. 60s, 5m (default 60s); running requests then get up to 120 s to finish
#     --out         report folder (default loadtests/reports/<UTC time>): report.html, stats_*.csv, locust.log
#     other args go to Locust and to loadtests/locustfile.py, whose options are:
#       --model smol|smol:<variant>   --mix chat-stream=3,chat=1,completion-stream=1,completion=1
#       --prompts-file FILE   --prompt-words N (32; 0: lines as they are)   --max-tokens N (32)
#       --allow-eos (default: ignore_eos)   --api-keys-file FILE   --request-timeout S (600)
#       --warmup-timeout S (900; 0: no warm-up request)
# Exits non-zero when any request failed. Needs .venv-load (`make install-load`).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
host="${QUANTGATE_URL:-http://127.0.0.1:8000}"
users=4
spawn_rate=""
duration=60s
out="$root/loadtests/reports/$(date -u +%Y%m%dT%H%M%SZ)"
extra=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --host) host=$2; shift 2 ;;
    --users) users=$2; shift 2 ;;
    --spawn-rate) spawn_rate=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,14s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) extra+=("$1"); shift ;;
  esac
done
locust="$root/.venv-load/bin/locust"
if [[ ! -x $locust ]]; then
  echo "run.sh: no $locust: run \`make install-load\` (the load-test environment)" >&2
  exit 2
fi
mkdir -p "$out"
echo "run.sh: $users users for $duration against $host; report in $out" >&2
"$locust" -f "$root/loadtests/locustfile.py" --headless --host "$host" \
  --users "$users" --spawn-rate "${spawn_rate:-$users}" --run-time "$duration" --stop-timeout 120 \
  --csv "$out/stats" --html "$out/report.html" --logfile "$out/locust.log" --only-summary \
  "${extra[@]}"
