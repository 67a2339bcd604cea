"""The command line of ``tools/export.py``: export a trained detector for CPU inference (docs/DEPLOY.md).

    python tools/export.py --config-file configs/faster_rcnn_X101_32x4d_FPN_e2e.yaml \\
        --output out/deploy MODEL.WEIGHTS out/model_final.pth
    python tools/export.py --config-file ... --output out/deploy --int8 --calib-images 32 MODEL.WEIGHTS ...

Writes ``DIR/model.onnx`` and its ``model.export.json`` report; ``--int8`` adds the NNCF int8 OpenVINO IR
``DIR/model_int8.xml`` (``--int8-runtime onnxruntime``: the QDQ ``model_int8.onnx``). A two-stage plan exports as
one graph, MODEL.WEIGHTS then being stage 2's file (default: where the plan wrote it). Bad input: one line
``export.py: error: ...``, exit status 2, nothing written.
"""
from __future__ import annotations

import argparse
import logging
import os
import time

from detectron2.modeling import build_model

from ..config import check_device, get_config_file, load_config
from ..data.synthetic import DEMO_CONFIGS
from ..engine.plan_runner import register_datasets
from ..deploy.contract import DeployError
from ..deploy.export import export_onnx
from ..deploy.two_stage import TwoStageDetector
from ..deploy.quantize import INT8_RUNTIMES, NNCF_PRESETS, calibration_images, quantize_int8, quantize_int8_nncf
from ..engine.plan import build_plan, final_stage
from ..weights import load_checkpoint
from .tool import run_tool

__all__ = ["get_parser", "cli", "main", "export_target", "plan_export_target", "build_two_stage_detector"]


def build_two_stage_detector(stages, weights: str = "") -> TwoStageDetector:
    """The deployed form of a two-stage plan (``build_plan(cfg)``): stage 1's weights from where the
    plan wrote them, stage 2's ``weights`` (default: the same). FileNotFoundError names a missing one."""
    by = {s.name: s for s in stages}
    rpn_cfg = by["rpn"].cfg.clone()
    rpn_cfg.defrost()
    # the proposals the plan's files hold for evaluation: the top TOPK_TEST after NMS
    rpn_cfg.MODEL.RPN.POST_NMS_TOPK_TEST = by["fast_rcnn"].cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST
    det_cfg = by["fast_rcnn"].cfg.clone()
    det_cfg.defrost()
    det_cfg.MODEL.LOAD_PROPOSALS = False
    files = {"rpn": os.path.join(by["rpn"].output_dir, "model_final.pth"),
             "fast_rcnn": weights or os.path.join(by["fast_rcnn"].output_dir, "model_final.pth")}
    for stage, path in files.items():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"two-stage plan: the {stage} stage's weights {path!r} not found "
                                    f"(run the plan first: tools/train_net.py --config-file ...; "
                                    f"OUTPUT_DIR {os.path.dirname(by['rpn'].output_dir) or '.'!r})")
    if det_cfg.MODEL.DEVICE != "cpu":
        raise DeployError(f"MODEL.DEVICE={det_cfg.MODEL.DEVICE!r}: export on the CPU (MODEL.DEVICE cpu)")
    rpn_net, detector = build_model(rpn_cfg), build_model(det_cfg)
    load_checkpoint(rpn_net, rpn_cfg, files["rpn"])
    load_checkpoint(detector, det_cfg, files["fast_rcnn"])
    return TwoStageDetector(rpn_net, detector).eval()


def plan_export_target(cfg):
    """What to export for a train_net config (datasets registered): ``(cfg of the deployed detector,
    model or None)``. Joint plan: the final stage's config, None (built from it). Two-stage plan:
    stage 2's config (making its own proposals) and the :class:`TwoStageDetector` of both stages."""
    stages = build_plan(cfg)
    scfg = final_stage(stages).cfg.clone()
    scfg.defrost()
    model = None
    if cfg.RESNEXT_PLAN.MODE == "two_stage":
        model = build_two_stage_detector(stages, cfg.MODEL.WEIGHTS)
        scfg.MODEL.LOAD_PROPOSALS = False
        scfg.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"  # the graph makes its own (stage 1's)
    scfg.MODEL.WEIGHTS = cfg.MODEL.WEIGHTS
    scfg.freeze()
    return scfg, model


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


def export_target(config_file: str, opts=(), *, demo: str = ""):
    """What ``tools/export.py`` exports for a config: :func:`plan_export_target`, datasets registered
    (the export and calibration images). Exporting trains nothing: missing weights are refused by
    name. ``demo`` (``fpn``, ``two_stage``): that demo's config and OUTPUT_DIR, as ``train_net.py
    --demo`` uses them (``config_file`` may then be "")."""
    if demo and not config_file:
        config_file = get_config_file(DEMO_CONFIGS[demo])
    cfg = load_config(config_file, opts)
    if demo and "OUTPUT_DIR" not in list(opts)[::2]:
        cfg.OUTPUT_DIR = os.path.join("output", f"demo_{demo}")
    check_device(cfg)
    cfg.freeze()
    register_datasets(cfg)
    return plan_export_target(cfg)


def main(argv=None) -> dict:
    """The command line's work: export (and optionally quantize) as ``argv`` says; returns the export report."""
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.calib_images < 1:
        raise DeployError(f"--calib-images {args.calib_images} is not valid; use a positive number")
    cfg, model = export_target(args.config_file, args.opts)
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
    return run_tool("export.py", main, argv)
