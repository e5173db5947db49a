#!/usr/bin/env bash
# Create .venv and install dynamo-core (editable) with its dependencies, the engine plugins
# (editable, without their GPU engine libraries), and with --test the test requirements.
# Idempotent and quick when nothing changed (a stamp file records what was installed).
#
#     bash scripts/setup.sh          # what the quick start needs
#     bash scripts/setup.sh --test   # plus test tools
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
WITH_TESTS=0
[[ "${1:-}" == "--test" ]] && WITH_TESTS=1

say() { printf '[setup] %s\n' "$*"; }

if [[ ! -x "$PY" ]]; then
    say "creating virtual environment $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
fi

shopt -s nullglob
# what the install depends on: if none of it changed since the last run, there is nothing to do
inputs=("$ROOT/core/pyproject.toml" "$ROOT"/plugins/*/pyproject.toml "$ROOT"/examples/*/pyproject.toml)
if [[ $WITH_TESTS == 1 ]]; then inputs+=("$ROOT/requirements-test.txt"); fi
stamp="$VENV/.dynamo-setup-$WITH_TESTS"
digest="$(cat "${inputs[@]}" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$digest" ]]; then
    say "up to date ($VENV)"
    exit 0
fi

pip_() { "$PY" -m pip --disable-pip-version-check -q "$@"; }
pip_ install --upgrade pip >/dev/null 2>&1 || true
say "installing dynamo-core (editable) and its dependencies"
pip_ install -e "$ROOT/core"
for plugin in "$ROOT"/plugins/*/ "$ROOT"/examples/*/; do
    [[ -f "$plugin/pyproject.toml" ]] || continue
    # --no-deps: a plugin's engine library (vllm, sglang, tensorrt-llm) is the GPU build and is
    # not needed to list the plugin or to run its tests against fakes
    say "installing $(basename "$plugin") (editable, without its engine library)"
    pip_ install --no-deps -e "$plugin"
done
if [[ $WITH_TESTS == 1 ]]; then
    say "installing test requirements"
    pip_ install -r "$ROOT/requirements-test.txt"
fi
echo "$digest" > "$stamp"
say "done: $VENV"
