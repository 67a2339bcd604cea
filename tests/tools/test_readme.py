"""README.md and the docs/ pages tell the truth: every ```python block runs as written on the CPU
(the README's first in a fresh interpreter, the others forked from tests/zygote.py's interpreter
that has imported torch, detectron2 and resnext_det, under the same PYTHONWARNINGS) and prints no
warning, and every ```bash block (each takes under a minute) runs with ``bash -e`` and exits 0.

```sh blocks are the long jobs (installing and running the suite, the demos, COCO training on
GPUs, the NNCF int8 export); the suite covers them elsewhere (.ci/run is the first;
tests/tools/test_train_net.py runs reduced demos; tests/deploy export with --int8).
"""
import glob
import os
import re
import subprocess
import sys

import pytest

import zygote
from test_quiet_tools import _warning_lines

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(ROOT, "README.md")
PAGES = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
_FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def readme_blocks(lang, pages=None):
    """("page:line", code) of each fenced block of ``lang`` in README.md and docs/*.md."""
    out = []
    for page in pages or PAGES:
        text = open(page, encoding="utf-8").read()
        name = os.path.relpath(page, ROOT)
        out += [(f"{name}:{text[: m.start()].count(chr(10)) + 1}", m.group(2)) for m in _FENCE.finditer(text)
                if m.group(1) == lang]
    return out


def _env():
    # the README speaks of a CPU-only machine; a user's shell has no pytest warning filters
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="default")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def workdir(tmp_path):
    """A fresh folder where repo-relative paths (tools/, configs/) resolve, as in a checkout."""
    for name in ("tools", "configs"):
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    return tmp_path


def test_readme_has_blocks():
    assert len(readme_blocks("python", [README])) >= 2
    assert len(readme_blocks("python")) >= 4 and len(readme_blocks("bash")) >= 3


# "README.md:LINE" of the README's first python block (run in a fresh interpreter below)
FIRST_README_BLOCK = readme_blocks("python", [README])[0][0]


@pytest.mark.slow
@pytest.mark.parametrize("line_no,code", readme_blocks("python"), ids=lambda x: x if ":" in str(x)[:40] and "\n" not in str(x) else "")
def test_python_block_runs_as_written(line_no, code, workdir):
    if line_no == FIRST_README_BLOCK:
        # the README's first block in a fresh interpreter: what importing resnext_det prints
        r = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=_env(), capture_output=True,
                           text=True, timeout=600)
    else:  # forked from the worker's zygote (torch, detectron2, resnext_det imported: seconds saved)
        r = zygote.run(["-c", code], cwd=workdir, env=_env(), timeout=600)
    assert r.returncode == 0, f"{line_no}:\n{code}\n--- stderr:\n{r.stderr[-4000:]}"
    assert "Warning" not in r.stderr, f"{line_no} printed warnings:\n{r.stderr[-3000:]}"


# a bash block that starts with this line runs where the demo has run (output/demo_fpn/)
AFTER_DEMO = "# after: python tools/train_net.py --demo"


@pytest.mark.slow
@pytest.mark.parametrize("line_no,code", [b for b in readme_blocks("bash") if not b[1].startswith(AFTER_DEMO)],
                         ids=lambda x: x if ":" in str(x)[:40] and "\n" not in str(x) else "")
def test_bash_block_runs_as_written(line_no, code, workdir):
    r = subprocess.run(["bash", "-e", "-c", code], cwd=workdir, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"{line_no}:\n{code}\n--- stderr:\n{r.stderr[-4000:]}"
    assert "Warning" not in r.stderr, f"{line_no} printed warnings:\n{r.stderr[-3000:]}"


@pytest.mark.slow
def test_after_demo_blocks_run_as_written(workdir):
    """The blocks that follow the demo, after a shortened demo training (the same config and
    OUTPUT_DIR, 4 iterations on 8 images, 2 validation images): they read output/demo_fpn/ as the
    demo leaves it (its files, not its AP)."""
    blocks = [b for b in readme_blocks("bash") if b[1].startswith(AFTER_DEMO)]
    assert blocks, "the README's tools/predict.py block"
    short = ["OUTPUT_DIR", "output/demo_fpn", "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(3,)",
             "SOLVER.WARMUP_ITERS", "2", "SOLVER.IMS_PER_BATCH", "2", "TEST.EVAL_PERIOD", "0",
             "DATALOADER.NUM_WORKERS", "0", "RESNEXT_PLAN.SYNTHETIC.NUM_TRAIN", "8",
             "RESNEXT_PLAN.SYNTHETIC.NUM_VAL", "2"]
    r = subprocess.run([sys.executable, "tools/train_net.py", "--config", "demo_tiny_X_FPN_synthetic.yaml"] + short,
                       cwd=workdir, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # 4 iterations: the model predicts nothing, and detectron2's evaluator says so without a warning
    assert "No predictions from the model!" in r.stdout + r.stderr
    assert not _warning_lines(r.stdout + r.stderr), _warning_lines(r.stdout + r.stderr)
    for line_no, code in blocks:
        r = subprocess.run(["bash", "-e", "-c", code], cwd=workdir, env=_env(), capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, f"{line_no}:\n{code}\n--- stderr:\n{r.stderr[-4000:]}"
        assert "Warning" not in r.stderr, f"{line_no} printed warnings:\n{r.stderr[-3000:]}"
    assert os.path.isfile(workdir / "output" / "predict" / "pictures" / "val" / "000000.jpg")
