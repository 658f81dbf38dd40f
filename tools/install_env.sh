#!/usr/bin/env bash
# Create .venv/ in the repository and install the whole stack into it (idempotent).
#
# Why each step is the way it is: ../shared/ENVIRONMENT.md and README.md ("Installing").
#   1. torch/torchvision from the registry (the CUDA build; it runs on CPU too). The machine's
#      pip config points find-links at a local CPU-only torch wheel whose ABI torchvision's
#      compiled ops do not match, so that config is bypassed for this install.
#   2. mmcv is built from source against that torch (mmseg/mmdet need its compiled ops). The
#      built wheel is cached outside the repository, keyed by mmcv, torch and Python versions.
#   3. everything else, constrained by requirements/pins.txt, then this project (editable).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="${VENV:-$ROOT/.venv}"
PINS="$ROOT/requirements/pins.txt"
PYTHON="${PYTHON:-python3}"
CACHE_DIR="${BISSL_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bissl/wheels}"

# Ignore the machine-wide pip config (find-links to the CPU-only torch wheel); keep certificates.
export PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= PIP_DISABLE_PIP_VERSION_CHECK=1

pin_of() { grep -E "^$1(==|>|<|\[)" "$PINS" | head -n1; }

if [ ! -x "$VENV/bin/python" ]; then
    echo "[install] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# pip constraints may not carry extras ("ray[tune]"): derive a constraints file without them.
CONSTRAINTS=$(mktemp)
sed -E 's/\[[^]]*\]//' "$PINS" > "$CONSTRAINTS"
trap 'rm -f "$CONSTRAINTS"' EXIT
PIP=("$PY" -m pip install --progress-bar off -c "$CONSTRAINTS")

echo "[install] 1/3 torch, torchvision and build tools"
"${PIP[@]}" "$(pin_of torch)" "$(pin_of torchvision)" "$(pin_of setuptools)" wheel ninja numpy

MMCV_PIN=$(pin_of mmcv)
MMCV_VERSION=${MMCV_PIN#mmcv==}
if "$PY" - "$MMCV_VERSION" <<'PYEOF'
import importlib.metadata as md, sys
try:
    ok = md.version("mmcv") == sys.argv[1]
    import mmcv.ops  # noqa: F401  compiled ops present and loadable
except Exception:
    ok = False
sys.exit(0 if ok else 1)
PYEOF
then
    echo "[install] 2/3 mmcv $MMCV_VERSION already installed with its ops"
else
    TORCH_VERSION=$("$PY" -c 'import torch; print(torch.__version__.replace("+", "_"))')
    PY_TAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    KEY_DIR="$CACHE_DIR/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$PY_TAG-$(uname -m)"
    WHEEL=$(ls "$KEY_DIR"/mmcv-*.whl 2>/dev/null | head -n1 || true)
    if [ -z "$WHEEL" ]; then
        echo "[install] 2/3 building mmcv $MMCV_VERSION from source against torch $TORCH_VERSION" \
             "(about 16 min on 2 cores; cached afterwards in $KEY_DIR)"
        TMP=$(mktemp -d)
        trap 'rm -rf "$TMP" "$CONSTRAINTS"' EXIT
        MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
            "$PY" -m pip wheel --no-deps --no-build-isolation --progress-bar off \
            -w "$TMP" "$MMCV_PIN"
        mkdir -p "$KEY_DIR"
        BUILT=$(ls "$TMP"/mmcv-*.whl | head -n1)
        # Copy under a temporary name, then rename: a killed install leaves no half wheel.
        cp "$BUILT" "$KEY_DIR/.partial"
        mv "$KEY_DIR/.partial" "$KEY_DIR/$(basename "$BUILT")"
        WHEEL="$KEY_DIR/$(basename "$BUILT")"
    else
        echo "[install] 2/3 mmcv from the cached wheel $WHEEL"
    fi
    "$PY" -m pip install --progress-bar off --no-deps "$WHEEL"
fi

echo "[install] 3/3 the rest of the stack and this project (editable)"
"${PIP[@]}" -r <(grep -v -E '^(#|$|torch==|torchvision==|mmcv==)' "$PINS")
# mmcv's own dependencies (its wheel went in with --no-deps)
"${PIP[@]}" addict packaging Pillow pyyaml yapf opencv-python
"${PIP[@]}" --no-build-isolation -e "$ROOT"
"$PY" -c 'import torch, torchvision, mmcv.ops, mmengine, mmdet, mmseg; print("[install] ok: torch", torch.__version__, "mmcv", mmcv.__version__, "mmdet", mmdet.__version__, "mmseg", mmseg.__version__)'
