#!/usr/bin/env python3
"""Side-by-side speed of stock detectron2, this project's default and fast paths, and the
exported detector in ONNX Runtime / OpenVINO: same weights, one interleaved run, one JSON
record per measurement (ratio vs stock, max relative difference, GFLOP/s, share of the same
run's GEMM ceiling, load average, CPU flags). See resnext_det/engine/benchmark.py.

    python tools/benchmark.py                      # X-101-32x4d all parts + 2 backbones, 800x1333
    python tools/benchmark.py --quick              # 320x512, X-50-32x4d, fewer runs
    python tools/benchmark.py --parts backbone fpn c4 --backbone-presets --int8
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnext_det.engine.benchmark import main  # noqa: E402

if __name__ == "__main__":
    main()
