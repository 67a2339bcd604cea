"""Post-training static int8 of an exported detector, calibrated on training images pre-processed by
the export's contract (docs/DEPLOY.md). :func:`quantize_int8_nncf` (``--int8``): NNCF, an OpenVINO IR,
post-processing left fp32 (:func:`postprocessing_nodes`): quantized box coordinates move boxes for no
speed. :func:`quantize_int8` (``--int8-runtime onnxruntime``): ONNX Runtime's QDQ, kept for measurement:
it has no int8 kernel for grouped convolutions other than depthwise, which ResNeXt is made of.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
from typing import Iterable, List, Optional

import numpy as np
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image

from ..io import atomic_open
from .contract import INPUT_NAME, DeployError, load_onnx, save_openvino_ir, short_error
from .export import resize_for_graph

__all__ = ["quantize_int8", "quantize_int8_nncf", "calibration_images", "postprocessing_nodes",
           "INT8_RUNTIMES", "NNCF_PRESETS"]

logger = logging.getLogger(__name__)
INT8_FILE = "model_int8.onnx"
INT8_IR_FILE = "model_int8.xml"
# --int8-runtime: which route writes the int8 model (nncf/OpenVINO first: the default)
INT8_RUNTIMES = ("openvino", "onnxruntime")
NNCF_PRESETS = ("performance", "mixed")


def calibration_images(cfg, num_images: int) -> List[np.ndarray]:
    """``num_images`` images evenly spread over ``cfg.DATASETS.TRAIN``, as the graph's inputs."""
    if num_images < 1:
        raise DeployError(f"--calib-images {num_images} is not valid; use a positive number (e.g. 32)")
    dicts = []
    for name in cfg.DATASETS.TRAIN:
        try:
            dicts.extend(DatasetCatalog.get(name))
        except KeyError:
            raise DeployError(f"calibration needs the training set: dataset {name!r} (DATASETS.TRAIN) "
                              "is not registered") from None
    if not dicts:
        raise DeployError(f"calibration needs training images; DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)} is empty")
    idx = np.linspace(0, len(dicts) - 1, min(num_images, len(dicts))).round().astype(int)
    out = []
    for i in idx:
        path = dicts[i]["file_name"]
        if not os.path.isfile(path):
            raise DeployError(f"calibration image {path!r} (DATASETS.TRAIN) not found")
        out.append(resize_for_graph(cfg, read_image(path, format=cfg.INPUT.FORMAT)))
    return out


