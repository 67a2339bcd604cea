"""Deployment: the whole detector exported to ONNX, run by ONNX Runtime or OpenVINO.

- :func:`export_onnx` (``tools/export.py``): FPN or C4 Faster R-CNN -> ``model.onnx`` with
  its preprocessing contract in the metadata, checked against eager before it is written.
- :class:`DeployedPredictor`: the exported file in a runtime, called like detectron2's
  ``DefaultPredictor`` (on the same images: BGR by default); with no runtime named, the one
  measured fastest on this CPU kind (:mod:`.measured`, logged).
- :func:`quantize_int8_nncf` (``tools/export.py --int8``): NNCF post-training int8, an
  OpenVINO IR ``model_int8.xml``; :func:`quantize_int8` (``--int8-runtime onnxruntime``):
  ONNX Runtime's QDQ int8.
- :func:`build_predictors` (:mod:`.modes`): the named speed modes, for timing loops.
- :class:`~.two_stage.TwoStageDetector`: the paper's two-stage plan as one graph.

COCO evaluation (``--eval-only``) and the command line are in :mod:`resnext_det.apps`. Needs the
``deploy`` extra (``pip install -e .[deploy]``); the runtimes are imported only when used.
"""
from .contract import Contract, DeployError, read_contract
from .export import export_onnx
from .modes import build_predictors
from .predictor import DeployedPredictor
from .quantize import quantize_int8, quantize_int8_nncf

__all__ = ["Contract", "DeployError", "DeployedPredictor", "export_onnx", "read_contract",
           "quantize_int8", "quantize_int8_nncf", "build_predictors"]
