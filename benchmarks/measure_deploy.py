"""Measurements behind the deploy defaults (``resnext_det/deploy/measured_runtimes.json``), a
development tool of the checkout. Every timing is a run of the benchmark's protocol
(``resnext_det.apps.benchmark.protocol``: paths interleaved in rotating rounds, an A/A pair,
median and spread, the load average at start and end, the machine); run it on an idle machine.

    # ONNX Runtime thread spinning on vs off (plus an A/A pair of "off" sessions)
    python -m benchmarks.measure_deploy spinning out/deploy/model.onnx --size 800x1216 --rounds 10
    # OpenVINO static (per-shape compiled) vs dynamic shapes
    python -m benchmarks.measure_deploy shapes out/deploy/model.onnx --size 800x1216 --rounds 10
    # whole detector from a config: stock eager (twice: A/A), ONNX Runtime, OpenVINO fp32
    # dynamic / static, OpenVINO int8 (NNCF) dynamic / static
    python -m benchmarks.measure_deploy runtimes --config-file faster_rcnn_X101_32x4d_FPN.yaml \\
        --part fpn --calib-images 32 --rounds 5
    # COCO AP of a trained model per runtime and precision (fp32, NNCF int8, QDQ int8)
    python -m benchmarks.measure_deploy ap --demo fpn --calib-images 32 --out benchmarks/<kind>/deploy-ap-demo-fpn.json

Records (``--out``; ``runtimes --part P`` files benchmarks/<kind>/deploy-P-<preset>-<H>x<W>.json)
are ``benchmark`` records of ``benchmarks/schema.json`` (``ap``: ``accuracy``), which
``python -m benchmarks.render`` renders; no ratio is published from a run whose A/A pair
differs by more than 5 %.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Dict, Optional

import numpy as np
from tabulate import tabulate

from resnext_det.apps.benchmark.protocol import (
    STOCK_A,
    STOCK_B,
    Protocol,
    Rounds,
    environment,
    path_record,
    record_path,
    run_rounds,
    write_record,
)

__all__ = ["timed_rounds", "main", "cli"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command() -> str:
    return " ".join(["python -m benchmarks.measure_deploy"] + sys.argv[1:])


def timed_rounds(fns: Dict[str, Callable[[], object]], args, pair) -> Rounds:
    """A run of the benchmark's one protocol: paths interleaved in rotating rounds, at least
    ``--rounds`` of them, more (up to ``--max-seconds``) while the A/A ``pair`` is outside its band.

    Args:
        fns: path name -> a call to time.
        args: the command line (``rounds``, ``warmup``, ``max_seconds``).
        pair: the two paths of the A/A control.
    """
    protocol = Protocol(min_rounds=args.rounds, warmup=args.warmup, max_seconds=args.max_seconds)
    return run_rounds(fns, protocol, pair=pair)


def _report(title: str, part: str, preset: str, res: Rounds, env: dict, settings: dict, what: str,
            out: Optional[str]) -> Dict:
    """Print the run as a table (median, spread, ratio to the A/A pair's pooled times) and write
    its ``benchmark`` record to ``out`` (none when empty); returns the record."""
    paths = [path_record(part, preset, mode, res) for mode in res.times]
    control = {"name": part, "preset": preset, **res.control()}
    rows = [[r["mode"], f"{1000 * r['seconds']:.1f}", f"{1000 * r['spread']['min']:.1f}-{1000 * r['spread']['max']:.1f}",
             "" if r["ratio"] is None else f"{r['ratio']:.2f}"] for r in paths]
    print(f"\n{title}: {env['cpu_kind']} ({' '.join(env['cpu_flags'])}), load {res.loadavg_at_start} -> "
          f"{res.loadavg_at_end}")
    print(tabulate(rows, ["path", "median ms", "min-max ms", f"x {res.pair[0]}+{res.pair[1]}"], tablefmt="github"))
    print(f"A/A {res.pair[1]} / {res.pair[0]}: {res.aa_ratio:.3f}" +
          ("" if res.settled else f"  NOISY (outside {res.band[0]}-{res.band[1]}): ratios not published; "
                                  "re-run on an idle machine"))
    record = write_record(out, "benchmark", {"aa_control": True, "settings": settings, "controls": [control],
                                             "paths": paths}, env, what=what, command=_command())
    if out:
        print(f"record: {out}")
    return record


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
    from resnext_det.deploy.contract import read_contract

    c = read_contract(path)
    h, w = size or (c.min_size_test, min(c.max_size_test, c.min_size_test * 4 // 3))
    return np.random.default_rng(0).integers(0, 256, (3, h, w)).astype(np.float32)


def cmd_spinning(args) -> Dict:
    """ONNX Runtime with spinning on and off (two "off" sessions: the A/A control)."""
    from resnext_det.deploy.runtimes import make_runtime

    env = environment()
    x = _graph_image(args.model, args.size)
    runners = {"spin-on": make_runtime("onnxruntime", args.model, args.threads, allow_spinning=True),
               "spin-off": make_runtime("onnxruntime", args.model, args.threads, allow_spinning=False),
               "spin-off-b": make_runtime("onnxruntime", args.model, args.threads, allow_spinning=False)}
    fns = {n: (lambda r=r: r.run(x)) for n, r in runners.items()}
    res = timed_rounds(fns, args, ("spin-off", "spin-off-b"))
    settings = {"model": args.model, "image": list(x.shape[1:]), "threads": runners["spin-on"].num_threads}
    return _report("ONNX Runtime spinning", "onnxruntime-spinning", args.model, res, env, settings,
                   "ONNX Runtime thread spinning on vs off (two 'off' sessions: the A/A control)", args.out)


def cmd_shapes(args) -> Dict:
    """OpenVINO dynamic vs static shapes on one image size (two dynamic models: A/A)."""
    from resnext_det.deploy.runtimes import make_runtime

    env = environment()
    x = _graph_image(args.model, args.size)
    runners = {"dynamic": make_runtime("openvino", args.model, args.threads, args.precision, shape_mode="dynamic"),
               "dynamic-b": make_runtime("openvino", args.model, args.threads, args.precision, shape_mode="dynamic"),
               "static": make_runtime("openvino", args.model, args.threads, args.precision, shape_mode="static")}
    start = time.perf_counter()
    runners["static"].run(x)  # the compile for this shape, timed on its own
    compile_s = time.perf_counter() - start
    fns = {n: (lambda r=r: r.run(x)) for n, r in runners.items()}
    res = timed_rounds(fns, args, ("dynamic", "dynamic-b"))
    print(f"static: first call on a new shape (compile + run) {compile_s:.2f} s")
    settings = {"model": args.model, "image": list(x.shape[1:]), "threads": runners["static"].num_threads,
                "precision": args.precision, "static_first_call_s": compile_s}
    return _report("OpenVINO shapes", "openvino-shapes", args.model, res, env, settings,
                   "OpenVINO static (per-shape compiled) vs dynamic shapes (two dynamic models: the A/A control)",
                   args.out)


def _export_cfg(args):
    from resnext_det.apps.export import export_target

    return export_target(args.config_file or "", list(args.opts), demo=args.demo or "")


def cmd_runtimes(args) -> Dict:
    """Export fp32 and NNCF int8, then time stock eager (twice: A/A) and the deploy modes."""
    import torch
    from detectron2.modeling import build_model

    from resnext_det.apps.stock import stock_equivalent_cfg
    from resnext_det.deploy.export import build_export_model, export_onnx
    from resnext_det.deploy.modes import build_predictors
    from resnext_det.deploy.quantize import calibration_images, quantize_int8_nncf, resize_for_graph

    env = environment()
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

    fns = {STOCK_A: eager(stock), STOCK_B: eager(stock_b)}
    modes = ["onnxruntime", "openvino", "openvino-static", "openvino-int8", "openvino-int8-static"]
    preds = build_predictors(fp32, int8, modes, input_format=cfg.INPUT.FORMAT, num_threads=args.threads)
    fns.update({m: (lambda p=p: p(img)) for m, p in preds.items()})
    res = timed_rounds(fns, args, (STOCK_A, STOCK_B))
    settings = {"config": args.config_file or f"demo {args.demo}", "image": [h, w], "calibration": calib_note,
                "int8_preset": args.int8_preset, "threads": preds["openvino"].runner.num_threads,
                "torch_threads": torch.get_num_threads(),
                "runtime_settings": {m: p.runner.describe() for m, p in preds.items()}}
    preset = cfg.MODEL.RESNEXT.PRESET or "custom"
    out = args.out or (record_path(ROOT, env["cpu_kind"], f"deploy-{args.part}-{preset}-{h}x{w}") if args.part else "")
    return _report("Whole detector", args.part or "detector", preset, res, env, settings,
                   "the whole detector through DeployedPredictor per runtime and precision against stock "
                   "detectron2 eager (twice: the A/A control)", out)


def cmd_ap(args) -> Dict:
    """COCO AP of one trained detector exported fp32, NNCF int8 (and QDQ int8), per runtime."""
    from resnext_det.apps.evaluate import evaluate_exported
    from resnext_det.deploy.export import export_onnx
    from resnext_det.deploy.quantize import calibration_images, quantize_int8, quantize_int8_nncf
    from resnext_det.hardware import CpuFeatures as F

    env = environment()
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
    config = args.config_file or f"demo {args.demo}"
    base = results["openvino fp32 (fp32 compute)"]["AP"]
    print(f"\nAP per runtime / precision ({config}):")
    print(tabulate([[k, f"{v['AP']:.2f}", f"{v['AP50']:.2f}", f"{v['AP'] - base:+.2f}"] for k, v in results.items()],
                   ["runtime / precision", "AP", "AP50", "vs OpenVINO fp32"], tablefmt="github"))
    record = write_record(args.out, "accuracy", {
        "config": config, "weights": cfg.MODEL.WEIGHTS, "calibration": f"{len(calib)} training images",
        "int8_preset": args.int8_preset, "eager_results": eager_file if os.path.isfile(eager_file) else None,
        "ap": results}, env, command=_command(),
        what=f"COCO AP of {config} per runtime and precision: an accuracy cost, not a speed figure")
    if args.out:
        print(f"record: {args.out}")
    return record


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.measure_deploy", description=__doc__,
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
                           help="the part measured; without --out the record goes to benchmarks/<kind>/deploy-PART-"
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

    from resnext_det.config import ResNeXtConfigError
    from resnext_det.deploy.contract import DeployError
    from resnext_det.weights import WeightsError

    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for key in ("rounds", "warmup", "calib_images"):
        v = getattr(args, key, None)
        if v is not None and (v < 1 if key != "warmup" else v < 0):
            print(f"benchmarks.measure_deploy: error: --{key.replace('_', '-')} {v} is not valid; use a "
                  f"{'positive' if key != 'warmup' else 'non-negative'} number", file=sys.stderr)
            return 2
    if args.command in ("runtimes", "ap"):
        if not args.config_file and not args.demo:
            print("benchmarks.measure_deploy: error: give --config-file FILE or --demo", file=sys.stderr)
            return 2
        if not args.work_dir:
            args.work_dir = os.path.join("output", "measure_deploy", args.command)
    try:
        {"spinning": cmd_spinning, "shapes": cmd_shapes, "runtimes": cmd_runtimes, "ap": cmd_ap}[args.command](args)
    except (DeployError, ResNeXtConfigError, WeightsError, FileNotFoundError, ValueError) as e:
        print(f"benchmarks.measure_deploy: error: {e}", file=sys.stderr)
        return 2
    return 0


def main():  # pragma: no cover - console entry
    sys.exit(cli())


if __name__ == "__main__":
    main()
