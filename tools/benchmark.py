#!/usr/bin/env python3
"""Side-by-side speed of stock detectron2, this project's default and fast paths, the training
layouts and the exported detector in ONNX Runtime / OpenVINO, under one protocol: paths
interleaved in rotating rounds, an A/A control (stock as two instances) in every part, median
and spread, load average, CPU kind and flags; ratios published only when the control settles.
Records go to benchmarks/<kind>/ (in a checkout, `python -m benchmarks.render` then renders
README.md's and docs/SPEED.md's tables from them). See resnext_det/apps/benchmark/ and docs/SPEED.md.

    python tools/benchmark.py --parts train --presets X-101-32x4d    # benchmarks/<kind>/train-layouts.json
    python tools/benchmark.py --parts backbone fpn c4                # benchmarks/<kind>/inference.json
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnext_det.apps.benchmark import main  # noqa: E402
from resnext_det.apps.tool import run_tool  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_tool("benchmark.py", main))
