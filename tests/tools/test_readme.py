"""README.md and the docs/ pages tell the truth: every ```python block runs as written in a fresh
interpreter on the CPU, and every ```bash block (each takes under a minute) runs with ``bash -e``
and exits 0.

```sh blocks are the long jobs (installing and running the suite, the demos, COCO training on
GPUs); the suite covers them elsewhere (.ci/run is the first; tests/tools/test_train_net.py runs
reduced demos).
"""
import glob
import os
import re
import subprocess
import sys

import pytest

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


@pytest.mark.slow
@pytest.mark.parametrize("line_no,code", readme_blocks("python"), ids=lambda x: x if ":" in str(x)[:40] and "\n" not in str(x) else "")
def test_python_block_runs_as_written(line_no, code, workdir):
    r = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=_env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f"{line_no}:\n{code}\n--- stderr:\n{r.stderr[-4000:]}"
    assert "Warning" not in r.stderr, f"{line_no} printed warnings:\n{r.stderr[-3000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("line_no,code", readme_blocks("bash"), ids=lambda x: x if ":" in str(x)[:40] and "\n" not in str(x) else "")
def test_bash_block_runs_as_written(line_no, code, workdir):
    r = subprocess.run(["bash", "-e", "-c", code], cwd=workdir, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"{line_no}:\n{code}\n--- stderr:\n{r.stderr[-4000:]}"
    assert "Warning" not in r.stderr, f"{line_no} printed warnings:\n{r.stderr[-3000:]}"
