"""The tools print no warning lines on their normal path (known third-party warnings are
filtered narrowly by resnext_det._warnings; our own causes are fixed). The README's bash
blocks (dry-run, convert_weights, complexity) are checked the same way in test_readme.py."""
import os
import re
import subprocess
import sys

import pytest

from conftest import TINY_OPTS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_tool(args, tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="default")  # as in a user's shell
    r = subprocess.run([sys.executable] + args, cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def _warning_lines(text):
    # warnings.warn output, and glog-style "W1125 12:00:00 ..." lines of torch's own logging
    return [line for line in text.splitlines()
            if "Warning" in line or "warnings.warn" in line or re.match(r"^W\d{4} ", line)]


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
    import logging
    import warnings

    from resnext_det._warnings import (KNOWN_THIRD_PARTY_LOG_WARNINGS, KNOWN_THIRD_PARTY_WARNINGS,
                                       filter_known_third_party_warnings)

    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        filter_known_third_party_warnings()
        ours = [f for f in warnings.filters if f[0] == "ignore"]
        assert len(ours) == len(KNOWN_THIRD_PARTY_WARNINGS)
        for action, message, category, module, lineno in ours:
            assert message.pattern and module.pattern and category is not Warning
        warnings.simplefilter("default", append=True)
        warnings.warn("a warning of our own still shows", UserWarning)
        warnings.warn_explicit("`torch.jit.script` is deprecated", FutureWarning, "x.py", 1,
                               module="torch.jit._script")
    assert [str(c.message) for c in caught] == ["a warning of our own still shows"]
    # the logging one: only its message is dropped, other records of that logger pass
    name, message, _ = KNOWN_THIRD_PARTY_LOG_WARNINGS[0]
    logger = logging.getLogger(name)
    drop = [f for f in logger.filters if getattr(f, "pattern", None) is not None]
    record = lambda msg: logging.LogRecord(name, logging.WARNING, "x", 1, msg, None, None)  # noqa: E731
    assert drop and not drop[0].filter(record("is_fx_tracing will return true for both"))
    assert drop[0].filter(record("something else"))
