"""The two CPU inference runtimes behind one interface, ``run(image_chw) -> (boxes, scores, classes)``,
with one thread per physical core this process may use (not ``os.cpu_count()``: more threads than
cores wait on each other). ONNX Runtime's ``allow_spinning`` saves a wake-up per operator on an idle
machine and burns the cores others need on a busy one. OpenVINO's precision is always set: its CPU
plugin silently computes in bf16 on AVX512-BF16/AMX CPUs otherwise; its ``shape_mode`` "dynamic"
compiles once, "static" per input shape met, keeping the last few (LRU).
"""
from __future__ import annotations

import collections
import logging
import os
from typing import Optional, Tuple

import numpy as np

from ..hardware import available_cores
from . import measured
from .contract import INPUT_NAME, OUTPUT_NAMES, DeployError
from .graph_fix import empty_branch_constants_ir, rewrite_empty_branch_constants

__all__ = ["RUNTIMES", "RUNTIME_PRECISIONS", "SHAPE_MODES", "make_runtime", "OnnxRuntimeRunner", "OpenVINORunner"]

logger = logging.getLogger(__name__)
RUNTIMES = ("onnxruntime", "openvino")
# "default" = whatever the runtime picks by itself (OpenVINO: bf16 on native-bf16 CPUs)
RUNTIME_PRECISIONS = ("fp32", "bf16", "default")
SHAPE_MODES = ("dynamic", "static")
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
# compiled shapes kept in static mode: the contract's resize gives few sizes (landscape/portrait)
STATIC_CACHE_SIZE = 4


def _threads(num_threads: Optional[int]) -> int:
    if num_threads is None:
        return available_cores()
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) or num_threads < 1:
        raise DeployError(f"num_threads={num_threads!r} is not valid; use a positive integer "
                          "or None (the physical cores available)")
    return int(num_threads)


