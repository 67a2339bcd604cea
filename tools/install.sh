#!/usr/bin/env bash
# Installs everything resnext-det needs into the current Python, idempotently:
# fast when all is already there. Then, with --test, runs the test suite.
#
#   bash tools/install.sh            # install only
#   bash tools/install.sh --test     # install, then run the tests (the README command)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip --disable-pip-version-check"
log() { echo "[install] $*"; }

have() { "$PY" -c "import $1" >/dev/null 2>&1; }

# 1. torch + torchvision (pinned to the releases this platform ships).
if have torch && have torchvision; then
  log "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
else
  log "installing torch 2.14.1 + torchvision 0.29.1"
  $PIP install -q torch==2.14.1 torchvision==0.29.1
fi

# 2. runtime dependencies of detectron2 and of this project, by name.
DEPS=(fvcore iopath pycocotools omegaconf hydra-core yacs termcolor tabulate cloudpickle
      tqdm tensorboard matplotlib Pillow opencv-python-headless "setuptools<81"
      torchfile safetensors)
TEST_DEPS=(pytest pytest-timeout hypothesis)
missing=$("$PY" - "${DEPS[@]}" "${TEST_DEPS[@]}" <<'PYEOF'
import sys
from importlib import metadata
import re
out = []
for req in sys.argv[1:]:
    name = re.split(r"[<>=!]", req)[0]
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        out.append(req)
print(" ".join(out))
PYEOF
)
if [ -n "$missing" ]; then
  log "installing dependencies: $missing"
  # shellcheck disable=SC2086
  $PIP install -q $missing
else
  log "runtime and test dependencies already installed"
fi

# 3. detectron2: the official source install first; when no git host can be
#    reached, the PyPI redistribution of its Python package (sal-detectron2).
if have detectron2; then
  log "detectron2 already importable from $("$PY" -c 'import detectron2,os; print(os.path.dirname(detectron2.__file__))')"
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
    have detectron2 || { log "ERROR: detectron2 still not importable after install"; exit 1; }
  fi
fi

# 4. this project, editable.
REPO=$(pwd)
if (cd / && "$PY" -c 'import resnext_det, sys, os; sys.exit(0 if os.path.samefile(os.path.dirname(resnext_det.__file__), sys.argv[1]) else 1)' "$REPO/resnext_det") >/dev/null 2>&1; then
  log "resnext_det already installed (editable) from $(pwd)"
else
  log "installing resnext_det (editable)"
  $PIP install -q --no-deps --no-build-isolation -e .
fi
log "done"

if [ "${1:-}" = "--test" ]; then
  shift
  exec "$PY" -m pytest tests "$@"
fi
