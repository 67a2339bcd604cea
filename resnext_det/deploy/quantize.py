"""Post-training static int8 of an exported detector (ONNX Runtime's ``quantize_static``).

Calibrated on images of the training set, pre-processed by the export's own contract.
Quantized: the convolutions and the box head's matrix products (weights per output
channel, symmetric int8; activations int8 from MinMax calibration), in QDQ form, so the
same file runs in ONNX Runtime and in OpenVINO (which maps QDQ onto its int8 kernels,
VNNI/AMX where present). Left in fp32: everything after the box head (box decoding, NMS,
top-k), where int8 would move boxes for no speed.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
from typing import Iterable, List

import numpy as np
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image

from ..io import atomic_open
from .contract import INPUT_NAME, DeployError, load_onnx
from .export import resize_for_graph

__all__ = ["quantize_int8", "calibration_images"]

logger = logging.getLogger(__name__)
INT8_FILE = "model_int8.onnx"


def calibration_images(cfg, num_images: int) -> List[np.ndarray]:
    """``num_images`` images of ``cfg.DATASETS.TRAIN`` (evenly spread over the set), resized
    per the test-time rule, as 3xHxW float32 arrays in the config's format."""
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
    """Installed on the root logger around the one ``quantize_static`` call only. Drops ONNX
    Runtime's quantizer messages that do not apply here: its advice to run its shape
    pre-processing (the exported graph has dynamic shapes that step cannot fix), and its note
    on each conv/GEMM whose bias is computed in the graph (FrozenBN folded by the exporter): it
    leaves that bias in float, which is right."""

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
        self._it = iter(list(images))

    def get_next(self):
        x = next(self._it, None)
        return None if x is None else {INPUT_NAME: x}

    def rewind(self):  # pragma: no cover - not used by MinMax
        pass


def quantize_int8(fp32_path: str, images: List[np.ndarray], output_path: str = "") -> str:
    """Quantize an exported fp32 model; writes ``model_int8.onnx`` beside it (atomically).

    Args:
        fp32_path: ``model.onnx`` written by :func:`resnext_det.deploy.export_onnx`.
        images: calibration images (3xHxW float32, see :func:`calibration_images`).
        output_path: destination (default: ``model_int8.onnx`` in the same folder).

    Returns:
        the path written. The contract metadata is carried over with ``precision: int8``.
    """
    # lazy: the optional deploy extra (see resnext_det.deploy.contract's note)
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    proto, contract = load_onnx(fp32_path)
    output_path = output_path or os.path.join(os.path.dirname(fp32_path), INT8_FILE)
    # the detection tail (after the last box-head MatMul/Gemm) stays fp32: only these op types
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
            raise DeployError(f"int8 quantization of {fp32_path} failed: {type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
        finally:
            logging.getLogger().removeFilter(quiet)
        q = onnx.load(out)
    contract.precision = "int8"
    del q.metadata_props[:]
    for k, v in contract.metadata().items():
        e = q.metadata_props.add()
        e.key, e.value = k, v
    onnx.checker.check_model(q)
    with atomic_open(output_path, "wb") as f:
        f.write(q.SerializeToString())
    logger.info("int8 model written to %s (calibrated on %d images)", output_path, len(images))
    return output_path
