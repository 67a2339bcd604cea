#!/usr/bin/env python3
"""Convert ImageNet weights from any supported source into a detectron2 checkpoint.

    python tools/convert_weights.py INPUT OUTPUT [--preset NAME]

Everything is in :mod:`resnext_det.apps.convert_weights` (``--help`` lists the options).
"""
import os
import sys

try:
    import resnext_det  # noqa: F401
except ImportError:  # a source checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnext_det.apps.convert_weights import cli

if __name__ == "__main__":
    sys.exit(cli())
