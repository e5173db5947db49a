#!/usr/bin/env bash
# Set up .venv-anchor: a separate virtual environment with NVIDIA Dynamo 1.6.1 (its Rust frontend
# and its mocker), the anchor that benchmarks/frontend/run.py --stacks ours anchor measures us against.
#
#     bash benchmarks/frontend/setup-anchor.sh          # idempotent: skips what is already done
#     VENV=/some/where bash benchmarks/frontend/setup-anchor.sh
#     FORCE=1 bash benchmarks/frontend/setup-anchor.sh  # check everything again
#
# `pip install ai-dynamo==1.6.1` fails here: its dependency aisimulate==0.13.0 is a placeholder
# wheel on PyPI that downloads the real one from the vendor's own index at build time (not
# reachable). The mocker does not need it (its engine is compiled into ai-dynamo-runtime's
# _core.abi3.so; aisimulate only backs the --ais-* options). So: both wheels with --no-deps, then
# every other Requires-Dist of the two (read from their installed metadata, extras left out).
# See shared/reference/dynamo-anchor-bench.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv-anchor}"
PY="$VENV/bin/python"
DYNAMO_VERSION="${DYNAMO_VERSION:-1.6.1}"

say() { printf '[setup-anchor] %s\n' "$*"; }
# (pip's configured find-links may name folders this machine lacks: those warnings are dropped)
pip_() {
    "$PY" -m pip --disable-pip-version-check -q "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }
    return "${PIPESTATUS[0]}"
}
dist_version() { "$PY" -c "from importlib.metadata import version; print(version('$1'))" 2>/dev/null || true; }

stamp="$VENV/.dynamo-setup-anchor"
digest="$(cat "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)-$DYNAMO_VERSION"
if [[ -x "$PY" && -f "$stamp" && "$(cat "$stamp")" == "$digest" && "${FORCE:-0}" != "1" ]]; then
    say "up to date ($VENV; FORCE=1 to check everything again)"
    exit 0
fi

# 1. the virtual environment ------------------------------------------------------------------
if [[ -x "$PY" ]]; then
    say "virtual environment $VENV exists ($("$PY" --version))"
else
    BASE_PY="${PYTHON:-python3}"
    say "creating virtual environment $VENV with $($BASE_PY --version)"
    "$BASE_PY" -m venv "$VENV"
fi

# 2. the two Dynamo wheels, without their dependencies -------------------------------------------
if [[ "$(dist_version ai-dynamo)" == "$DYNAMO_VERSION" && "$(dist_version ai-dynamo-runtime)" == "$DYNAMO_VERSION" ]]; then
    say "ai-dynamo and ai-dynamo-runtime $DYNAMO_VERSION already installed"
else
    say "installing ai-dynamo==$DYNAMO_VERSION ai-dynamo-runtime==$DYNAMO_VERSION (--no-deps; ~80 MB)"
    pip_ install --no-deps "ai-dynamo==$DYNAMO_VERSION" "ai-dynamo-runtime==$DYNAMO_VERSION"
fi

# 3. every other Requires-Dist (no extras; not aisimulate) ---------------------------------------
mapfile -t reqs < <("$PY" - <<'EOF'
from importlib.metadata import requires
try:
    from packaging.requirements import Requirement
except ImportError:  # a bare venv: pip's vendored copy
    from pip._vendor.packaging.requirements import Requirement
skip = {"aisimulate", "ai-dynamo-runtime", "ai-dynamo"}
seen = set()
for dist in ("ai-dynamo", "ai-dynamo-runtime"):
    for line in requires(dist) or []:
        req = Requirement(line)
        if req.name.lower() in skip:
            continue
        # markers that name an extra belong to the vllm/sglang/trtllm extras: left out
        if req.marker is not None and "extra" in str(req.marker):
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        spec = f"{req.name}{req.specifier}"
        if spec not in seen:
            seen.add(spec)
            print(spec)
EOF
)
say "installing the other dependencies: ${reqs[*]}"
pip_ install "${reqs[@]}"

# 4. check: both entry points import (no torch on the hot path) ------------------------------------
"$PY" - <<'EOF'
import importlib.util, sys
for mod in ("dynamo.frontend", "dynamo.mocker", "dynamo._core"):
    if importlib.util.find_spec(mod) is None:
        sys.exit(f"[setup-anchor] {mod} is not importable")
import dynamo._core  # noqa: F401  the Rust extension loads
EOF
"$PY" -m pip --disable-pip-version-check check 2>&1 | grep -v -i aisimulate || true
say "ready: $PY -m dynamo.frontend / -m dynamo.mocker (NVIDIA Dynamo $DYNAMO_VERSION)"
echo "$digest" > "$stamp"
