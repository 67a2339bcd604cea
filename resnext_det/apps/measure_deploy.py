"""Measurements behind the deploy defaults (``resnext_det/deploy/measured_runtimes.json``):
``tools/measure_deploy.py``. Every timing interleaves its paths in rounds (the order rotated
each round) and reports each path's median and spread, the load average before and after,
the CPU kind and the thread count; run it on an idle machine.

    # ONNX Runtime thread spinning on vs off (plus an A/A pair of "off" sessions)
    python tools/measure_deploy.py spinning out/deploy/model.onnx --size 800x1216 --rounds 10
    # OpenVINO static (per-shape compiled) vs dynamic shapes
    python tools/measure_deploy.py shapes out/deploy/model.onnx --size 800x1216 --rounds 10
    # whole detector from a config: stock eager (twice: A/A), ONNX Runtime, OpenVINO fp32
    # dynamic / static, OpenVINO int8 (NNCF) dynamic / static
    python tools/measure_deploy.py runtimes --config-file faster_rcnn_X101_32x4d_FPN.yaml \\
        --size 800x1333 --calib-images 32 --rounds 5 --out benchmarks/deploy-x101-800x1333.json
    # COCO AP of a trained model per runtime and precision (fp32, NNCF int8, QDQ int8)
    python tools/measure_deploy.py ap --demo fpn --calib-images 32 --out benchmarks/deploy-ap-demo.json

Records are JSON (``--out``); nothing is published from a run whose A/A pair differs by more
than 5 % (the record says ``noisy``).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Callable, Dict, List

import numpy as np

from ..hardware import CpuFeatures, available_cores, cpu_kind
from ..io import atomic_write_json
from .benchmark.protocol import AA_BAND, STOCK_A, STOCK_B, Protocol, Rounds, path_record, run_rounds, spread

__all__ = ["timed_rounds", "summarize", "main", "cli"]



def timed_rounds(fns: Dict[str, Callable[[], object]], args, pair) -> Dict[str, List[float]]:
    """Seconds of each call under the benchmark's one protocol (:mod:`.benchmark.protocol`):
    paths interleaved in rotating rounds, at least ``--rounds`` of them, more (up to
    ``--max-seconds``) while the A/A ``pair`` is outside its band.

    Args:
        fns: path name -> a call to time.
        args: the command line (``rounds``, ``warmup``, ``max_seconds``).
        pair: the two paths of the A/A control.
    """
    res = run_rounds(fns, Protocol(min_rounds=args.rounds, warmup=args.warmup, max_seconds=args.max_seconds),
                     pair=pair)
    return res.times


def summarize(runs: List[float]) -> Dict[str, float]:
    """Median, min, max, spread ((max - min) / median) and relative IQR of one path's seconds,
    from the benchmark protocol's own :func:`~.benchmark.protocol.spread`."""
    sp = spread(runs)
    med = sp["median"]
    return {"median_s": med, "min_s": sp["min"], "max_s": sp["max"],
            "spread": (sp["max"] - sp["min"]) / med if med else 0.0,
            "iqr_rel": (sp["q3"] - sp["q1"]) / med if med else 0.0, "runs": list(runs)}


def _meta(args, threads) -> Dict:
    import onnxruntime
    import openvino

    return {"command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]), "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "cpu_kind": cpu_kind(), "cpu_flags": CpuFeatures.detect().describe(), "cpu_count": os.cpu_count(),
            "available_cores": available_cores(), "threads": threads, "platform": platform.platform(),
            "onnxruntime": onnxruntime.__version__, "openvino": openvino.get_version(),
            "loadavg_before": list(os.getloadavg())}


