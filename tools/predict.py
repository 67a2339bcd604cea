#!/usr/bin/env python3
"""Run a trained detector on pictures, folders, globs and videos (detectron2's demo.py flags).

    python tools/predict.py --config-file CFG --input photos/ clip.mp4 --output out/ \\
        [--confidence-threshold 0.5] [--runtime auto|eager|onnxruntime|openvino] \\
        [--precision fp32|bf16] [--ray [ADDRESS]] MODEL.WEIGHTS model.onnx

Writes out/pictures/, out/videos/, out/predictions.json (COCO results), out/images.json and
out/failures.json; run it again with the same --output to finish a killed run.
The logic lives in resnext_det/apps/predict.py.
"""
import os
import sys

try:
    import resnext_det  # noqa: F401
except ImportError:  # a source checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnext_det.apps.predict import cli

if __name__ == "__main__":
    sys.exit(cli())
