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

# 4. detectron2 (detection on detectron2, SPEC §5), built from source at the commit pinned in
#    requirements/detectron2.txt: it is not on the package registry. The source is
#    $DETECTRON2_SOURCE (a source archive or a pip-installable URL; .ci/run points it at the
#    archive in ../shared/vendor/), by default the upstream repository at that commit. The built
#    wheel is cached like mmcv's. If it cannot be installed, the rest of the stack stays installed
#    and the detection tests are skipped with the reason, unless BISSL_REQUIRE_DETECTRON2=1 (CI),
#    where this step fails.
D2_PINS="$ROOT/requirements/detectron2.txt"
D2_COMMIT=$(sed -n -E 's/^# commit: *([0-9a-f]{40}) *$/\1/p' "$D2_PINS")
if [ -z "$D2_COMMIT" ]; then
    echo "[install] error: no '# commit: <40 hex digits>' line in $D2_PINS" >&2
    exit 1
fi
D2_SOURCE="${DETECTRON2_SOURCE:-git+https://github.com/facebookresearch/detectron2.git@$D2_COMMIT}"
D2_STAMP="$VENV/.detectron2-commit"
install_detectron2() {
    local torch_version py_tag key_dir wheel tmp built
    torch_version=$("$PY" -c 'import torch; print(torch.__version__.replace("+", "_"))')
    py_tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    key_dir="$CACHE_DIR/detectron2-${D2_COMMIT:0:12}-torch$torch_version-$py_tag-$(uname -m)"
    wheel=$(ls "$key_dir"/detectron2-*.whl 2>/dev/null | head -n1 || true)
    if [ -z "$wheel" ]; then
        echo "[install] 4/4 building detectron2 ${D2_COMMIT:0:12} from $D2_SOURCE against torch" \
             "$torch_version (about 1 min on 2 cores; cached afterwards in $key_dir)"
        tmp=$(mktemp -d)
        if ! MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" -m pip wheel --no-deps --no-build-isolation \
                --progress-bar off -w "$tmp" "$D2_SOURCE"; then
            rm -rf "$tmp"
            return 1
        fi
        mkdir -p "$key_dir"
        built=$(ls "$tmp"/detectron2-*.whl | head -n1)
        cp "$built" "$key_dir/.partial"  # then rename: a killed install leaves no half wheel
        mv "$key_dir/.partial" "$key_dir/$(basename "$built")"
        rm -rf "$tmp"
        wheel="$key_dir/$(basename "$built")"
    else
        echo "[install] 4/4 detectron2 from the cached wheel $wheel"
    fi
    # With its dependencies (hydra-core, omegaconf, iopath, black...), constrained by both files.
    "${PIP[@]}" -c "$D2_PINS" --force-reinstall --no-deps "$wheel" &&
        "${PIP[@]}" -c "$D2_PINS" "$wheel" &&
        "$PY" -c 'import detectron2, detectron2._C' &&
        echo "$D2_COMMIT" > "$D2_STAMP"
}
if [ "$(cat "$D2_STAMP" 2>/dev/null)" = "$D2_COMMIT" ] &&
        "$PY" -c 'import detectron2, detectron2._C' 2>/dev/null; then
    echo "[install] 4/4 detectron2 ${D2_COMMIT:0:12} already installed"
elif ! install_detectron2; then
    rm -f "$D2_STAMP"
    if [ "${BISSL_REQUIRE_DETECTRON2:-0}" = "1" ]; then
        echo "[install] error: detectron2 could not be installed from $D2_SOURCE and" \
             "BISSL_REQUIRE_DETECTRON2=1 requires it" >&2
        exit 1
    fi
    echo "[install] WARNING: detectron2 could not be installed from $D2_SOURCE; everything else" \
         "is installed and the detection tests will be skipped. Set DETECTRON2_SOURCE to a" \
         "detectron2 source archive at commit $D2_COMMIT (or a pip-installable URL) and re-run." >&2
fi