def _report(name: str, times: Dict[str, List[float]], meta: Dict, aa=None, reference=None, out=None) -> Dict:
    """Print one table (median, spread, ratio to ``reference``) and write the record."""
    meta["loadavg_after"] = list(os.getloadavg())
    paths = {n: summarize(t) for n, t in times.items()}
    noisy = None
    if aa:
        a, b = (paths[n]["median_s"] for n in aa)
        meta["aa_pair"], meta["aa_ratio"], meta["aa_band"] = list(aa), b / a, list(AA_BAND)
        noisy = not AA_BAND[0] <= b / a <= AA_BAND[1]  # the benchmark protocol's rule
        meta["noisy"] = noisy
    print(f"\n{name}: {meta['cpu_kind']} ({meta['cpu_flags']}), {meta['threads']} threads, load "
          f"{meta['loadavg_before'][0]:.2f} -> {meta['loadavg_after'][0]:.2f}")
    ref = paths[reference]["median_s"] if reference else None
    for n, s in paths.items():
        ratio = f"  {ref / s['median_s']:.2f}x {reference}" if ref and not noisy else ""
        print(f"  {n:24s} median {s['median_s'] * 1000:9.1f} ms  spread {100 * s['spread']:5.1f} %  "
              f"IQR {100 * s['iqr_rel']:5.1f} %{ratio}")
    if aa:
        print(f"  A/A {aa[1]} / {aa[0]}: {meta['aa_ratio']:.3f}" +
              (f"  NOISY (outside {AA_BAND[0]}-{AA_BAND[1]}): ratios not published; re-run on an idle machine"
               if noisy else ""))
    record = {"meta": meta, "paths": paths}
    if ref and not noisy:
        record["ratios_vs_" + reference] = {n: ref / s["median_s"] for n, s in paths.items()}
    if out:
        atomic_write_json(out, record, indent=2)
        print(f"  record: {out}")
    return record


def benchmark_record(record: Dict, part: str, preset: str) -> Dict:
    """A ``runtimes`` record in the benchmark's record format (``benchmarks/<kind>/*.json`` as
    :mod:`.benchmark.suites` writes them), so the README and docs/SPEED.md render it: the same
    times, the stock pair as the A/A control, ratios only when it settled.

    Args:
        record: what :func:`cmd_runtimes` wrote (``meta``, ``paths`` with each path's ``runs``).
        part: the benchmark part it measured (``fpn`` or ``c4``).
        preset: the backbone preset (e.g. ``X-101-32x4d``).
    """
    meta = record["meta"]
    names = {"stock": STOCK_A, "stock-b": STOCK_B}
    times = {names.get(n, n): list(p["runs"]) for n, p in record["paths"].items()}
    res = Rounds(times, {}, min(len(t) for t in times.values()), sum(sum(t) for t in times.values()),
                 [round(x, 2) for x in meta["loadavg_before"]], [round(x, 2) for x in meta["loadavg_after"]])
    records = [{**path_record(part, preset, mode, res), "image": list(meta["image"]), "device": "cpu",
                "note": "detectron2 eager" if mode in (STOCK_A, STOCK_B)
                else "DeployedPredictor (resize + graph + detector_postprocess)",
                "cpu_kind": meta["cpu_kind"], "cpu_flags": meta["cpu_flags"]} for mode in times]
    return {"aa_control": True, "tool": "tools/measure_deploy.py runtimes",
            "meta": {"command": meta["command"], "date": meta["date"], "image": list(meta["image"]),
                     "cpu_kind": meta["cpu_kind"], "cpu_flags": meta["cpu_flags"],
                     "threads": {"torch_intra_op": meta["threads"], "runtime": meta["threads"]},
                     "protocol": Protocol().as_dict(), "source_record": meta.get("out")},
            "controls": [{"name": part, "preset": preset, **res.control()}], "records": records}


def _size(text: str):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h < 1 or w < 1:
            raise ValueError
        return h, w
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r} is not valid; use HxW, e.g. 800x1333") from None


