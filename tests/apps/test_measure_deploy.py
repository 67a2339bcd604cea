"""tools/measure_deploy.py (resnext_det.apps.measure_deploy): its whole-detector runs are filed
in the benchmark's record format, so the README and docs/SPEED.md render them under the same
rule: ratios vs the pooled stock pair, and none when the A/A control is outside its band."""
import pytest

from resnext_det.apps.benchmark.render import summary_block
from resnext_det.apps.measure_deploy import benchmark_record


def _runtimes_record(stock_b_scale):
    runs = {"stock": [4.0, 4.1, 3.9], "stock-b": [4.0 * stock_b_scale] * 3,
            "onnxruntime": [2.0, 2.1, 1.9], "openvino": [1.6, 1.6, 1.7]}
    return {"meta": {"command": "measure_deploy.py runtimes", "date": "2026-11-30T17:00:00", "image": [800, 1333],
                     "cpu_kind": "avx512_bf16", "cpu_flags": "avx2 avx512f avx512_bf16", "threads": 2,
                     "loadavg_before": [0.5, 0.6, 0.7], "loadavg_after": [1.5, 1.0, 0.8]},
            "paths": {n: {"median_s": sorted(t)[1], "runs": t} for n, t in runs.items()}}


def test_a_settled_run_becomes_a_rendered_benchmark_record():
    rec = benchmark_record(_runtimes_record(1.0), "fpn", "X-101-32x4d")
    assert rec["aa_control"] is True and rec["controls"][0]["settled"]
    by = {r["mode"]: r for r in rec["records"]}
    assert set(by) == {"stock_a", "stock_b", "onnxruntime", "openvino"}
    assert by["openvino"]["ratio_vs_stock"] == pytest.approx(4.0 / 1.6)  # pooled stock median / path median
    table = summary_block([{"path": "benchmarks/avx512_bf16/deploy-fpn.json", "kind": "avx512_bf16", "data": rec}])
    row = next(line for line in table.splitlines() if "FPN detector, `DeployedPredictor`" in line)
    assert "**2.50x** (openvino" in row


def test_a_noisy_run_publishes_no_ratio():
    rec = benchmark_record(_runtimes_record(1.2), "c4", "X-101-32x4d")
    assert not rec["controls"][0]["settled"] and rec["controls"][0]["aa_ratio"] == pytest.approx(1.2, rel=0.03)
    assert all(r["ratio_vs_stock"] is None for r in rec["records"])