class OnnxRuntimeRunner:
    """ONNX Runtime CPU session on a model file or bytes; ``precision`` "fp32"/"default" only (no
    reduced-precision mode for fp32 graphs); options as :func:`make_runtime` takes them."""

    name = "onnxruntime"

    def __init__(self, model, num_threads: Optional[int] = None, precision: str = "fp32",
                 allow_spinning: Optional[bool] = None):
        import onnxruntime as ort  # lazy: the optional deploy extra (a user may install one runtime only)

        if precision not in ("fp32", "default"):
            raise DeployError(f"precision={precision!r} is not available in ONNX Runtime's CPU "
                              "provider; use 'fp32' (or runtime='openvino' for bf16, or an --int8 export)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = _threads(num_threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: its per-node shape-inference warnings are noise
        if allow_spinning is None:
            allow_spinning = measured.default_option("onnxruntime_allow_spinning")[0]
        if not isinstance(allow_spinning, bool):
            raise DeployError(f"allow_spinning={allow_spinning!r} is not valid; use True, False or "
                              "None (the measured default)")
        for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
            opts.add_session_config_entry(key, "1" if allow_spinning else "0")
        self.session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
        self.precision_used = "fp32"  # int8 exports: quantized operators, fp32 elsewhere
        self.num_threads = opts.intra_op_num_threads
        self.allow_spinning = allow_spinning

    def describe(self) -> str:
        """The settings in effect, for log lines and records."""
        return f"{self.num_threads} threads, spinning {'on' if self.allow_spinning else 'off'}"

    def run(self, image: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The detector graph on one 3xHxW float32 image: (boxes, scores, classes)."""
        return tuple(self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: image}))

    def run_all(self, feeds):
        """Any graph: all outputs, in graph order, for ``{input name: array}``."""
        return self.session.run(None, feeds)


class OpenVINORunner:
    """OpenVINO CPU compiled model on a model file or ONNX bytes; options as :func:`make_runtime`,
    methods as :class:`OnnxRuntimeRunner`'s."""

    name = "openvino"

    def __init__(self, model, num_threads: Optional[int] = None, precision: str = "fp32",
                 shape_mode: Optional[str] = None, cache_size: int = STATIC_CACHE_SIZE,
                 cache_dir: Optional[str] = None):
        import openvino as ov  # lazy: the optional deploy extra (a user may install one runtime only)

        if precision not in RUNTIME_PRECISIONS:
            raise DeployError(f"precision={precision!r} is not valid; use one of {RUNTIME_PRECISIONS}")
        if shape_mode is None:
            shape_mode = measured.default_option("openvino_shape_mode")[0]
        if shape_mode not in SHAPE_MODES:
            raise DeployError(f"shape_mode={shape_mode!r} is not valid; use 'dynamic' (one compile, any "
                              "size) or 'static' (a compile per image size, cached)")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
            raise DeployError(f"cache_size={cache_size!r} is not valid; use a positive integer")
        self.core = ov.Core()
        self.config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": _threads(num_threads)}
        if precision != "default":
            self.config["INFERENCE_PRECISION_HINT"] = _OV_PRECISION[precision]
        if cache_dir is not None:
            if not isinstance(cache_dir, (str, os.PathLike)) or (os.path.exists(cache_dir) and not os.path.isdir(cache_dir)):
                raise DeployError(f"cache_dir={cache_dir!r} is not a folder; give a folder path (made if "
                                  "absent) or None (no compiled-model cache)")
            os.makedirs(cache_dir, exist_ok=True)
            self.config["CACHE_DIR"] = os.fspath(cache_dir)
        self.model = _read_openvino_model(self.core, model)
        self.shape_mode = shape_mode
        self.cache_size = cache_size
        self.compiles = 0
        self._said_full = False
        # static mode: input shape -> (compiled model, infer request), most recent last
        self._static = collections.OrderedDict()
        # the dynamic model: always compiled (the precision in effect is read from it)
        self.compiled, self.request = self._compile(self.model)
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision_used = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(
            getattr(hint, "get_type_name", lambda: str(hint))(), str(hint))
        self.num_threads = self.config["INFERENCE_NUM_THREADS"]
        if shape_mode == "static":
            self.compiled = self.request = None  # not used: free its memory

    def _compile(self, model):
        compiled = self.core.compile_model(model, "CPU", self.config)
        self.compiles += 1
        return compiled, compiled.create_infer_request()

    def _for_shapes(self, feeds):
        """(compiled, request) for the feeds' input shapes (static mode), compiling on a miss."""
        key = tuple(sorted((name, tuple(int(d) for d in np.shape(x))) for name, x in feeds.items()))
        hit = self._static.get(key)
        if hit is not None:
            self._static.move_to_end(key)
            return hit
        # reshape the one read model (compile_model copies it), then compile for this size
        self.model.reshape({name: list(shape) for name, shape in key})
        entry = self._compile(self.model)
        self._static[key] = entry
        if len(self._static) > self.cache_size:
            self._static.popitem(last=False)
            if not self._said_full:  # once: the cache is too small for the sizes met
                self._said_full = True
                logger.info("OpenVINO static shapes: more than %d input sizes met, compiling per new "
                            "size (shape_mode='dynamic' compiles once)", self.cache_size)
        return entry

    def describe(self) -> str:
        return f"{self.num_threads} threads, {self.shape_mode} shapes"

    def _infer(self, feeds):
        compiled, request = (self.compiled, self.request) if self.shape_mode == "dynamic" \
            else self._for_shapes(feeds)
        return compiled, request.infer(feeds)

    def run(self, image: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        compiled, res = self._infer({INPUT_NAME: image})
        return tuple(np.asarray(res[compiled.output(n)]) for n in OUTPUT_NAMES)

    def run_all(self, feeds):
        compiled, res = self._infer(feeds)
        return [np.asarray(res[o]) for o in compiled.outputs]


def _read_openvino_model(core, model):
    """``core.read_model`` of an ONNX file or bytes, or an IR, without the zero-element branch
    constants that OpenVINO turns into phantom detections (:mod:`.graph_fix`): an ONNX graph
    exported before the rewrite is rewritten here; such an IR cannot be, and is refused."""
    is_bytes = isinstance(model, (bytes, bytearray))
    if is_bytes or not str(model).endswith(".xml"):
        import onnx

        proto = onnx.load_from_string(bytes(model)) if is_bytes else onnx.load(model)
        if rewrite_empty_branch_constants(proto):
            if not is_bytes:
                logger.info("%s: exported before empty-branch constants were rewritten; rewritten at "
                            "load for OpenVINO (re-export with tools/export.py to skip this)", model)
            model, is_bytes = proto.SerializeToString(), True
        return core.read_model(model=model) if is_bytes else core.read_model(model)
    read = core.read_model(model)
    broken = empty_branch_constants_ir(read)
    if broken:
        raise DeployError(f"{model}: this OpenVINO IR was converted from a graph exported before empty "
                          f"NMS results were rewritten ({', '.join(broken)}); OpenVINO would give images "
                          "with nothing to detect the previous image's detections. Re-export it: "
                          "python tools/export.py --config-file CFG --output DIR --int8 MODEL.WEIGHTS W")
    return read


def make_runtime(runtime: str, model, num_threads: Optional[int] = None, precision: str = "fp32",
                 **options):
    """One runner of ``model``: ONNX path or bytes, or an IR ``.xml`` (OpenVINO); ``precision``: "fp32",
    "bf16" (OpenVINO) or "default". ``options`` (None: the measured default for this CPU kind):
    ``allow_spinning`` (ONNX Runtime); ``shape_mode``, ``cache_size`` (compiled shapes kept in static
    mode) and ``cache_dir`` (OpenVINO's compiled-model cache) for OpenVINO."""
    runners = {"onnxruntime": OnnxRuntimeRunner, "openvino": OpenVINORunner}
    own = {"onnxruntime": ("allow_spinning",), "openvino": ("shape_mode", "cache_size", "cache_dir")}
    if runtime not in runners:
        raise DeployError(f"runtime={runtime!r} is not valid; use one of {RUNTIMES}")
    options = {k: v for k, v in options.items() if v is not None}
    foreign = sorted(set(options) - set(own[runtime]))
    if foreign:
        raise DeployError(f"option(s) {', '.join(foreign)} do not apply to runtime {runtime!r}; its "
                          f"options are {', '.join(own[runtime])}")
    try:
        return runners[runtime](model, num_threads, precision, **options)
    except ImportError as e:
        raise DeployError(f"runtime {runtime!r} is not installed ({e}); install the deploy extra: "
                          "pip install -e .[deploy]") from None