def _graph_image(path: str, size):
    """A random 3xHxW float32 graph input: ``size``, else the contract's test size (landscape 4:3)."""
    from ..deploy.contract import read_contract

    c = read_contract(path)
    h, w = size or (c.min_size_test, min(c.max_size_test, c.min_size_test * 4 // 3))
    return np.random.default_rng(0).integers(0, 256, (3, h, w)).astype(np.float32)


def cmd_spinning(args) -> Dict:
    """ONNX Runtime with spinning on and off (two "off" sessions: the A/A control)."""
    from ..deploy.runtimes import make_runtime

    x = _graph_image(args.model, args.size)
    runners = {"spin-on": make_runtime("onnxruntime", args.model, args.threads, allow_spinning=True),
               "spin-off": make_runtime("onnxruntime", args.model, args.threads, allow_spinning=False),
               "spin-off-b": make_runtime("onnxruntime", args.model, args.threads, allow_spinning=False)}
    fns = {n: (lambda r=r: r.run(x)) for n, r in runners.items()}
    meta = _meta(args, runners["spin-on"].num_threads)
    meta.update(model=args.model, image=list(x.shape[1:]))
    times = timed_rounds(fns, args, ("spin-off", "spin-off-b"))
    return _report("ONNX Runtime spinning", times, meta, aa=("spin-off", "spin-off-b"), reference="spin-off",
                   out=args.out)


def cmd_shapes(args) -> Dict:
    """OpenVINO dynamic vs static shapes on one image size (two dynamic models: A/A)."""
    from ..deploy.runtimes import make_runtime

    x = _graph_image(args.model, args.size)
    runners = {"dynamic": make_runtime("openvino", args.model, args.threads, args.precision, shape_mode="dynamic"),
               "dynamic-b": make_runtime("openvino", args.model, args.threads, args.precision, shape_mode="dynamic"),
               "static": make_runtime("openvino", args.model, args.threads, args.precision, shape_mode="static")}
    start = time.perf_counter()
    runners["static"].run(x)  # the compile for this shape, timed on its own
    compile_s = time.perf_counter() - start
    fns = {n: (lambda r=r: r.run(x)) for n, r in runners.items()}
    meta = _meta(args, runners["static"].num_threads)
    meta.update(model=args.model, image=list(x.shape[1:]), precision=args.precision,
                static_first_call_s=compile_s)
    times = timed_rounds(fns, args, ("dynamic", "dynamic-b"))
    print(f"  static: first call on a new shape (compile + run) {compile_s:.2f} s")
    return _report("OpenVINO shapes", times, meta, aa=("dynamic", "dynamic-b"), reference="dynamic", out=args.out)


def _export_cfg(args):
    from .export import export_target

    return export_target(args.config_file or "", list(args.opts), demo=args.demo or "")


def cmd_runtimes(args) -> Dict:
    """Export fp32 and NNCF int8, then time stock eager (twice: A/A) and the deploy modes."""
    import torch
    from detectron2.modeling import build_model

    from ..deploy.export import build_export_model, export_onnx
    from ..deploy.modes import build_predictors
    from ..deploy.quantize import calibration_images, quantize_int8_nncf, resize_for_graph
    from .stock import stock_equivalent_cfg

    cfg, model = _export_cfg(args)
    h, w = args.size
    cfg = cfg.clone()
    cfg.defrost()
    # the contract's resize leaves the timed image as it is: eager and deployed get the same input
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = min(h, w), max(h, w)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = model if model is not None else build_export_model(cfg)
    work = args.work_dir
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3)).astype(np.uint8)
    tmp_img = os.path.join(work, "timed_image.png")
    os.makedirs(work, exist_ok=True)
    import cv2

    cv2.imwrite(tmp_img, img[:, :, ::-1] if cfg.INPUT.FORMAT == "RGB" else img)
    fp32 = export_onnx(cfg, work, model=model, image_path=tmp_img)["path"]
    try:
        calib = calibration_images(cfg, args.calib_images)
        calib_note = f"{len(calib)} training images"
    except Exception as e:  # no training set registered: speed only, say so
        calib = [resize_for_graph(cfg, np.random.default_rng(s).integers(0, 256, (h, w, 3)).astype(np.uint8))
                 for s in range(min(args.calib_images, 4))]
        calib_note = f"{len(calib)} random images (no training set: {e}); speed only"
    int8 = quantize_int8_nncf(fp32, calib, os.path.join(work, "model_int8.xml"), preset=args.int8_preset)
    stock = build_model(stock_equivalent_cfg(cfg)).eval()
    stock.load_state_dict(model.state_dict())
    stock_b = build_model(stock_equivalent_cfg(cfg)).eval()
    stock_b.load_state_dict(model.state_dict())
    chw = torch.as_tensor(img.transpose(2, 0, 1).astype(np.float32))
    inputs = [{"image": chw, "height": h, "width": w}]

    def eager(m):
        def f():
            with torch.no_grad():
                return m(inputs)
        return f

    fns = {"stock": eager(stock), "stock-b": eager(stock_b)}
    modes = ["onnxruntime", "openvino", "openvino-static", "openvino-int8", "openvino-int8-static"]
    preds = build_predictors(fp32, int8, modes, input_format=cfg.INPUT.FORMAT, num_threads=args.threads)
    fns.update({m: (lambda p=p: p(img)) for m, p in preds.items()})
    meta = _meta(args, preds["openvino"].runner.num_threads)
    meta.update(config=args.config_file or f"demo {args.demo}", image=[h, w], calibration=calib_note,
                int8_preset=args.int8_preset, torch_threads=torch.get_num_threads(),
                settings={m: p.runner.describe() for m, p in preds.items()})
    times = timed_rounds(fns, args, ("stock", "stock-b"))
    record = _report("Whole detector", times, meta, aa=("stock", "stock-b"), reference="stock", out=args.out)
    if args.part:
        from .benchmark.cli import repo_root
        from .benchmark.protocol import record_path

        preset = cfg.MODEL.RESNEXT.PRESET or "custom"
        path = record_path(repo_root(), meta["cpu_kind"], f"deploy-{args.part}-{preset}-{h}x{w}")
        atomic_write_json(path, benchmark_record(record, args.part, preset), indent=1)
        print(f"  benchmark record: {path}")
    return record


