#!/usr/bin/env python3
"""Params and FLOPs (fvcore, 224x224) of ResNet-50/101, the ResNeXt presets and the paper's
Table 2 equal-complexity family, printed next to the paper's figures with the difference.

    python tools/complexity.py                       # all default models
    python tools/complexity.py --models X-50-32x4d R-50 --json out.json

Everything is in :mod:`resnext_det.apps.complexity`.
"""
import os
import sys

try:
    import resnext_det  # noqa: F401
except ImportError:  # a source checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnext_det.apps.complexity import cli

if __name__ == "__main__":
    sys.exit(cli())
