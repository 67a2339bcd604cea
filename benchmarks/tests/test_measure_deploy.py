"""benchmarks/measure_deploy.py: its runs are ``benchmark`` records of the one schema, so the
README and docs/SPEED.md render them under the same rule: ratios vs the pooled A/A pair, and
none when the pair is outside its band."""
import json
from pathlib import Path

import jsonschema
import pytest

from benchmarks.measure_deploy import _report
from benchmarks.render import summary_block
from resnext_det.apps.benchmark.protocol import STOCK_A, STOCK_B, Rounds, environment

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "schema.json").read_text())


def _record(stock_b_scale, part, out):
    times = {STOCK_A: [4.0, 4.1, 3.9], STOCK_B: [4.0 * stock_b_scale] * 3,
             "onnxruntime": [2.0, 2.1, 1.9], "openvino": [1.6, 1.6, 1.7]}
    res = Rounds(times, {}, 3, 30.0, [0.5, 0.6, 0.7], [1.5, 1.0, 0.8])
    return _report("Whole detector", part, "X-101-32x4d", res, environment(), {"image": [800, 1333]},
                   "a test", str(out))


def test_a_settled_run_is_a_rendered_benchmark_record(tmp_path):
    out = tmp_path / "deploy-fpn.json"
    rec = _record(1.0, "fpn", out)
    assert json.loads(out.read_text()) == rec
    jsonschema.validate(rec, SCHEMA)
    res = rec["results"]
    assert res["aa_control"] is True and res["controls"][0]["settled"]
    by = {r["mode"]: r for r in res["paths"]}
    assert set(by) == {"stock_a", "stock_b", "onnxruntime", "openvino"}
    assert by["openvino"]["ratio"] == pytest.approx(4.0 / 1.6)  # pooled stock median / path median
    table = summary_block([{"path": f"benchmarks/{rec['environment']['cpu_kind']}/deploy-fpn.json",
                            "kind": rec["environment"]["cpu_kind"], "data": rec}])
    row = next(line for line in table.splitlines() if "FPN detector, `DeployedPredictor`, best" in line)
    assert "**2.50x** (openvino" in row


def test_a_noisy_run_publishes_no_ratio(tmp_path):
    rec = _record(1.2, "c4", tmp_path / "c4.json")
    control = rec["results"]["controls"][0]
    assert not control["settled"] and control["aa_ratio"] == pytest.approx(1.2, rel=0.03)
    assert all(r["ratio"] is None for r in rec["results"]["paths"])
