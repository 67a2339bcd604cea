"""The tools print no warning lines on their normal path (known third-party warnings are
filtered narrowly by resnext_det._warnings; our own causes are fixed). The README's bash
blocks (dry-run, convert_weights, complexity) are checked the same way in test_readme.py."""
import os
import subprocess
import sys

import pytest

from conftest import TINY_OPTS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_tool(args, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="default")  # as in a user's shell
    r = subprocess.run([sys.executable] + args, cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def _warning_lines(text):
    return [line for line in text.splitlines() if "Warning" in line or "warnings.warn" in line]


@pytest.mark.slow
def test_demo_prints_no_warnings(tmp_path):
    r = _run_tool([os.path.join(ROOT, "tools", "train_net.py"), "--demo", "fpn", "OUTPUT_DIR", str(tmp_path / "d"),
                   "MODEL.FPN.OUT_CHANNELS", "32", "SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "(2,)",
                   "SOLVER.WARMUP_ITERS", "1", "SOLVER.IMS_PER_BATCH", "2", "TEST.EVAL_PERIOD", "0"] + TINY_OPTS,
                  tmp_path)
    assert "COCO box AP" in r.stdout
    assert not _warning_lines(r.stdout + r.stderr), _warning_lines(r.stdout + r.stderr)


def test_known_third_party_filters_are_narrow():
    """Each filter names a category, a module and a message: nothing is silenced globally."""
    import warnings

    import resnext_det  # noqa: F401  (installs the filters)
    from resnext_det._warnings import KNOWN_THIRD_PARTY_WARNINGS

    ours = [f for f in warnings.filters if f[0] == "ignore" and f[3] is not None
            and any(f[3].pattern == m for _, m, _, _ in KNOWN_THIRD_PARTY_WARNINGS)]
    assert len(ours) >= len(KNOWN_THIRD_PARTY_WARNINGS)
    for action, message, category, module, lineno in ours:
        assert message is not None and message.pattern and category is not Warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        import resnext_det._warnings as w

        w.filter_known_third_party_warnings()
        warnings.warn("a warning of our own still shows", UserWarning)
    assert any("of our own" in str(c.message) for c in caught)
