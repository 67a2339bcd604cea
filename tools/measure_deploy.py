#!/usr/bin/env python3
"""Measure the deploy defaults: ONNX Runtime spinning, OpenVINO static vs dynamic shapes, the
whole detector per runtime / precision (stock eager with an A/A pair, ONNX Runtime, OpenVINO
fp32 dynamic / static, NNCF int8), and the AP cost of int8. See
resnext_det/apps/measure_deploy.py (``python tools/measure_deploy.py --help``)."""
import os
import sys

try:
    import resnext_det  # noqa: F401
except ImportError:  # a source checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnext_det.apps.measure_deploy import main

if __name__ == "__main__":
    main()
