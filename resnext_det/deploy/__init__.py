"""Deployment: the whole detector exported to ONNX (:func:`export_onnx`), run by ONNX Runtime or
OpenVINO (:class:`DeployedPredictor`), int8 models, named speed modes (docs/DEPLOY.md). Needs the
``deploy`` extra; the runtimes are imported only when used.
"""
from .contract import Contract, DeployError, read_contract
from .export import export_onnx
from .modes import build_predictors
from .predictor import DeployedPredictor
from .quantize import quantize_int8, quantize_int8_nncf

__all__ = ["Contract", "DeployError", "DeployedPredictor", "export_onnx", "read_contract",
           "quantize_int8", "quantize_int8_nncf", "build_predictors"]
