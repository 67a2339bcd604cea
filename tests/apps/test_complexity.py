"""apps.complexity / tools/complexity.py: figures against the paper and torchvision."""
import os
import subprocess
import sys

import pytest

from resnext_det.apps.complexity import complexity_table, format_table

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_x50_32x4d_within_2_percent_of_paper():
    (row,) = complexity_table(["X-50-32x4d"])
    assert row.params == 25_028_904  # torchvision resnext50_32x4d, fc included
    assert abs(row.params_diff_pct) < 2.0  # paper: 25.0M
    assert abs(row.gflops_diff_pct) < 2.0  # paper: 4.2 GFLOPs
    assert "X-50-32x4d" in format_table([row])


def test_resnet50_counts_and_fc_included():
    (row,) = complexity_table(["R-50"])
    assert row.params == 25_557_032  # torchvision resnet50
    # without the 2048*1000+1000 fc it would be 23.5M, 8% below the paper's 25.5M
    assert abs(row.params_diff_pct) < 1.0
    assert row.gflops == pytest.approx(4.1, rel=0.02)


def test_cli_prints_table_and_json(tmp_path):
    out = tmp_path / "c.json"
    res = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "complexity.py"), "--models",
                          "X-50-2x40d", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "| X-50-2x40d | 2x40d |" in res.stdout and "fc" in res.stdout
    assert out.exists()
