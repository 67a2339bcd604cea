"""The command line of ``tools/export.py``: export a trained detector for CPU inference.

    python tools/export.py --config-file configs/faster_rcnn_X101_32x4d_FPN_e2e.yaml \\
        --output out/deploy MODEL.WEIGHTS out/model_final.pth
    python tools/export.py --config-file ... --output out/deploy --int8 --calib-images 32 MODEL.WEIGHTS ...

A two-stage plan config (RESNEXT_PLAN.MODE two_stage, the paper's setting) is exported as
one graph: stage 1's RPN network feeding stage 2's Fast R-CNN (resnext_det.deploy.two_stage);
MODEL.WEIGHTS is then stage 2's file (default: where the plan wrote it).

Writes ``DIR/model.onnx`` with a ``model.export.json`` report. With ``--int8``: also the
int8 model calibrated on training images, by default through NNCF as an OpenVINO IR
(``DIR/model_int8.xml`` + ``.bin``, runs in OpenVINO); ``--int8-runtime onnxruntime`` writes
ONNX Runtime's QDQ ``DIR/model_int8.onnx`` instead (kept for measurement). Bad input: one line ``export.py: error: ...``, exit status 2, and
nothing written at the output path.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

from .._warnings import filter_known_third_party_warnings
from ..cli import setup_cfg
from ..config import ResNeXtConfigError
from ..engine.plan_runner import prepare_datasets
from ..weights import WeightsError
from .contract import DeployError
from .export import export_onnx
from .quantize import INT8_RUNTIMES, NNCF_PRESETS, calibration_images, quantize_int8, quantize_int8_nncf
from .two_stage import plan_export_target

__all__ = ["get_parser", "cli"]


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="export.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", "--config", dest="config_file", required=True, metavar="FILE",
                   help="the detector's config (a path or a shipped config's name)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for model.onnx")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    p.add_argument("--int8", action="store_true",
                   help="also write a static int8 model (default route: NNCF -> model_int8.xml)")
    p.add_argument("--int8-runtime", default="openvino", choices=INT8_RUNTIMES,
                   help="int8 route: openvino (NNCF post-training quantization, OpenVINO IR "
                        "model_int8.xml; default) or onnxruntime (QDQ model_int8.onnx)")
    p.add_argument("--int8-preset", default="performance", choices=NNCF_PRESETS,
                   help="NNCF preset: performance (symmetric, NNCF's default) or mixed "
                        "(asymmetric activations)")
    p.add_argument("--calib-images", type=int, default=32, metavar="N",
                   help="training images to calibrate int8 on (default 32)")
    p.add_argument("--image", default="", metavar="FILE",
                   help="image to trace and check on (default: first test image)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config overrides, e.g. MODEL.WEIGHTS out/model_final.pth")
    return p


def _export_cfg(args):
    """The deployed detector's config and model (see ``plan_export_target``), with the
    datasets registered (export image, calibration)."""
    # the same config and dataset steps as tools/train_net.py
    cfg = setup_cfg(argparse.Namespace(config_file=args.config_file, opts=args.opts, demo=None))
    prepare_datasets(cfg)
    return plan_export_target(cfg)


def run(args) -> dict:
    """Export (and optionally quantize) as ``args`` say; returns the export report."""
    if args.calib_images < 1:
        raise DeployError(f"--calib-images {args.calib_images} is not valid; use a positive number")
    cfg, model = _export_cfg(args)
    start = time.perf_counter()
    report = export_onnx(cfg, args.output, model=model, image_path=args.image or None, opset=args.opset)
    par = report["parity_onnxruntime_vs_eager"]
    print(f"Exported {report['path']} ({report['bytes'] / 1e6:.1f} MB, opset {args.opset}) in "
          f"{time.perf_counter() - start:.0f} s; ONNX Runtime vs eager on the export image: "
          f"{par['detections']} detections, max box diff {par['max_box_diff']:.2g} px, "
          f"max score diff {par['max_score_diff']:.2g}")
    if args.int8:
        images = calibration_images(cfg, args.calib_images)
        if args.int8_runtime == "openvino":
            path = quantize_int8_nncf(report["path"], images, preset=args.int8_preset)
            how, runtime = f"NNCF, preset {args.int8_preset}", "openvino"
        else:
            path = quantize_int8(report["path"], images)
            how, runtime = "ONNX Runtime QDQ", "onnxruntime"
        report["int8_path"] = path
        print(f"int8 model {path} ({how}, calibrated on {len(images)} training images); measure its AP: "
              f"python tools/train_net.py --config-file {args.config_file} --eval-only --runtime {runtime} "
              f"MODEL.WEIGHTS {path}")
    return report


def cli(argv=None) -> int:
    """The command line: returns 0, or 2 after a one-line error."""
    filter_known_third_party_warnings()  # a command line: its process, not the library, gets the filters
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(args)
    except (DeployError, ResNeXtConfigError, WeightsError, FileNotFoundError, ValueError) as e:
        print(f"export.py: error: {e}", file=sys.stderr)
        return 2
    return 0


def main():  # pragma: no cover - console entry
    sys.exit(cli())