def cmd_ap(args) -> Dict:
    """COCO AP of one trained detector exported fp32, NNCF int8 (and QDQ int8), per runtime."""
    from .evaluate import evaluate_exported
    from ..deploy.export import export_onnx
    from ..deploy.quantize import calibration_images, quantize_int8, quantize_int8_nncf
    from ..hardware import CpuFeatures as F

    cfg, model = _export_cfg(args)
    cfg = cfg.clone()
    cfg.defrost()
    if model is None and not cfg.MODEL.WEIGHTS:
        cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    cfg.MODEL.LOAD_PROPOSALS = False
    work = args.work_dir
    fp32 = export_onnx(cfg, work, model=model)["path"]
    calib = calibration_images(cfg, args.calib_images)
    files = {"fp32": fp32, "int8-nncf": quantize_int8_nncf(fp32, calib, preset=args.int8_preset)}
    if args.with_qdq:
        files["int8-qdq"] = quantize_int8(fp32, calib)
    runs = [("onnxruntime", "fp32", "fp32"), ("openvino", "fp32", "fp32"), ("openvino", "int8-nncf", "fp32")]
    if F.detect().native_bf16:
        runs.append(("openvino", "fp32", "bf16"))
    if args.with_qdq:
        runs += [("onnxruntime", "int8-qdq", "fp32"), ("openvino", "int8-qdq", "fp32")]
    results = {}
    for runtime, which, precision in runs:
        ecfg = cfg.clone()
        ecfg.OUTPUT_DIR = os.path.join(work, f"eval-{runtime}-{which}-{precision}")
        res = evaluate_exported(ecfg, files[which], runtime=runtime, precision=precision)
        bbox = res["bbox"] if "bbox" in res else next(iter(res.values()))["bbox"]
        results[f"{runtime} {which} ({precision} compute)"] = {"AP": bbox["AP"], "AP50": bbox["AP50"],
                                                                "file": files[which]}
    eager_file = os.path.join(cfg.OUTPUT_DIR, "inference", "eval_results.json")
    meta = _meta(args, None)
    meta.update(config=args.config_file or f"demo {args.demo}", weights=cfg.MODEL.WEIGHTS,
                calibration=f"{len(calib)} training images", int8_preset=args.int8_preset,
                eager_results=eager_file if os.path.isfile(eager_file) else None,
                label="AP on the demo model (tiny ResNeXt, synthetic data): an accuracy cost, not a speed figure")
    meta["loadavg_after"] = list(os.getloadavg())
    base = results["openvino fp32 (fp32 compute)"]["AP"]
    print(f"\nAP per runtime / precision ({meta['config']}):")
    for k, v in results.items():
        print(f"  {k:40s} AP {v['AP']:6.2f}  AP50 {v['AP50']:6.2f}  ({v['AP'] - base:+.2f} vs OpenVINO fp32)")
    record = {"meta": meta, "results": results}
    if args.out:
        atomic_write_json(args.out, record, indent=2)
        print(f"  record: {args.out}")
    return record


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="measure_deploy.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(s, rounds):
        s.add_argument("--rounds", type=int, default=rounds,
                       help=f"timed rounds at least (default {rounds}); more while the A/A control is outside 0.95-1.05")
        s.add_argument("--max-seconds", type=float, default=900.0,
                       help="no round starts past this many seconds of timing (default 900)")
        s.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
        s.add_argument("--threads", type=int, default=None, help="runtime threads (default: physical cores available)")
        s.add_argument("--out", default="", metavar="FILE", help="write the record (JSON) here")

    for name, helptext in (("spinning", "ONNX Runtime thread spinning on vs off"),
                           ("shapes", "OpenVINO static vs dynamic shapes")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("model", help="an exported model.onnx")
        s.add_argument("--size", type=_size, default=None, metavar="HxW",
                       help="graph input size (the resized image; default: the contract's test size, 4:3)")
        if name == "shapes":
            s.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "default"))
        common(s, 10)
    for name, helptext in (("runtimes", "whole detector: stock eager vs each deploy mode"),
                           ("ap", "COCO AP per runtime / precision of a trained detector")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--config-file", "--config", dest="config_file", default="", metavar="FILE")
        s.add_argument("--demo", nargs="?", const="fpn", default=None, choices=("fpn", "two_stage"),
                       help="the train_net demo's config and output (after tools/train_net.py --demo)")
        s.add_argument("--calib-images", type=int, default=32, help="int8 calibration images (default 32)")
        s.add_argument("--int8-preset", default="performance", choices=("performance", "mixed"))
        s.add_argument("--work-dir", default="", metavar="DIR", help="exports go here (default: OUTPUT_DIR/measure_deploy)")
        if name == "runtimes":
            s.add_argument("--size", type=_size, default=(800, 1333), metavar="HxW", help="image size (default 800x1333)")
            s.add_argument("--part", choices=("fpn", "c4"), default="",
                           help="also file the run in the benchmark's format as benchmarks/<kind>/deploy-PART-"
                                "<preset>-<H>x<W>.json, which the README and docs/SPEED.md render")
            common(s, 5)
        else:
            s.add_argument("--with-qdq", action="store_true", help="also ONNX Runtime's QDQ int8")
            s.add_argument("--out", default="", metavar="FILE", help="write the record (JSON) here")
        s.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")
    return p


def cli(argv=None) -> int:
    """The command line: 0, or 2 after a one-line error."""
    import logging

    from ..config import ResNeXtConfigError
    from ..deploy.contract import DeployError
    from ..weights import WeightsError

    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for key in ("rounds", "warmup", "calib_images"):
        v = getattr(args, key, None)
        if v is not None and (v < 1 if key != "warmup" else v < 0):
            print(f"measure_deploy.py: error: --{key.replace('_', '-')} {v} is not valid; use a "
                  f"{'positive' if key != 'warmup' else 'non-negative'} number", file=sys.stderr)
            return 2
    if args.command in ("runtimes", "ap"):
        if not args.config_file and not args.demo:
            print("measure_deploy.py: error: give --config-file FILE or --demo", file=sys.stderr)
            return 2
        if not args.work_dir:
            args.work_dir = os.path.join("output", "measure_deploy", args.command)
    try:
        {"spinning": cmd_spinning, "shapes": cmd_shapes, "runtimes": cmd_runtimes, "ap": cmd_ap}[args.command](args)
    except (DeployError, ResNeXtConfigError, WeightsError, FileNotFoundError, ValueError) as e:
        print(f"measure_deploy.py: error: {e}", file=sys.stderr)
        return 2
    return 0


def main():  # pragma: no cover - console entry
    sys.exit(cli())
