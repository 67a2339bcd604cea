"""Deployment: the whole detector exported to ONNX, run by ONNX Runtime or OpenVINO.

- :func:`export_onnx` (``tools/export.py``): FPN or C4 Faster R-CNN -> ``model.onnx`` with
  its preprocessing contract in the metadata, checked against eager before it is written.
- :class:`DeployedPredictor`: the exported file in a runtime, called like detectron2's
  ``DefaultPredictor`` (on the same images: BGR by default).
- :func:`quantize_int8` (``tools/export.py --int8``): post-training static int8.
- :func:`evaluate_exported` (``tools/train_net.py --eval-only MODEL.WEIGHTS model.onnx``).

Needs the ``deploy`` extra (``pip install -e .[deploy]``: onnx, onnxruntime, openvino); the
runtimes are imported only when used.
"""
from .contract import Contract, DeployError, read_contract
from .evaluate import evaluate_exported
from .export import export_onnx
from .predictor import DeployedPredictor
from .quantize import quantize_int8

__all__ = ["Contract", "DeployError", "DeployedPredictor", "export_onnx", "read_contract",
           "quantize_int8", "evaluate_exported"]
