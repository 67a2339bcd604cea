"""tools/benchmark.py (resnext_det.apps.benchmark): runtime columns in the same interleaved
run, with the same outputs as stock, an A/A control (two stock instances) in every part, and
every record carrying its spread, load average, CPU kind and flags and share of a ceiling that
covers every library's GEMM. A tiny network, a tiny image and a small GEMM keep it short."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from resnext_det.hardware import CpuFeatures, cpu_kind

ROOT = Path(__file__).resolve().parents[2]
# the demo's tiny ResNeXt (C=4, d=8) in place of X-50's widths: the same code paths, seconds
TINY = ["MODEL.RESNEXT.PRESET", "", "MODEL.RESNEXT.CARDINALITY", "4", "MODEL.RESNEXT.BOTTLENECK_WIDTH", "8",
        "MODEL.RESNEXT.STEM_OUT_CHANNELS", "32", "MODEL.RESNEXT.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "64"]


@pytest.mark.slow
def test_benchmark_runtime_columns_and_control(tmp_path):
    from resnext_det.apps.benchmark import main

    out = tmp_path / "bench.json"
    res = main(["--size", "64", "96", "--presets", "X-50-32x4d", "--backbone-presets", "--parts", "backbone", "fpn",
                "--min-rounds", "2", "--max-seconds", "1", "--warmup", "0", "--gemm-n", "256",
                "--out", str(out), "--opts", *TINY])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))  # the JSON is the result
    meta, records, controls = res["meta"], res["records"], res["controls"]
    assert meta["cpu_kind"] == cpu_kind() and meta["cpu_flags"] == CpuFeatures.detect().describe()
    assert meta["threads"]["torch_intra_op"] >= 1 and len(meta["loadavg_at_end"]) == 3
    assert meta["protocol"]["aa_control"] and "pooled" in meta["protocol"]["ratio_basis"]
    ceil = meta["ceiling_gflops"]
    for lib in ("torch_fp32", "onnxruntime_fp32", "openvino_fp32"):
        assert ceil[lib] > 0
    assert ceil["fp32"] == max(ceil["torch_fp32"], ceil["onnxruntime_fp32"], ceil["openvino_fp32"])
    assert set(meta["runtimes"]) == {"onnxruntime", "openvino"}
    by = {(r["name"], r["mode"]): r for r in records if r["name"] in ("backbone", "fpn")}
    for part in ("backbone", "fpn"):
        control = next(c for c in controls if c["name"] == part)
        assert control["rounds"] >= 2 and control["aa_ratio"] > 0 and control["noisy"] == (not control["settled"])
        for mode in ("stock_a", "stock_b", "fast", "onnxruntime", "openvino"):
            r = by[(part, mode)]
            assert r["seconds"] > 0 and len(r["times"]) == control["rounds"]
            assert r["spread"]["min"] <= r["seconds"] <= r["spread"]["max"]
            assert len(r["loadavg_before"]) == 3 and r["cpu_kind"] == meta["cpu_kind"]
            # ratios only where the control settled, never otherwise
            assert (r["ratio_vs_stock"] is not None) == control["settled"]
        assert by[(part, "stock_b")]["max_rel_err_vs_stock"] == 0  # same weights, same code
        # fp32 runtimes compute what stock computes (same weights)
        assert by[(part, "onnxruntime")]["max_rel_err_vs_stock"] < 1e-4
        assert by[(part, "openvino")]["max_rel_err_vs_stock"] < 1e-4
    for mode in ("onnxruntime-raw", "openvino-raw"):  # the wrapper's overhead is measurable
        assert by[("fpn", mode)]["max_rel_err_vs_stock"] < 1e-4
        assert "wrapper overhead" in by[("fpn", mode)]["note"]
    b = by[("backbone", "onnxruntime")]
    assert b["pct_of_ceiling"] == pytest.approx(100 * b["gflops"] / ceil["fp32"])
    if cpu_kind() == "avx512_bf16":
        assert ("backbone", "openvino-bf16") in by


def test_benchmark_tool_is_thin():
    """The tool only calls the module (its logic lives in resnext_det.apps.benchmark)."""
    text = (ROOT / "tools" / "benchmark.py").read_text()
    assert len(text.splitlines()) <= 40 and "from resnext_det.apps.benchmark import main" in text
    help_text = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), "--help"],
                               capture_output=True, text=True, check=True).stdout
    for flag in ("--runtimes", "--int8", "--max-seconds", "--min-rounds", "--render-readme"):
        assert flag in help_text
