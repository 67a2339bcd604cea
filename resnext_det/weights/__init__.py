"""ImageNet weights from every source, loaded safely and checked against the input format.

- :func:`convert_to_detectron2` / :func:`read_checkpoint` (``sources``): torchvision, timm,
  Caffe2 ``.pkl``, detectron2 and Torch7 ``.t7`` files -> detectron2 names + the input
  convention each implies (``INPUT_CONVENTIONS``).
- :func:`safe_load` (``safe_io``): weights_only torch loading, a restricted unpickler for
  ``.pkl``; :class:`WeightsError` for unusable files.
- :class:`ResNeXtCheckpointer` (``checkpointer``): detectron2's checkpointer using the above,
  with the config input-format check and a load report.
"""
from .checkpointer import (InputFormatMismatchError, LoadReport, ResNeXtCheckpointer, check_input_format,
                           load_checkpoint, make_checkpointer, meta_from_cfg)
from .safe_io import ForbiddenGlobalError, RestrictedUnpickler, WeightsError, safe_load, sniff_format
from .sources import (INPUT_CONVENTIONS, convert_to_detectron2, infer_architecture, read_checkpoint,
                      save_converted)

__all__ = ["ResNeXtCheckpointer", "LoadReport", "InputFormatMismatchError", "check_input_format",
           "load_checkpoint", "make_checkpointer", "meta_from_cfg", "WeightsError", "ForbiddenGlobalError",
           "RestrictedUnpickler", "safe_load", "sniff_format", "INPUT_CONVENTIONS", "convert_to_detectron2",
           "infer_architecture", "read_checkpoint", "save_converted"]
