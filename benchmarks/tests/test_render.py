"""Every speed, accuracy and time figure of README.md and docs/SPEED.md, and the training
``auto`` table, is rendered from benchmarks/<kind>/ records (benchmarks/render.py): re-rendered in
memory they equal the files; the renderer never shows a ratio from a noisy run or from a record
without an A/A control, and says "not measured" for a kind without records."""
import json
from pathlib import Path

import pytest

from benchmarks.choices import LAYOUTS_TABLE, RUNTIMES_TABLE, layouts_table
from benchmarks.render import (
    load_records,
    render_all,
    render_blocks,
    replace_blocks,
)

ROOT = Path(__file__).resolve().parents[2]


def test_readme_docs_and_auto_table_agree_with_the_records():
    rendered = render_all(str(ROOT))
    assert set(rendered) == {"README.md", "docs/SPEED.md", LAYOUTS_TABLE, RUNTIMES_TABLE}
    for rel, text in rendered.items():
        assert (ROOT / rel).read_text(encoding="utf-8") == text, (
            f"{rel} differs from what its records render: run `python -m benchmarks.render`")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for block in ("speed-summary", "demo-summary", "suite"):
        assert f"<!-- rendered:{block} -->" in readme


def _bench(kind, part, aa, ratios, date="2026-12-01T10:00:00", preset="X-101-32x4d"):
    settled = 0.95 <= aa <= 1.05
    paths = [{"name": part, "preset": preset, "mode": m, "seconds": 10.0 / r, "spread": {"min": 9.0 / r, "max": 11.0 / r},
              "ratio": r if settled else None} for m, r in {"stock_a": 1.0, "stock_b": 1 / aa, **ratios}.items()]
    env = {"cpu_kind": kind, "cpu_flags": ["avx2"], "cpu_model": None, "cores": 2, "loadavg_at_start": None,
           "loadavg_at_end": None, "versions": {}, "threads": {"torch_intra_op": 2}}
    results = {"aa_control": True, "settings": {"image": [800, 1333], "opts": []},
               "controls": [{"name": part, "preset": preset, "aa_pair": ["stock_a", "stock_b"], "aa_ratio": aa,
                             "settled": settled, "rounds": 3, "loadavg_at_start": [0.3, 0.2, 0.1],
                             "loadavg_at_end": [1.9, 0.5, 0.2]}],
               "paths": paths}
    return {"schema": 1, "type": "benchmark", "what": "a test", "command": None, "date": date, "environment": env,
            "results": results}


@pytest.fixture
def checkout(tmp_path):
    def write(rel, data):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(data))
    write("benchmarks/avx2/inference.json", _bench("avx2", "fpn", 1.01, {"fast": 1.31, "openvino": 1.76, "onnxruntime": 1.15}))
    write("benchmarks/avx512_bf16/inference.json", _bench("avx512_bf16", "fpn", 1.08, {"fast": 1.61, "openvino": 2.71}))
    legacy = _bench("avx2", "backbone", 1.0, {"fast": 1.87})
    legacy["results"].update(aa_control=False, control_note="before the protocol", controls=[])
    write("benchmarks/avx2/old.json", legacy)
    write("benchmarks/avx2/train-layouts.json", _bench("avx2", "train", 0.99, {"channels_last": 0.71, "fold": 1.02,
                                                                              "channels_last+fold": 0.74}))
    write("benchmarks/avx512_bf16/train-layouts.json", _bench("avx512_bf16", "train", 1.2, {"channels_last": 1.2}))
    return tmp_path


def test_ratios_only_from_settled_controlled_runs_both_kinds_side_by_side(checkout):
    records = load_records(str(checkout))
    blocks = render_blocks(records)
    summary = blocks["speed-summary"]
    row = next(line for line in summary.splitlines() if "FPN detector, `DeployedPredictor`" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1].startswith("**1.76x** (openvino")  # avx2: settled, the best fp32 runtime
    assert "noisy" in cells[2] and "2.71" not in summary  # avx512_bf16: A/A 1.08, withheld
    # a path without a settled record on any kind: named once under the table, no row of blanks
    assert not any(line.startswith("| backbone, torch") for line in summary.splitlines())
    assert "backbone, torch fast path (fp32)" in next(line for line in summary.splitlines()
                                                     if line.startswith("Not measured on any kind yet:"))
    assert "1.87" not in blocks["speed"] + summary  # the record without a control
    assert "1.87" not in blocks["unpublished"] and "old.json" in blocks["unpublished"]
    speed = blocks["speed"]
    assert "**1.31x**" in speed and "ratio withheld" in speed and "load at start 0.30 -> end 1.90" in speed
    assert [c.strip() for c in next(line for line in speed.splitlines() if line.startswith("| path")).split("|")] \
        == ["", "path", "avx2", "avx512_bf16", ""]


def test_auto_table_from_train_layout_records(checkout):
    table = layouts_table(load_records(str(checkout)))
    avx2, bf16 = table["kinds"]["avx2"], table["kinds"]["avx512_bf16"]
    assert avx2["control"] == "aa" and not avx2["noisy"] and avx2["noise"] == pytest.approx(0.05)
    assert avx2["ratios"]["channels_last"] == pytest.approx(0.71)
    assert avx2["record"] == "benchmarks/avx2/train-layouts.json"
    assert bf16["noisy"] and bf16["ratios"]["channels_last"] is None  # the rule ignores it
    block = render_blocks(load_records(str(checkout)))["train-layouts"]
    assert "noisy: ignored" in block


def test_an_unknown_block_name_is_an_error():
    with pytest.raises(KeyError, match="speed-sumary"):
        replace_blocks("<!-- rendered:speed-sumary -->\nx\n<!-- /rendered -->\n", {"speed-summary": ""}, "README.md")


def test_the_render_command_checks_and_writes(tmp_path, checkout, capsys):
    from benchmarks.render import main

    (checkout / "README.md").write_text("<!-- rendered:suite -->\nstale\n<!-- /rendered -->\n")
    assert main(["--check", "--root", str(checkout)]) == 1
    assert "differs from its records: README.md" in capsys.readouterr().out
    assert "stale" in (checkout / "README.md").read_text()
    assert main(["--root", str(checkout)]) == 0 and main(["--check", "--root", str(checkout)]) == 0
    assert "| avx2 " in (checkout / "README.md").read_text()
