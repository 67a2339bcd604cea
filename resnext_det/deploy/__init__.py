"""Deployment: the whole detector exported to ONNX, run by ONNX Runtime or OpenVINO.

:func:`export_onnx` (``tools/export.py``) writes ``model.onnx`` with its preprocessing contract,
checked against eager; :class:`DeployedPredictor` runs it like detectron2's ``DefaultPredictor``;
:func:`quantize_int8_nncf` (``--int8``) and :func:`quantize_int8` (``--int8-runtime onnxruntime``)
make int8 models; :func:`build_predictors` gives the named speed modes for timing loops;
:class:`~.two_stage.TwoStageDetector` is the paper's two-stage plan as one graph. COCO evaluation
and the command lines are in :mod:`resnext_det.apps`. Needs the ``deploy`` extra
(``pip install -e .[deploy]``); the runtimes are imported only when used.
"""
from .contract import Contract, DeployError, read_contract
from .export import export_onnx
from .modes import build_predictors
from .predictor import DeployedPredictor
from .quantize import quantize_int8, quantize_int8_nncf

__all__ = ["Contract", "DeployError", "DeployedPredictor", "export_onnx", "read_contract",
           "quantize_int8", "quantize_int8_nncf", "build_predictors"]
