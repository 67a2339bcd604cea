"""The deployed detector's speed modes, by name, as predictors a timing loop can call: one
place that says what "openvino-static" or "openvino-int8" means, for
``python -m benchmarks.measure_deploy`` and for the benchmark tool.

    preds = build_predictors("out/model.onnx", "out/model_int8.xml", input_format="RGB")
    preds["openvino-static"](image_hwc)   # DeployedPredictor.__call__
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

from .contract import DeployError
from .predictor import DeployedPredictor

__all__ = ["DEPLOY_MODES", "build_predictors"]

# mode -> (which file: fp32 / int8, runtime, runtime options)
DEPLOY_MODES = {
    "onnxruntime": ("fp32", "onnxruntime", {}),
    "onnxruntime-spin": ("fp32", "onnxruntime", {"allow_spinning": True}),
    "onnxruntime-nospin": ("fp32", "onnxruntime", {"allow_spinning": False}),
    "openvino": ("fp32", "openvino", {"shape_mode": "dynamic"}),
    "openvino-static": ("fp32", "openvino", {"shape_mode": "static"}),
    "openvino-int8": ("int8", "openvino", {"shape_mode": "dynamic"}),
    "openvino-int8-static": ("int8", "openvino", {"shape_mode": "static"}),
}


def build_predictors(fp32_path: str, int8_path: Optional[str] = None, modes: Optional[Iterable[str]] = None,
                     input_format: str = "BGR", num_threads: Optional[int] = None,
                     precision: str = "fp32") -> Dict[str, DeployedPredictor]:
    """One :class:`DeployedPredictor` per mode.

    Args:
        fp32_path: the fp32 export (``model.onnx``).
        int8_path: the NNCF int8 IR (``model_int8.xml``); int8 modes need it.
        modes: names from :data:`DEPLOY_MODES` (default: all that the given files allow).
        input_format: the channel order of the images the predictors will be given.
        num_threads: runtime threads (None: the physical cores available).
        precision: the runtimes' compute precision (see :class:`DeployedPredictor`).
    """
    if modes is None:
        modes = [m for m, (f, _, _) in DEPLOY_MODES.items() if f == "fp32" or int8_path]
    out = {}
    for mode in modes:
        if mode not in DEPLOY_MODES:
            raise DeployError(f"deploy mode {mode!r} is not known; use one of {', '.join(DEPLOY_MODES)}")
        which, runtime, options = DEPLOY_MODES[mode]
        if which == "int8" and not int8_path:
            raise DeployError(f"deploy mode {mode!r} needs the int8 model (tools/export.py --int8)")
        out[mode] = DeployedPredictor(int8_path if which == "int8" else fp32_path, runtime=runtime,
                                      num_threads=num_threads, precision=precision,
                                      input_format=input_format, **options)
    return out
