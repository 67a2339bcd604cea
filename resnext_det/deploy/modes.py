"""The deployed detector's speed modes by name ("openvino-static", "openvino-int8", ...) as predictors
a timing loop can call: the one definition for ``benchmarks.measure_deploy``, the benchmark tool and
the records they write (``results.paths[].mode``).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional

from .contract import DeployError
from .predictor import DeployedPredictor

__all__ = ["DEPLOY_MODES", "RAW_SUFFIX", "build_predictors", "mode_precision", "runtime_modes", "raw_mode",
           "wrapped_mode"]

# mode -> (which file: fp32 / int8 (NNCF's model_int8.xml or a QDQ .onnx), runtime, DeployedPredictor options)
DEPLOY_MODES = {
    "onnxruntime": ("fp32", "onnxruntime", {}),
    "onnxruntime-spin": ("fp32", "onnxruntime", {"allow_spinning": True}),
    "onnxruntime-nospin": ("fp32", "onnxruntime", {"allow_spinning": False}),
    "onnxruntime-int8": ("int8", "onnxruntime", {}),
    "openvino": ("fp32", "openvino", {"shape_mode": "dynamic"}),
    "openvino-static": ("fp32", "openvino", {"shape_mode": "static"}),
    "openvino-bf16": ("fp32", "openvino", {"shape_mode": "dynamic", "precision": "bf16"}),
    "openvino-int8": ("int8", "openvino", {"shape_mode": "dynamic"}),
    "openvino-int8-static": ("int8", "openvino", {"shape_mode": "static"}),
}
#: appended to a runtime's mode for the bare runtime call on the same graph: the ratio is the wrapper's overhead
RAW_SUFFIX = "-raw"


def runtime_modes(runtimes: Iterable[str], bf16: bool = False, int8: bool = False) -> List[str]:
    """The modes that time each runtime on one export: every runtime in fp32, ``openvino-bf16``
    where OpenVINO is among them and ``bf16`` (the CPU has it natively), and each runtime on the
    int8 export where ``int8``."""
    runtimes = list(runtimes)
    modes = list(runtimes)
    if bf16 and "openvino" in runtimes:
        modes.append("openvino-bf16")
    if int8:
        modes += [f"{r}-int8" for r in runtimes]
    return modes


def mode_precision(mode: str) -> str:
    """The compute precision ``mode`` asks its runtime for ("fp32" unless the mode names another)."""
    return DEPLOY_MODES[mode][2].get("precision", "fp32")


def raw_mode(mode: str) -> str:
    """The name of the bare runtime call beside ``mode``."""
    return mode + RAW_SUFFIX


def wrapped_mode(mode: str) -> Optional[str]:
    """The mode whose bare runtime call ``mode`` is, or None when ``mode`` is no bare call."""
    return mode[:-len(RAW_SUFFIX)] if mode.endswith(RAW_SUFFIX) else None


def build_predictors(fp32_path: str, int8_path: Optional[str] = None, modes: Optional[Iterable[str]] = None,
                     input_format: str = "BGR", num_threads: Optional[int] = None,
                     precision: str = "fp32") -> Dict[str, DeployedPredictor]:
    """One :class:`DeployedPredictor` per mode (default: those the given files allow; a mode naming its
    own precision only when asked for); ``precision`` applies where the mode names none."""
    if modes is None:
        ir = bool(int8_path) and int8_path.endswith(".xml")  # an OpenVINO IR: ONNX Runtime cannot read it
        modes = [m for m, (f, runtime, options) in DEPLOY_MODES.items() if "precision" not in options
                 and (f == "fp32" or (int8_path and not (ir and runtime == "onnxruntime")))]
    out = {}
    for mode in modes:
        if mode not in DEPLOY_MODES:
            raise DeployError(f"deploy mode {mode!r} is not known; use one of {', '.join(DEPLOY_MODES)}")
        which, runtime, options = DEPLOY_MODES[mode]
        if which == "int8" and not int8_path:
            raise DeployError(f"deploy mode {mode!r} needs the int8 model (tools/export.py --int8)")
        out[mode] = DeployedPredictor(int8_path if which == "int8" else fp32_path, runtime=runtime,
                                      num_threads=num_threads, input_format=input_format,
                                      **{"precision": precision, **options})
    return out
