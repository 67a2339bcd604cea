"""tools/benchmark.py (resnext_det.apps.benchmark): runtime columns in the same interleaved
run, with the same outputs as stock, an A/A control (two stock instances) in every part, and
every record carrying its spread, load average, CPU kind and flags and share of a ceiling that
covers every library's GEMM. A tiny network, a tiny image and a small GEMM keep it short."""
import json
import os
from pathlib import Path

import pytest
import torch

import zygote

ROOT = Path(__file__).resolve().parents[2]
# the demo's tiny ResNeXt (C=4, d=8) in place of X-50's widths: the same code paths, seconds
TINY = ["MODEL.RESNEXT.PRESET", "", "MODEL.RESNEXT.CARDINALITY", "4", "MODEL.RESNEXT.BOTTLENECK_WIDTH", "8",
        "MODEL.RESNEXT.STEM_OUT_CHANNELS", "32", "MODEL.RESNEXT.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "64"]


def _machine_from_proc_cpuinfo():
    """(kind, flags text) read straight from /proc/cpuinfo: a second route to what the record
    must carry (the project's names: avx2, avx512f, avx512_bf16, avx512_vnni, amx)."""
    flags = set()
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    amx = any(f.startswith("amx") for f in flags)
    names = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni") if f in flags] + (["amx"] if amx else [])
    kind = ("amx" if "avx512f" in flags and amx else "avx512_bf16" if "avx512f" in flags and "avx512_bf16" in flags else
            "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other")
    return os.environ.get("RESNEXT_DET_CPU_KIND") or kind, " ".join(names) or "no AVX2"


def _backbone_gflop_by_hand(h, w):
    """2 x the multiply-adds of every convolution of TINY's bottom-up trunk (res2..res5) on one
    h x w image, counted from each conv's output size: a second route to fvcore's count (which
    also counts the FrozenBN affines, a few percent more)."""
    from resnext_det import build_backbone_from_preset

    net = build_backbone_from_preset("", depth=50, cardinality=4, bottleneck_width=8, stem_out_channels=32,
                                     res2_out_channels=64, out_features=["res2", "res3", "res4", "res5"]).eval()
    macs = []
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, _, out: macs.append(
                out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]))
    with torch.no_grad():
        net(torch.zeros(1, 3, h, w))
    return 2 * sum(macs) / 1e9


@pytest.mark.slow
def test_benchmark_runtime_columns_and_control(tmp_path):
    from resnext_det.apps.benchmark import main

    out = tmp_path / "bench.json"
    res = main(["--size", "64", "96", "--presets", "X-50-32x4d", "--backbone-presets", "--parts", "backbone", "fpn",
                "--min-rounds", "2", "--max-seconds", "1", "--warmup", "0", "--gemm-n", "256",
                "--out", str(out), "--opts", *TINY])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))  # the JSON is the result
    assert res["schema"] == 1 and res["type"] == "benchmark"
    env, settings = res["environment"], res["results"]["settings"]
    records, controls = res["results"]["paths"], res["results"]["controls"]
    kind, flags = _machine_from_proc_cpuinfo()
    assert (env["cpu_kind"], " ".join(env["cpu_flags"]) or "no AVX2") == (kind, flags)
    assert env["threads"]["torch_intra_op"] >= 1 and len(env["loadavg_at_end"]) == 3
    assert settings["protocol"]["aa_control"] and "pooled" in settings["protocol"]["ratio_basis"]
    ceil = settings["ceiling_gflops"]
    for lib in ("torch_fp32", "onnxruntime_fp32", "openvino_fp32"):
        assert ceil[lib] > 0
    assert ceil["fp32"] == max(ceil["torch_fp32"], ceil["onnxruntime_fp32"], ceil["openvino_fp32"])
    assert {"onnxruntime", "openvino", "torch"} <= set(env["versions"])
    by = {(r["name"], r["mode"]): r for r in records if r["name"] in ("backbone", "fpn")}
    for part in ("backbone", "fpn"):
        control = next(c for c in controls if c["name"] == part)
        assert control["rounds"] >= 2 and control["aa_ratio"] > 0 and control["noisy"] == (not control["settled"])
        for mode in ("stock_a", "stock_b", "fast", "onnxruntime", "openvino"):
            r = by[(part, mode)]
            assert r["seconds"] > 0 and len(r["times"]) == control["rounds"]
            assert r["spread"]["min"] <= r["seconds"] <= r["spread"]["max"]
            # ratios only where the control settled, never otherwise
            assert (r["ratio"] is not None) == control["settled"]
        assert len(control["loadavg_at_start"]) == 3
        assert by[(part, "stock_b")]["max_rel_err_vs_stock"] == 0  # same weights, same code
        # fp32 runtimes compute what stock computes (same weights)
        assert by[(part, "onnxruntime")]["max_rel_err_vs_stock"] < 1e-4
        assert by[(part, "openvino")]["max_rel_err_vs_stock"] < 1e-4
    for mode in ("onnxruntime-raw", "openvino-raw"):  # the wrapper's overhead is measurable
        assert by[("fpn", mode)]["max_rel_err_vs_stock"] < 1e-4
        assert "wrapper overhead" in by[("fpn", mode)]["note"]
    b = by[("backbone", "onnxruntime")]
    gflop = _backbone_gflop_by_hand(64, 96)
    assert b["gflop"] == pytest.approx(gflop, rel=0.10)
    assert b["pct_of_ceiling"] == pytest.approx(100 * gflop / b["seconds"] / ceil["fp32"], rel=0.10)
    if kind == "avx512_bf16":
        assert ("backbone", "openvino-bf16") in by


def test_benchmark_tool_is_the_modules_command_line(capsys, monkeypatch):
    """tools/benchmark.py answers as resnext_det.apps.benchmark.main does (the same options,
    the same help), so what the tests check through the module is what the tool does."""
    from resnext_det.apps.benchmark import main

    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps to the terminal: the same width for both
    r = zygote.run([str(ROOT / "tools" / "benchmark.py"), "--help"], env=dict(os.environ))
    assert r.returncode == 0, r.stderr[-3000:]
    help_text = r.stdout
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    module_help = capsys.readouterr().out
    # the same text past the usage lines (which start with the program's name)
    assert help_text.split("\n\n", 1)[1] == module_help.split("\n\n", 1)[1]
    for flag in ("--runtimes", "--int8", "--max-seconds", "--min-rounds"):
        assert flag in help_text
    assert "--render-readme" not in help_text  # rendering is the checkout's: python -m benchmarks.render
