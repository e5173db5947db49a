#!/usr/bin/env bash
# Set up (first run only) and start a frontend and a mocker worker on this machine: file discovery,
# TCP request plane, no infrastructure. Ctrl-C stops both.
#
#     bash scripts/quickstart.sh [--http-port 8000] [extra mocker flags, e.g. --speedup-ratio 10]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
PY="$ROOT/.venv/bin/python"

PORT=8000
if [[ "${1:-}" == "--http-port" ]]; then PORT="$2"; shift 2; fi
export DYN_FILE_KV="${DYN_FILE_KV:-${TMPDIR:-/tmp}/dynamo_store_kv}"

pids=()
cleanup() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$PY" -m dynamo.mocker "$@" & pids+=($!)
"$PY" -m dynamo.frontend --http-port "$PORT" & pids+=($!)

for _ in $(seq 1 100); do
    if curl -fs "localhost:$PORT/health" >/dev/null 2>&1; then break; fi
    sleep 0.2
done
cat <<MSG

  Dynamo is serving the model "mocker" on http://localhost:$PORT  (Ctrl-C to stop)

  curl localhost:$PORT/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "mocker", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32}'

  curl -N localhost:$PORT/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "mocker", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32, "stream": true}'

MSG
wait -n "${pids[@]}"
