#!/usr/bin/env python3
"""Side-by-side speed of stock detectron2, this project's default and fast paths, the training
layouts and the exported detector in ONNX Runtime / OpenVINO, under one protocol: paths
interleaved in rotating rounds, an A/A control (stock as two instances) in every part, median
and spread, load average, CPU kind and flags; ratios published only when the control settles.
Records go to benchmarks/<kind>/; --render-readme renders README.md's and docs/SPEED.md's tables
and the training auto table from them. See resnext_det/apps/benchmark/ and docs/SPEED.md.

    python tools/benchmark.py --parts train --presets X-101-32x4d    # benchmarks/<kind>/train-layouts.json
    python tools/benchmark.py --parts backbone fpn c4                # benchmarks/<kind>/inference.json
    python tools/benchmark.py --render-readme                        # README.md, docs/SPEED.md, auto's table
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnext_det.apps.benchmark import main  # noqa: E402

if __name__ == "__main__":
    main()