class _NoPreprocessAdvice(logging.Filter):
    """Around ``quantize_static`` only: drops its advice to run shape pre-processing (cannot fix
    dynamic shapes) and its note on each bias computed in the graph (left in float, which is right)."""

    _KNOWN = (re.compile(r"^Expected bias '.*' to be an initializer$"),
              re.compile(r"^Bias of Gemm node '.*' is not constant\. Please exclude this node"))

    def filter(self, record):
        msg = record.getMessage()
        if "onnxruntime" in record.pathname and "pre-process" in msg:
            return False
        return not any(p.search(msg) for p in self._KNOWN)


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of images."""

    def __init__(self, images: Iterable[np.ndarray]):
        self._feeds = iter([{INPUT_NAME: x} for x in images])

    def get_next(self):
        return next(self._feeds, None)


def quantize_int8(fp32_path: str, images: List[np.ndarray], output_path: str = "") -> str:
    """Quantize an exported ``model.onnx`` on :func:`calibration_images`; writes ``output_path``
    (default ``model_int8.onnx`` beside it) atomically, the contract with ``precision: int8``."""
    import onnx  # lazy: the optional deploy extra
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    proto, contract = load_onnx(fp32_path)
    output_path = output_path or os.path.join(os.path.dirname(fp32_path), INT8_FILE)
    # only these op types: the detection tail (after the last box-head MatMul/Gemm) stays fp32
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "int8.onnx")
        quiet = _NoPreprocessAdvice()
        logging.getLogger().addFilter(quiet)
        try:
            quantize_static(proto, out, _Reader(images), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["Conv", "MatMul", "Gemm"], per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        except Exception as e:
            raise DeployError(f"int8 quantization of {fp32_path} failed: {short_error(e)}") from None
        finally:
            logging.getLogger().removeFilter(quiet)
        q = onnx.load(out)
    contract.precision = "int8"
    onnx.helper.set_model_props(q, contract.metadata())
    onnx.checker.check_model(q)
    with atomic_open(output_path, "wb") as f:
        f.write(q.SerializeToString())
    logger.info("int8 model written to %s (calibrated on %d images)", output_path, len(images))
    return output_path


# Where box coordinates, not features, enter an op: walking back from these inputs reaches the
# post-processing but no feature map (the walk stops at the layers making deltas and logits).
_COORDINATE_INPUTS = {"ROIAlign": (1, 2), "NonMaxSuppression": (0, 1), "TopK": (0,),
                      "ScatterNDUpdate": (1,), "Gather": (1,), "GatherND": (1,), "Result": (0,)}
_NETWORK_OPS = {"Convolution", "GroupConvolution", "MatMul", "Parameter", "Constant"}


def postprocessing_nodes(model) -> List[str]:
    """Names of the nodes of the exported detector as an ``openvino.Model`` that compute on boxes
    and scores rather than on features (what NNCF is told to leave in fp32)."""
    seen, stack = set(), []
    for op in model.get_ordered_ops():
        inputs = _COORDINATE_INPUTS.get(op.get_type_name())
        if inputs is None:
            continue
        if op.get_type_name() in ("TopK", "NonMaxSuppression"):
            seen.add(op.get_friendly_name())
        stack.extend(op.input_value(i).get_node() for i in inputs if i < op.get_input_size())
    while stack:
        node = stack.pop()
        name = node.get_friendly_name()
        # ShapeOf reads a shape, not values: neither it nor what feeds it is post-processing
        if node.get_type_name() in _NETWORK_OPS or node.get_type_name() == "ShapeOf" or name in seen:
            continue
        seen.add(name)
        stack.extend(node.input_value(i).get_node() for i in range(node.get_input_size()))
    return sorted(seen)


def quantize_int8_nncf(fp32_path: str, images: List[np.ndarray], output_path: str = "",
                       preset: str = "performance", subset_size: Optional[int] = None) -> str:
    """NNCF post-training int8 of an exported ``model.onnx``, written as an OpenVINO IR ``output_path``
    (default ``model_int8.xml`` beside it), the contract with ``precision: int8``; returns its path.
    ``preset``: NNCF's "performance" (symmetric activations) or "mixed" (asymmetric: for inputs
    with negative values); ``subset_size``: images NNCF takes statistics on (default all)."""
    if preset not in NNCF_PRESETS:
        raise DeployError(f"--int8-preset {preset!r} is not valid; use one of {NNCF_PRESETS}")
    if not images:
        raise DeployError("int8 calibration needs at least one image (--calib-images)")
    try:  # lazy: the optional deploy extra
        import nncf
        import openvino as ov
    except ImportError as e:
        raise DeployError(f"int8 through NNCF needs nncf and openvino ({e}); install the deploy extra: "
                          "pip install -e .[deploy] (or --int8-runtime onnxruntime)") from None

    _, contract = load_onnx(fp32_path)
    output_path = output_path or os.path.join(os.path.dirname(fp32_path), INT8_IR_FILE)
    model = ov.convert_model(fp32_path)
    ignored = postprocessing_nodes(model)
    from nncf.common.logging import nncf_logger

    level = nncf_logger.level
    nncf_logger.setLevel(logging.WARNING)  # its INFO lines name every node left out; restored after
    try:
        # NNCF's float32 sums of activations overflow on random detectors; the min/max ranges are unaffected
        with np.errstate(over="ignore"):
            q = nncf.quantize(model, nncf.Dataset(list(images), lambda x: {INPUT_NAME: x}),
                              preset=nncf.QuantizationPreset(preset), target_device=nncf.TargetDevice.CPU,
                              subset_size=int(subset_size or len(images)),
                              # validate=False: names from this graph, some of them not quantizable
                              ignored_scope=nncf.IgnoredScope(names=ignored, validate=False))
    except Exception as e:
        raise DeployError(f"NNCF int8 quantization of {fp32_path} failed: {short_error(e)}") from None
    finally:
        nncf_logger.setLevel(level)
    contract.precision = "int8"
    save_openvino_ir(q, contract, output_path)
    logger.info("int8 model (NNCF, preset %s) written to %s (calibrated on %d images, %d post-processing "
                "nodes left in fp32)", preset, output_path, len(images), len(ignored))
    return output_path
