"""Whole-detector ONNX export (FPN and C4 Faster R-CNN) through detectron2's ``TracingAdapter``
(docs/DEPLOY.md, "What is in the graph"). ``dynamo=False``: the dynamo exporter fails on detectron2's
detectors. The plain (un-prepared) detector is exported: the runtimes fold FrozenBN/BN themselves.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from typing import Dict, Optional

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.export import TracingAdapter
from detectron2.modeling import GeneralizedRCNN, build_model
from torch import nn

from .._warnings import known_third_party_warnings_silenced
from ..weights import load_checkpoint
from ..io import atomic_open, atomic_write_json
from .contract import INPUT_NAME, OUTPUT_NAMES, Contract, DeployError, read_contract_bytes, short_error
from .graph_fix import rewrite_empty_branch_constants
from .parity import BOX_TOL_PX, SCORE_TOL, compare_detections
from .runtimes import make_runtime
from .two_stage import TwoStageDetector

__all__ = ["export_onnx", "build_export_model", "onnx_bytes", "with_contract", "quiet_export",
           "resize_for_graph", "DEFAULT_OPSET", "MODEL_FILE"]

logger = logging.getLogger(__name__)
DEFAULT_OPSET = 17  # >= 16 for RoiAlign's coordinate_transformation_mode="half_pixel" (aligned)
MODEL_FILE = "model.onnx"


def _boxes_scores_classes(model, inputs):
    """The traced function: one image in, detections in the resized image's coordinates out."""
    inst = model.inference(inputs, do_postprocess=False)[0]
    return inst.pred_boxes.tensor, inst.scores, inst.pred_classes


