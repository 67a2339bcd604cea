"""``DeployedPredictor``: an exported detector in ONNX Runtime or OpenVINO, called like detectron2's
``DefaultPredictor`` on the same images (docs/DEPLOY.md). The export's contract is applied here
(``ResizeShortestEdge``; normalisation and padding are in the graph), then ``detector_postprocess``.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional

import numpy as np
import torch

from detectron2.data import transforms as T
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from .contract import INPUT_FORMATS, DeployError, expected_image_message, model_format, read_contract, short_error
from .measured import choose_runtime
from .runtimes import RUNTIMES, make_runtime

__all__ = ["DeployedPredictor"]

logger = logging.getLogger(__name__)


class DeployedPredictor:
    """An exported detector (``model.onnx``, ``model_int8.onnx``, or ``model_int8.xml``: OpenVINO only)
    run by an inference runtime.

    Args:
        runtime: "onnxruntime", "openvino", or None / "auto": the runtime measured fastest on this
            CPU kind (:func:`.measured.choose_runtime`), logged and kept on ``self.runtime_reason``.
        num_threads: None = the physical cores available.
        precision: "fp32" (default, parity with eager), "bf16" (OpenVINO) or "default" (the
            runtime's choice); the one in effect is ``self.precision_used``.
        input_format: channel order of the images given to ``__call__``: "BGR" (default) or "RGB",
            flipped to the model's INPUT.FORMAT when it differs (``run_resized`` and ``inference``
            take the model's format).
        **runtime_options: see :func:`.runtimes.make_runtime` (None = the measured default).

    Raises FileNotFoundError / DeployError for a missing, empty, truncated or foreign file, or
    another ``input_format``.
    """

    def __init__(self, path: str, runtime: Optional[str] = None, num_threads: Optional[int] = None,
                 precision: str = "fp32", input_format: str = "BGR", **runtime_options):
        self.path = path
        c = self.contract = read_contract(path)
        runtime, self.runtime_reason = self.runtime_for(path, runtime)
        if input_format not in INPUT_FORMATS:
            raise DeployError(f"input_format={input_format!r} is not valid; use 'BGR' (the default: "
                              "cv2.imread's order, as detectron2's DefaultPredictor) or 'RGB' "
                              f"(this model's INPUT.FORMAT is {c.input_format})")
        self.input_format = input_format
        self.resize = T.ResizeShortestEdge([c.min_size_test, c.min_size_test], c.max_size_test)
        try:
            self.runner = make_runtime(runtime, path, num_threads, precision, **runtime_options)
        except DeployError:
            raise
        except Exception as e:  # the runtime refuses the graph
            raise DeployError(f"{path}: {runtime} cannot load it: {short_error(e)}") from None
        self.runtime = runtime
        self.precision_used = self.runner.precision_used
        logger.info("Deployed model %s: %s, %s, precision %s (weights %s)", path, runtime,
                    self.runner.describe(), self.precision_used, c.precision)

    @staticmethod
    def runtime_for(path: str, runtime: Optional[str]):
        """(runtime, reason): ``runtime`` when named, else an IR's OpenVINO or the one measured fastest."""
        ir = model_format(path) == "openvino_ir"
        if runtime not in (None, "auto") + RUNTIMES:
            raise DeployError(f"runtime={runtime!r} is not valid; use one of {RUNTIMES}, or None / 'auto' "
                              "(the runtime measured fastest on this CPU)")
        if ir and runtime == "onnxruntime":
            raise DeployError(f"{path}: an OpenVINO IR runs in OpenVINO only; use runtime='openvino' "
                              "(or give the .onnx export to ONNX Runtime)")
        if runtime in RUNTIMES:
            return runtime, f"runtime {runtime}: named by the caller"
        if ir:
            reason = "runtime openvino: the model is an OpenVINO IR"
            logger.info("%s: %s", path, reason)
            return "openvino", reason
        choice = choose_runtime()
        logger.info("%s: %s", path, choice.reason)
        return choice.runtime, choice.reason

    def run_resized(self, image_chw) -> Instances:
        """Detections in the coordinates of ``image_chw`` (3xHxW float, resized per the contract, in
        the model's INPUT.FORMAT)."""
        x = image_chw.numpy() if isinstance(image_chw, torch.Tensor) else np.asarray(image_chw)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 3 or x.shape[0] != 3 or min(x.shape[1:]) < 1:
            raise DeployError(f"the graph takes a 3xHxW float image, got shape {tuple(x.shape)}")
        boxes, scores, classes = self.runner.run(x)
        inst = Instances((x.shape[1], x.shape[2]))
        inst.pred_boxes = Boxes(torch.from_numpy(np.asarray(boxes, dtype=np.float32)))
        inst.scores = torch.from_numpy(np.asarray(scores, dtype=np.float32))
        inst.pred_classes = torch.from_numpy(np.asarray(classes).astype(np.int64))
        return inst

    def __call__(self, original_image: np.ndarray) -> Dict[str, Instances]:
        """``{"instances": Instances}`` of an HxWx3 uint8 image in ``self.input_format``, in its
        coordinates, as ``DefaultPredictor`` returns them."""
        img = original_image
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 \
                or img.shape[2] != 3 or min(img.shape[:2]) < 1:
            got = (f"{type(img).__name__} shape {tuple(img.shape)} dtype {img.dtype}"
                   if hasattr(img, "shape") and hasattr(img, "dtype") else type(img).__name__)
            raise DeployError(f"DeployedPredictor expects {expected_image_message(self.input_format)}; "
                              f"got {got}")
        model_format = self.contract.input_format
        if model_format not in INPUT_FORMATS:
            # a flip is the only conversion here, as in DefaultPredictor (which asserts the same)
            raise DeployError(f"{self.path}: INPUT.FORMAT {model_format!r}: DeployedPredictor's "
                              "__call__ takes RGB or BGR models only; give images already in that "
                              "format, resized, to run_resized()")
        if self.input_format != model_format:
            img = img[:, :, ::-1]
        h, w = img.shape[:2]
        resized = self.resize.get_transform(img).apply_image(img)
        inst = self.run_resized(resized.astype(np.float32).transpose(2, 0, 1))
        return {"instances": detector_postprocess(inst, h, w)}

    def inference(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        """Like ``GeneralizedRCNN.forward`` in eval mode on test-loader dicts (for
        ``inference_on_dataset``), already in the model's INPUT.FORMAT (``evaluate_exported`` checks)."""
        out = []
        for d in batched_inputs:
            inst = self.run_resized(d["image"].float())
            h, w = inst.image_size
            out.append({"instances": detector_postprocess(inst, d.get("height", h), d.get("width", w))})
        return out
