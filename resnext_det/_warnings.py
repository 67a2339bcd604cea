"""Known third-party warnings that a user of this project can do nothing about, silenced
narrowly: each by category, the module it is attributed to and its message. Nothing else is
filtered; a new warning still shows.

Installed once by ``import resnext_det`` (before detectron2 is imported, since some fire
at import time).
"""
import logging
import re
import warnings

__all__ = ["KNOWN_THIRD_PARTY_WARNINGS", "KNOWN_THIRD_PARTY_LOG_WARNINGS", "filter_known_third_party_warnings"]

# (category, module regex, message regex, why it is not ours to fix)
KNOWN_THIRD_PARTY_WARNINGS = (
    # detectron2 decorates helpers with @torch.jit.script at import time (structures, layers)
    (FutureWarning, r"torch\.jit\._script", r"`torch\.jit\.script` is deprecated",
     "detectron2 uses torch.jit.script at import"),
    # detectron2.model_zoo imports pkg_resources (setuptools<81 keeps it, and warns)
    (UserWarning, r"detectron2\.model_zoo\.model_zoo", r"pkg_resources is deprecated",
     "detectron2.model_zoo imports pkg_resources"),
    # detectron2's anchor generator calls torch.meshgrid without indexing= (its result is "ij")
    (UserWarning, r"torch\.functional", r"torch\.meshgrid: in an upcoming release",
     "detectron2's anchor generator"),
)


# (logger name, message regex, why): warnings sent through ``logging`` rather than ``warnings``
KNOWN_THIRD_PARTY_LOG_WARNINGS = (
    # detectron2's ROIPooler asks torch.fx whether it is tracing; torch logs this once
    ("torch.fx._symbolic_trace", r"is_fx_tracing will return true",
     "detectron2's ROIPooler calls torch.fx's is_fx_tracing"),
    # torch logs this when something imports torch.utils.cpp_extension on a machine without CUDA
    ("torch.utils.cpp_extension", r"No CUDA runtime is found", "torch's cpp_extension import"),
    # onnxruntime.quantization (root logger) on every conv/GEMM whose bias is computed in the
    # graph (FrozenBN folded by the exporter): it leaves that bias in float, which is right
    ("", r"^Expected bias '.*' to be an initializer$", "ONNX Runtime static quantization"),
    ("", r"^Bias of Gemm node '.*' is not constant\. Please exclude this node", "ONNX Runtime static quantization"),
)


class _DropKnownRecord(logging.Filter):
    """A logger filter dropping only records whose message matches ``pattern``."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def filter_known_third_party_warnings() -> None:
    """Install the filters of :data:`KNOWN_THIRD_PARTY_WARNINGS` and
    :data:`KNOWN_THIRD_PARTY_LOG_WARNINGS` (idempotent)."""
    for category, module, message, _why in KNOWN_THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, message, _why in KNOWN_THIRD_PARTY_LOG_WARNINGS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownRecord) and f.pattern.pattern == message for f in logger.filters):
            logger.addFilter(_DropKnownRecord(message))
