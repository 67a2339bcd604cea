"""apps.complexity / tools/complexity.py: figures against the paper and torchvision."""
import json
import os

import pytest

from resnext_det.apps.complexity import DEFAULT_MODELS, complexity_table, format_table

import zygote

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


def _data_rows(markdown: str):
    """The cells of each table row of ``markdown`` whose first cell names a preset."""
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in markdown.splitlines()]
    return [row for row in rows if row and row[0] in DEFAULT_MODELS]


def test_doc_table_is_the_tools_output_for_every_preset(tmp_path):
    """docs/FAST_PATH.md's command, run: its table's nine rows (params, GFLOPs, paper, diffs)
    are what the tool prints now, row for row, so a model change that moves a count fails here."""
    with open(os.path.join(ROOT, "docs", "FAST_PATH.md")) as f:
        doc = f.read()
    assert "```sh\npython tools/complexity.py\n```" in doc
    out = tmp_path / "c.json"
    res = zygote.run([os.path.join(ROOT, "tools", "complexity.py"), "--json", str(out)], timeout=300)
    assert res.returncode == 0, res.stderr
    assert "fc" in res.stdout
    printed = _data_rows(res.stdout)
    assert [row[0] for row in printed] == list(DEFAULT_MODELS)
    assert _data_rows(doc.split("## Complexity", 1)[1].split("\n## ", 1)[0]) == printed
    with open(out) as f:
        assert [r["name"] for r in json.load(f)] == list(DEFAULT_MODELS)
