#!/usr/bin/env python3
"""Export a trained ResNeXt Faster R-CNN (FPN or C4) to ONNX for ONNX Runtime / OpenVINO.

    python tools/export.py --config-file CFG --output DIR [--format onnx] [--int8 --calib-images N] \\
        MODEL.WEIGHTS model_final.pth [KEY VALUE ...]

Writes DIR/model.onnx with the preprocessing contract in its metadata, after checking it
with onnx.checker and against eager inference. Run it with resnext_det.deploy.DeployedPredictor
or evaluate it: tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS DIR/model.onnx.
The logic lives in resnext_det/deploy/cli.py.
"""
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

with warnings.catch_warnings():  # detectron2's torch.jit.script decorators: deprecated in torch
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
    from resnext_det.deploy.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
