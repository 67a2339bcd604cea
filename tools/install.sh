#!/usr/bin/env bash
# Installs everything resnext-det needs into the current Python, idempotently (fast when all
# is already there). Then, with --test, runs the test suite.
#
#   bash tools/install.sh            # install only
#   bash tools/install.sh --test     # install, then run the tests (the README command)
#
# Only what pip cannot do lives here: torch pinned to the releases this platform ships, and
# detectron2 (not on PyPI). Every other dependency, with its version bounds, is declared in
# setup.py and installed by `pip install -e .[test,deploy]`, which reinstalls a present
# package that is outside its bound (e.g. setuptools<81).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip --disable-pip-version-check"
log() { echo "[install] $*"; }

# What is already there, in one interpreter start (importing torch costs seconds): sets
# TORCH_VERSION and D2_DIR (detectron2's folder), each empty when its import fails.
probe() {
  local found
  found=$("$PY" - <<'PYEOF' 2>/dev/null || true
try:
    import torch, torchvision
    print(torch.__version__)
except Exception:
    print()
try:
    import detectron2, os
    print(os.path.dirname(detectron2.__file__))
except Exception:
    print()
PYEOF
)
  TORCH_VERSION=$(printf '%s\n' "$found" | sed -n 1p)
  D2_DIR=$(printf '%s\n' "$found" | sed -n 2p)
}
probe

# 1. torch + torchvision (pinned to the releases this platform ships).
if [ -n "$TORCH_VERSION" ]; then
  log "torch $TORCH_VERSION already installed"
else
  log "installing torch 2.14.1 + torchvision 0.29.1"
  $PIP install -q torch==2.14.1 torchvision==0.29.1
  probe  # detectron2 may have failed only for want of torch
fi

# 2. detectron2: the official source install first; when no git host can be reached, the
#    PyPI redistribution of its Python package (sal-detectron2), without its C++ extension.
if [ -n "$D2_DIR" ]; then
  log "detectron2 already importable from $D2_DIR"
else
  log "trying the official detectron2 source install (git)"
  if timeout 600 $PIP install -q --no-build-isolation \
      'git+https://github.com/facebookresearch/detectron2.git' 2>/tmp/resnext_det_d2_git.log; then
    log "route: detectron2 installed from its official git source"
  else
    log "official source install failed: $(grep -m1 -oE 'Could not resolve host: [^ ]*' /tmp/resnext_det_d2_git.log || tail -n1 /tmp/resnext_det_d2_git.log)"
    SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    TARGET="$SITE/_sal_detectron2"
    log "route: PyPI sal-detectron2==0.7.2 (pure-Python detectron2 redistribution) into $TARGET"
    $PIP install -q --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
      --upgrade --target "$TARGET" sal-detectron2==0.7.2
    echo "$TARGET" > "$SITE/_sal_detectron2.pth"
  fi
fi

# 3. this project (editable) with every declared dependency and the test, deploy and ray
#    extras; pip honours the version bounds of setup.py.
log "installing resnext_det (editable) with its dependencies: pip install -e .[test,deploy,ray]"
PIP_LOG=$(mktemp)
if ! $PIP install -q --no-build-isolation -e ".[test,deploy,ray]" >"$PIP_LOG" 2>&1; then
  cat "$PIP_LOG"; log "ERROR: pip install -e .[test,deploy,ray] failed (output above)"; exit 1
fi
rm -f "$PIP_LOG"
"$PY" -W ignore -c 'import resnext_det, detectron2.model_zoo, onnxruntime, openvino, ray.data' \
  || { log "ERROR: resnext_det, detectron2.model_zoo, onnxruntime, openvino or ray.data not importable after install"; exit 1; }
log "done"

if [ "${1:-}" = "--test" ]; then
  shift
  # every core (pytest-xdist); tests go wherever a worker is free, except the modules whose
  # costly module fixtures (trained tiny detectors, exports) keep them on one worker
  # (tests/conftest.py's xdist groups)
  exec "$PY" -m pytest -n auto --dist loadgroup tests "$@"
fi
