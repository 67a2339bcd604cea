"""Known third-party warnings that a user of this project can do nothing about, silenced
narrowly: each by category, the module it is attributed to and its message. Nothing else is
filtered; a new warning still shows.

Installed once by ``import resnext_det`` (before detectron2 is imported, since some fire
at import time).
"""
import warnings

__all__ = ["KNOWN_THIRD_PARTY_WARNINGS", "filter_known_third_party_warnings"]

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


def filter_known_third_party_warnings() -> None:
    """Install the filters of :data:`KNOWN_THIRD_PARTY_WARNINGS` (idempotent)."""
    for category, module, message, _why in KNOWN_THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
