"""ImageNet weights from every source (torchvision, timm, Caffe2 ``.pkl``, detectron2, Torch7 ``.t7``),
loaded safely into detectron2 names and checked against the config's input format."""
from .checkpointer import (InputFormatMismatchError, LoadReport, ResNeXtCheckpointer, check_input_format,
                           load_checkpoint, make_checkpointer, meta_from_cfg)
from .safe_io import ForbiddenGlobalError, RestrictedUnpickler, WeightsError, safe_load, sniff_format
from .sources import (INPUT_CONVENTIONS, convert_to_detectron2, infer_architecture, read_checkpoint,
                      save_converted)

__all__ = ["ResNeXtCheckpointer", "LoadReport", "InputFormatMismatchError", "check_input_format",
           "load_checkpoint", "make_checkpointer", "meta_from_cfg", "WeightsError", "ForbiddenGlobalError",
           "RestrictedUnpickler", "safe_load", "sniff_format", "INPUT_CONVENTIONS", "convert_to_detectron2",
           "infer_architecture", "read_checkpoint", "save_converted"]
