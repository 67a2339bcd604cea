"""tools/benchmark.py (resnext_det.engine.benchmark): runtime columns in the same interleaved
run, with the same outputs as stock, and every record carrying its load average, CPU flags
and share of a ceiling that covers every library's GEMM."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_benchmark_runtime_columns(tmp_path):
    from resnext_det.engine.benchmark import main

    out = tmp_path / "bench.json"
    res = main(["--size", "64", "96", "--presets", "X-50-32x4d", "--backbone-presets",
                "--parts", "backbone", "fpn", "--reps", "1", "--warmup", "0", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))  # the JSON is the result
    meta, records = res["meta"], res["records"]
    ceil = meta["ceiling_gflops"]
    for lib in ("torch_fp32", "onnxruntime_fp32", "openvino_fp32"):
        assert ceil[lib] > 0
    assert ceil["fp32"] == max(ceil["torch_fp32"], ceil["onnxruntime_fp32"], ceil["openvino_fp32"])
    assert set(meta["runtimes"]) == {"onnxruntime", "openvino"}
    by = {(r["name"], r["mode"]): r for r in records if r["name"] in ("backbone", "fpn")}
    for part in ("backbone", "fpn"):
        for mode in ("stock", "fast", "onnxruntime", "openvino"):
            r = by[(part, mode)]
            assert r["seconds"] > 0 and r["ratio_vs_stock"] > 0
            assert len(r["loadavg"]) == 3
            assert set(r["cpu_flags"]) >= {"avx2", "avx512f", "avx512_bf16", "amx"}
        # fp32 runtimes compute what stock computes (same weights)
        assert by[(part, "onnxruntime")]["max_rel_err_vs_stock"] < 1e-4
        assert by[(part, "openvino")]["max_rel_err_vs_stock"] < 1e-4
    for mode in ("onnxruntime-raw", "openvino-raw"):  # the wrapper's overhead is measurable
        assert by[("fpn", mode)]["max_rel_err_vs_stock"] < 1e-4
        assert "wrapper overhead" in by[("fpn", mode)]["note"]
    b = by[("backbone", "onnxruntime")]
    assert b["pct_of_ceiling"] == pytest.approx(100 * b["gflops"] / ceil["fp32"])
    if by[("backbone", "stock")]["cpu_flags"]["avx512_bf16"]:
        assert ("backbone", "openvino-bf16") in by


def test_benchmark_tool_is_thin():
    """The tool only calls the module (its logic lives in resnext_det.engine.benchmark)."""
    text = (ROOT / "tools" / "benchmark.py").read_text()
    assert len(text.splitlines()) <= 40 and "from resnext_det.engine.benchmark import main" in text
    help_text = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), "--help"],
                               capture_output=True, text=True, check=True).stdout
    assert "--runtimes" in help_text and "--int8" in help_text
