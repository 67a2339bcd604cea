#!/usr/bin/env python3
"""Export a trained ResNeXt Faster R-CNN (FPN or C4) to ONNX for ONNX Runtime / OpenVINO.

    python tools/export.py --config-file CFG --output DIR [--format onnx] [--int8 --calib-images N] \\
        MODEL.WEIGHTS model_final.pth [KEY VALUE ...]

Writes DIR/model.onnx with the preprocessing contract in its metadata, after checking it
with onnx.checker and against eager inference. Run it with resnext_det.deploy.DeployedPredictor
or evaluate it: tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS DIR/model.onnx.
The logic lives in resnext_det/apps/export.py.
"""
import os
import sys

try:
    import resnext_det  # noqa: F401
except ImportError:  # a source checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnext_det.apps.export import cli

if __name__ == "__main__":
    sys.exit(cli())
