"""Known third-party warnings a user can do nothing about, silenced narrowly (category, module
and message). ``import resnext_det`` silences them only during its own imports; only the
command lines (or an opting-in application) install them for the whole process.
"""
import contextlib
import logging
import re
import warnings
from typing import Iterator

__all__ = ["KNOWN_THIRD_PARTY_WARNINGS", "KNOWN_THIRD_PARTY_LOG_WARNINGS", "filter_known_third_party_warnings",
           "known_third_party_warnings_silenced"]

# (category, module regex, message regex, why it is not ours to fix)
KNOWN_THIRD_PARTY_WARNINGS = (
    (FutureWarning, r"torch\.jit\._script", r"`torch\.jit\.script` is deprecated",
     "detectron2 uses torch.jit.script at import"),
    (UserWarning, r"detectron2\.model_zoo\.model_zoo", r"pkg_resources is deprecated",
     "detectron2.model_zoo imports pkg_resources"),
    (UserWarning, r"torch\.functional", r"torch\.meshgrid: in an upcoming release",
     "detectron2's anchor generator"),
    (DeprecationWarning, r"detectron2\.evaluation\.coco_evaluation", r"The 'warn' method is deprecated",
     "detectron2's COCOEvaluator when a model predicts nothing"),
    (ResourceWarning, r"detectron2\.engine\.defaults", r"unclosed file",
     "detectron2's default_setup"),
)


# (logger name, message regex, why): warnings sent through ``logging`` rather than ``warnings``
KNOWN_THIRD_PARTY_LOG_WARNINGS = (
    ("torch.fx._symbolic_trace", r"is_fx_tracing will return true",
     "detectron2's ROIPooler calls torch.fx's is_fx_tracing"),
    ("torch.utils.cpp_extension", r"No CUDA runtime is found", "torch's cpp_extension import"),
)


class _DropKnownRecord(logging.Filter):
    """A logger filter dropping only records whose message matches ``pattern``."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def filter_known_third_party_warnings() -> list:
    """Install both tables' filters for the rest of the process (idempotent; the library itself only
    inside :func:`known_third_party_warnings_silenced`); returns the (logger, filter) pairs it added."""
    for category, module, message, _why in KNOWN_THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    added = []
    for name, message, _why in KNOWN_THIRD_PARTY_LOG_WARNINGS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownRecord) and f.pattern.pattern == message for f in logger.filters):
            f = _DropKnownRecord(message)
            logger.addFilter(f)
            added.append((logger, f))
    return added


@contextlib.contextmanager
def known_third_party_warnings_silenced() -> Iterator[None]:
    """The same filters inside the block only (``warnings.catch_warnings``: not thread-safe)."""
    with warnings.catch_warnings():
        added = filter_known_third_party_warnings()
        try:
            yield
        finally:
            for logger, f in added:
                logger.removeFilter(f)
