"""The command line of ``tools/convert_weights.py``: ImageNet weights from any supported
source into a detectron2 checkpoint that carries its input convention.

    python tools/convert_weights.py INPUT OUTPUT [--preset NAME]

The sources and the ``meta`` (input convention) written: docs/WEIGHTS.md. A ``.pkl`` OUTPUT holds
numpy arrays, a ``.pth`` tensors, both with ``__author__`` and ``matching_heuristics``.
"""
from __future__ import annotations

import argparse
import logging
import os
import time

from ..weights.sources import read_checkpoint, save_converted
from .tool import run_tool

__all__ = ["main", "cli"]


def main(argv=None) -> None:
    """The command line's work: convert as ``argv`` says (WeightsError for a bad input)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="weights file to convert")
    parser.add_argument("output", help="detectron2 checkpoint to write (.pkl or .pth)")
    parser.add_argument("--preset", default=None, help="require this architecture (e.g. X-101-32x8d)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="[convert_weights] %(message)s")
    log = logging.getLogger("convert_weights")
    if not args.output.endswith((".pkl", ".pth")):
        parser.error(f"OUTPUT must end in .pkl or .pth, got {args.output!r}")
    t0 = time.perf_counter()
    ckpt = read_checkpoint(args.input, args.preset, progress=not args.quiet)
    meta = ckpt["meta"]
    model = ckpt["model"]
    n_params = sum(int(v.numel()) for v in model.values())
    log.info(f"{len(model)} tensors ({n_params / 1e6:.2f}M values) in detectron2 names")
    if meta is None:
        log.warning("the input carries no input-convention metadata (detectron2 model-zoo file): "
                    "the output will not be format-checked on load")
    else:
        arch = meta.get("architecture") or {}
        log.info(f"source: {meta['source']}; architecture: {arch.get('preset') or arch}")
        log.info(f"input convention: INPUT.FORMAT {meta['input_format']}, MODEL.PIXEL_MEAN "
                 f"{meta['pixel_mean']}, MODEL.PIXEL_STD {meta['pixel_std']}, STRIDE_IN_1X1 "
                 f"{meta['stride_in_1x1']}")
        if meta.get("dropped"):
            log.info(f"dropped classifier tensors: {meta['dropped']}")
    save_converted(model, meta, args.output, matching_heuristics=bool(ckpt.get("matching_heuristics", True)),
                   progress=not args.quiet)
    log.info(f"wrote {args.output} ({os.path.getsize(args.output) / 2**20:.1f} MiB) in "
             f"{time.perf_counter() - t0:.1f}s")


def cli(argv=None) -> int:
    """The command line of ``tools/convert_weights.py``: 0, or 2 after a one-line error."""
    return run_tool("convert_weights.py", main, argv)
