#!/usr/bin/env python3
"""Train and evaluate ResNeXt Faster R-CNN with detectron2: the project's main entry point.

    python tools/train_net.py --config configs/faster_rcnn_X101_32x4d.yaml --num-gpus 8
    python tools/train_net.py --demo            # the embedded CPU demo (or: --demo two_stage)

Everything is in :mod:`resnext_det.cli` (``--help`` lists the flags).
"""
import os
import sys

try:
    import resnext_det  # noqa: F401
except ImportError:  # a source checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnext_det.cli import cli

if __name__ == "__main__":
    sys.exit(cli())
