"""The command line of ``tools/benchmark.py`` (its ``--help`` text is :mod:`.suites`' docstring): measure
stock detectron2 against this project's paths on this CPU, and write the record into ``benchmarks/<kind>/``
(or ``--out``; the commands: docs/SPEED.md).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ...hardware import cpu_kind
from .protocol import check_record_path, default_record_name, record_path, write_record

logger = logging.getLogger("benchmark")


def repo_root() -> str:
    """The checkout this package sits in (where README.md and benchmarks/ are), else the cwd
    (an installed package: records then go to ``./benchmarks/<kind>/``)."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    return here if os.path.exists(os.path.join(here, "README.md")) else os.getcwd()


def get_parser() -> argparse.ArgumentParser:
    from . import suites

    ap = argparse.ArgumentParser(description=suites.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="*", default=["X-101-32x4d"],
                    help="presets for the full suite (backbone, fpn, c4, train)")
    ap.add_argument("--backbone-presets", nargs="*", default=["X-50-32x4d", "X-101-32x8d"],
                    help="extra presets for the backbone part only")
    ap.add_argument("--parts", nargs="+", default=["backbone", "fpn", "c4", "train"],
                    choices=["backbone", "fpn", "c4", "train"])
    ap.add_argument("--size", nargs=2, type=int, default=[800, 1333], metavar=("H", "W"))
    ap.add_argument("--min-rounds", type=int, default=3, help="rounds every part runs (median and spread)")
    ap.add_argument("--max-seconds", type=float, default=900.0,
                    help="per part: rounds are added while the A/A control is outside 0.95-1.05, "
                         "until the next round would pass this many seconds")
    ap.add_argument("--max-rounds", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls of each path before the rounds")
    ap.add_argument("--gemm-n", type=int, default=2048, help="matrix size of the GEMM ceiling")
    ap.add_argument("--c4-topk", type=int, default=0,
                    help="RPN.POST_NMS_TOPK_TEST for the C4 run on every path (res5 runs per RoI; "
                         "0 keeps the config's, written into the record either way)")
    ap.add_argument("--count-detector-flops", action="store_true",
                    help="fvcore-count the full detectors too (one slow traced forward each)")
    ap.add_argument("--bf16-train", action="store_true", help="bf16 autocast in the training candidates (CPU)")
    ap.add_argument("--quick", action="store_true", help="320x512, X-50-32x4d only")
    ap.add_argument("--runtimes", nargs="*", default=["onnxruntime", "openvino"],
                    choices=["onnxruntime", "openvino"],
                    help="inference runtimes to add as paths (CPU; those installed); none: --runtimes")
    ap.add_argument("--int8", action="store_true",
                    help="also int8 detectors in the runtimes (calibrated on random images: speed only)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--opts", nargs="*", default=[], metavar="KEY VALUE",
                    help="config overrides after the preset (a tiny network for a quick check; written into "
                         "the record, and a record made with them is not one of the README's figures)")
    ap.add_argument("--name", default=None,
                    help="record name (default: train-layouts for --parts train, inference for "
                         "backbone/fpn/c4; size and presets appended when not the defaults)")
    ap.add_argument("--out", default=None, help="record path (default: benchmarks/<kind>/<name>.json); "
                                                "'' writes none")
    ap.add_argument("--root", default=None, help="the checkout (default: this package's)")
    return ap


def main(argv=None):
    """Measure and write the record (``benchmarks/schema.json``'s ``benchmark`` type); returns it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_parser().parse_args(argv)
    root = args.root or repo_root()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    from .suites import measure, summary

    logging.getLogger("detectron2").setLevel(logging.WARNING)
    if args.quick:
        args.size, args.presets, args.backbone_presets = [320, 512], ["X-50-32x4d"], []
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    kind = cpu_kind()
    out_path = args.out
    if out_path is None:
        name = args.name or default_record_name(args.parts, args.presets, args.size)
        out_path = record_path(root, kind, name)
    if out_path:
        check_record_path(out_path, kind)  # before hours of measuring, not after
    results, env = measure(args)
    out = write_record(out_path, "benchmark", results, env,
                       what=f"tools/benchmark.py: parts {' '.join(args.parts)}, stock detectron2 vs this project's "
                            f"paths, {args.size[0]}x{args.size[1]}, batch 1, random weights",
                       command="python tools/benchmark.py " + " ".join(argv))
    if out_path:
        logger.info("record: %s", out_path)
    print(summary(out))
    if not results["settings"]["published"]:
        print(f"NOISY run ({', '.join(results['settings']['noisy_parts'])}): its ratios are not published. "
              "Re-run on an idle machine (nothing else running, load average well under the core count).")
    return out