@contextlib.contextmanager
def quiet_export():
    """Silence the known, harmless messages of tracing detectron2 and of the TorchScript-based exporter."""
    with known_third_party_warnings_silenced(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        # we use the TorchScript-based exporter on purpose: the dynamo one fails on these models
        warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        yield


@contextlib.contextmanager
def _stderr_held():
    """Hold file descriptor 2 while exporting: on a failure the exporter's C++ side dumps the whole
    TorchScript graph there, drowning the one-line error. Replayed on success, dropped on failure."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)  # reached on success only
        sys.stderr.write(held.read().decode(errors="replace"))


def check_exportable(cfg) -> None:
    """Settings the exported graph cannot represent: one :class:`DeployError` naming the key."""
    m = cfg.MODEL
    if m.META_ARCHITECTURE != "GeneralizedRCNN":
        raise DeployError(f"MODEL.META_ARCHITECTURE={m.META_ARCHITECTURE!r} cannot be exported: "
                          "tools/export.py exports a whole detector (GeneralizedRCNN, FPN or C4)")
    if m.LOAD_PROPOSALS or m.PROPOSAL_GENERATOR.NAME != "RPN":
        raise DeployError(f"MODEL.PROPOSAL_GENERATOR.NAME={m.PROPOSAL_GENERATOR.NAME!r} (precomputed "
                          "proposals) cannot be exported: the deployed graph must make its own "
                          "proposals (use a jointly trained detector, RESNEXT_PLAN.MODE joint)")
    for key in ("MASK_ON", "KEYPOINT_ON"):
        if m[key]:
            raise DeployError(f"MODEL.{key}=True is not supported by the export (the graph returns "
                              f"boxes, scores and classes only); set MODEL.{key} False")
    if m.DEVICE != "cpu":
        raise DeployError(f"MODEL.DEVICE={m.DEVICE!r}: export on the CPU (MODEL.DEVICE cpu)")


def build_export_model(cfg) -> nn.Module:
    """The detector of ``cfg`` with ``cfg.MODEL.WEIGHTS`` loaded (random when empty), in eval mode."""
    check_exportable(cfg)
    w = cfg.MODEL.WEIGHTS
    if w and "://" not in w and not os.path.isfile(w):
        raise FileNotFoundError(f"MODEL.WEIGHTS {w!r} not found (the trained detector to export)")
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        load_checkpoint(model, cfg, cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting a randomly initialised detector")
    return model.eval()


def onnx_bytes(model: nn.Module, image_chw: torch.Tensor, opset: int = DEFAULT_OPSET) -> bytes:
    """The serialized ONNX model (no metadata yet) of a ``GeneralizedRCNN`` or
    :class:`TwoStageDetector`, traced on one resized CHW image (height and width stay dynamic);
    DeployError when the exporter refuses it."""
    if not isinstance(model, (GeneralizedRCNN, TwoStageDetector)):
        raise DeployError(f"only a detectron2 GeneralizedRCNN (or a two-stage plan's TwoStageDetector) "
                          f"can be exported, got {type(model).__name__}")
    if opset < 16:
        raise DeployError(f"opset {opset} has no aligned RoiAlign (coordinate_transformation_mode); "
                          "use opset >= 16")
    adapter = TracingAdapter(model, [{"image": image_chw}], _boxes_scores_classes)
    adapter.eval()  # the model too: torch.onnx.export restores the mode a module had, eval here
    buf = io.BytesIO()
    dyn = {INPUT_NAME: {1: "height", 2: "width"}, **{n: {0: "detections"} for n in OUTPUT_NAMES}}
    try:
        with quiet_export(), _stderr_held(), torch.no_grad():
            torch.onnx.export(adapter, adapter.flattened_inputs, buf, opset_version=opset,
                              dynamo=False, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                              dynamic_axes=dyn, do_constant_folding=True)
    except Exception as e:
        raise DeployError(f"torch.onnx.export cannot export this detector ({type(model).__name__}, "
                          f"{type(model.backbone).__name__} backbone): {short_error(e)}") from None
    return buf.getvalue()


def _class_names(cfg):
    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        names = MetadataCatalog.get(name).get("thing_classes", None)
        if names:
            return list(names)
    return []


def export_image(cfg, image_path: Optional[str] = None) -> np.ndarray:
    """The image (HxWx3 uint8, the config's format) the export is traced and checked on:
    ``image_path``, else the test set's first when on disk, else a fixed synthetic image."""
    if image_path:
        if not os.path.isfile(image_path):
            raise FileNotFoundError(f"--image {image_path!r} not found")
        return read_image(image_path, format=cfg.INPUT.FORMAT)
    for name in cfg.DATASETS.TEST:
        try:
            first = DatasetCatalog.get(name)[0]["file_name"]
            if os.path.isfile(first):
                return read_image(first, format=cfg.INPUT.FORMAT)
        except Exception:  # not registered / not on disk: use the synthetic image
            continue
    s = max(64, int(cfg.INPUT.MIN_SIZE_TEST))
    img = np.random.default_rng(0).integers(0, 64, (s, int(s * 4 / 3), 3), dtype=np.uint8)
    img[s // 4: s // 2, s // 4: s // 2] = 230  # a bright square, something to detect
    return img


def resize_for_graph(cfg, img: np.ndarray) -> np.ndarray:
    """An HxWx3 image resized by the test-time rule, as the graph's 3xHxW float32 input."""
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    out = aug.get_transform(img).apply_image(img)
    return np.ascontiguousarray(out.astype(np.float32).transpose(2, 0, 1))


def with_contract(data: bytes, cfg, model: nn.Module, opset: int = DEFAULT_OPSET) -> bytes:
    """The exported bytes with ``cfg``'s contract in ``metadata_props``, checked by
    ``onnx.checker`` (DeployError naming the check otherwise)."""
    import onnx  # lazy: the optional deploy extra (see resnext_det.deploy.contract's note)

    proto = onnx.load_from_string(data)
    rewrite_empty_branch_constants(proto)  # no phantom detections in OpenVINO (see graph_fix)
    size_div = int(getattr(model.backbone, "size_divisibility", 0) or 0)
    contract = Contract.from_cfg(cfg, size_div, _class_names(cfg), opset, meta_architecture=type(model).__name__)
    onnx.helper.set_model_props(proto, contract.metadata())
    proto.producer_name, proto.doc_string = "resnext_det", "ResNeXt Faster R-CNN (resnext_det tools/export.py)"
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise DeployError(f"onnx.checker rejects the exported graph: {short_error(e)}") from None
    return proto.SerializeToString()


def verify_against_eager(model, data: bytes, images, runtime: str = "onnxruntime",
                         box_tol: float = BOX_TOL_PX, score_tol: float = SCORE_TOL) -> Dict:
    """The worst differences of the exported bytes vs the eager model on each CHW image; DeployError
    naming the image size and the difference when they disagree."""
    runner = make_runtime(runtime, data, precision="fp32")
    worst = {"max_box_diff": 0.0, "max_score_diff": 0.0, "detections": []}
    for image in images:
        with torch.no_grad():
            ref = tuple(t.numpy() for t in _boxes_scores_classes(model, [{"image": image}]))
        got = runner.run(image.numpy())
        cmp = compare_detections(ref, got, box_tol, score_tol)
        if not cmp["ok"]:
            raise DeployError(f"the exported graph ({runtime}) disagrees with eager on a "
                              f"{tuple(image.shape[1:])} image: {cmp['why']}")
        worst["max_box_diff"] = max(worst["max_box_diff"], cmp["max_box_diff"])
        worst["max_score_diff"] = max(worst["max_score_diff"], cmp["max_score_diff"])
        worst["detections"].append(cmp["count_ref"])
    return worst


def export_onnx(cfg, output_dir: str, *, model: Optional[nn.Module] = None, image_path: Optional[str] = None,
                opset: int = DEFAULT_OPSET, filename: str = MODEL_FILE) -> Dict:
    """Export the detector of ``cfg`` (or ``model``, already built) to ``output_dir/model.onnx`` with
    its contract, after ``onnx.checker`` and a comparison with eager on the export image and an odd
    size; returns the report (path, contract, parity, size), also written to ``model.export.json``.
    Each failed step raises one :class:`DeployError` line."""
    model = build_export_model(cfg) if model is None else model.eval()
    image = torch.as_tensor(resize_for_graph(cfg, export_image(cfg, image_path)))
    data = with_contract(onnx_bytes(model, image, opset), cfg, model, opset)
    h, w = image.shape[1:]
    odd = torch.nn.functional.interpolate(image[None], size=(max(33, h * 3 // 4) | 1, max(33, w * 3 // 4) | 1),
                                          mode="bilinear", align_corners=False)[0].round()
    parity = verify_against_eager(model, data, [image, odd])
    path = os.path.join(output_dir, filename)
    with atomic_open(path, "wb") as f:
        f.write(data)
    report = {"path": path, "bytes": len(data), "opset": opset, "export_image_hw": [int(h), int(w)],
              "parity_onnxruntime_vs_eager": parity,
              "contract": {k: v for k, v in read_contract_bytes(data).__dict__.items() if k != "config"}}
    atomic_write_json(os.path.join(output_dir, os.path.splitext(filename)[0] + ".export.json"),
                      report, indent=2)
    logger.info("Exported %s (%.1f MB): %s detections on the export image, max box diff %.2g px, "
                "max score diff %.2g vs eager", path, len(data) / 1e6, parity["detections"],
                parity["max_box_diff"], parity["max_score_diff"])
    return report
