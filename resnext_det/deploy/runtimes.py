"""The two CPU inference runtimes behind one small interface: ``run(image_chw) -> (boxes,
scores, classes)`` on an exported detector (see :mod:`.contract` for the graph's I/O).

- ONNX Runtime: CPU execution provider, all graph optimisations; fp32 as stored (an int8
  export runs its quantized operators).
- OpenVINO: ``PERFORMANCE_HINT=LATENCY``. Its CPU plugin silently computes in bf16 on CPUs
  with AVX512-BF16/AMX unless told otherwise, so the precision is always set explicitly
  (``fp32`` by default, for parity) and the precision in effect is logged.
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Tuple

import numpy as np

from .contract import INPUT_NAME, OUTPUT_NAMES, DeployError

__all__ = ["RUNTIMES", "PRECISIONS", "make_runtime"]

logger = logging.getLogger(__name__)
RUNTIMES = ("onnxruntime", "openvino")
# "default" = whatever the runtime picks by itself (OpenVINO: bf16 on native-bf16 CPUs)
PRECISIONS = ("fp32", "bf16", "default")
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def _threads(num_threads: Optional[int]) -> int:
    if num_threads is None:
        return os.cpu_count() or 1
    if int(num_threads) < 1:
        raise DeployError(f"num_threads={num_threads!r} is not valid; use a positive integer "
                          "or None (all cores)")
    return int(num_threads)


class OnnxRuntimeRunner:
    """ONNX Runtime CPU session on a model file or serialized bytes.

    Args:
        model: path or bytes.
        num_threads: intra-op threads (None: all cores).
        precision: only "fp32"/"default" (ONNX Runtime's CPU provider has no reduced-precision
            mode for fp32 graphs; export with --int8 for a quantized graph).
    """

    name = "onnxruntime"

    def __init__(self, model, num_threads: Optional[int] = None, precision: str = "fp32"):
        # lazy: the optional deploy extra, and a user may install one runtime only
        # (resnext_det.deploy.contract's note has the measured import times)
        import onnxruntime as ort

        if precision not in ("fp32", "default"):
            raise DeployError(f"precision={precision!r} is not available in ONNX Runtime's CPU "
                              "provider; use 'fp32' (or runtime='openvino' for bf16, or an --int8 export)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = _threads(num_threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: its per-node shape-inference warnings are noise
        self.session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
        self.precision_used = "fp32"  # int8 exports: quantized operators, fp32 elsewhere
        self.num_threads = opts.intra_op_num_threads

    def run(self, image: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The detector graph on one 3xHxW float32 image: (boxes, scores, classes)."""
        return tuple(self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: image}))

    def run_all(self, feeds):
        """Any graph: all outputs, in graph order, for ``{input name: array}``."""
        return self.session.run(None, feeds)


class OpenVINORunner:
    """OpenVINO CPU compiled model on a model file or serialized ONNX bytes.

    Args:
        model: path or bytes.
        num_threads: inference threads (None: all cores).
        precision: "fp32" (INFERENCE_PRECISION_HINT f32), "bf16", or "default" (OpenVINO's
            own choice: bf16 on AVX512-BF16/AMX CPUs, f32 elsewhere).
    """

    name = "openvino"

    def __init__(self, model, num_threads: Optional[int] = None, precision: str = "fp32"):
        # lazy: the optional deploy extra, and a user may install one runtime only
        # (resnext_det.deploy.contract's note has the measured import times)
        import openvino as ov

        if precision not in PRECISIONS:
            raise DeployError(f"precision={precision!r} is not valid; use one of {PRECISIONS}")
        core = ov.Core()
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": _threads(num_threads)}
        if precision != "default":
            config["INFERENCE_PRECISION_HINT"] = _OV_PRECISION[precision]
        net = core.read_model(model=model) if isinstance(model, (bytes, bytearray)) else core.read_model(model)
        self.compiled = core.compile_model(net, "CPU", config)
        self.request = self.compiled.create_infer_request()
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision_used = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(
            getattr(hint, "get_type_name", lambda: str(hint))(), str(hint))
        self.num_threads = config["INFERENCE_NUM_THREADS"]

    def run(self, image: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The detector graph on one 3xHxW float32 image: (boxes, scores, classes)."""
        res = self.request.infer({INPUT_NAME: image})
        return tuple(np.asarray(res[self.compiled.output(n)]) for n in OUTPUT_NAMES)

    def run_all(self, feeds):
        """Any graph: all outputs, in graph order, for ``{input name: array}``."""
        res = self.request.infer(feeds)
        return [np.asarray(res[o]) for o in self.compiled.outputs]


def make_runtime(runtime: str, model, num_threads: Optional[int] = None, precision: str = "fp32"):
    """One runner (see the module docstring).

    Args:
        runtime: "onnxruntime" or "openvino".
        model: ONNX file path or serialized bytes.
        num_threads: threads (None: all cores).
        precision: "fp32", "bf16" (OpenVINO) or "default".
    """
    runners = {"onnxruntime": OnnxRuntimeRunner, "openvino": OpenVINORunner}
    if runtime not in runners:
        raise DeployError(f"runtime={runtime!r} is not valid; use one of {RUNTIMES}")
    try:
        return runners[runtime](model, num_threads, precision)
    except ImportError as e:
        raise DeployError(f"runtime {runtime!r} is not installed ({e}); install the deploy extra: "
                          "pip install -e .[deploy]") from None
