"""resnext-det: ResNeXt (Xie et al., CVPR 2017) as a Detectron2 backbone plugin.

``import resnext_det`` registers, in detectron2's registries:

- ``BACKBONE_REGISTRY``: ``build_resnext_backbone`` (bottom-up) and
  ``build_resnext_fpn_backbone`` (with FPN);
- ``ROI_HEADS_REGISTRY``: ``ResNeXtRes5ROIHeads`` (the C4 form's res5 head).

It changes no process-wide state; ``resnext_det.filter_known_third_party_warnings()`` is the
opt-in for the known third-party warnings the command lines silence.

Config: ``resnext_det.get_cfg()`` (or ``add_resnext_config(cfg)`` on detectron2's
``get_cfg()``) adds every node the project's YAML files use.
"""
from ._warnings import filter_known_third_party_warnings, known_third_party_warnings_silenced

# detectron2 warns at import (see _warnings); silenced for these imports only
with known_third_party_warnings_silenced():
    from .config import (
        PRESETS,
        ResNeXtConfigError,
        ResNeXtSpec,
        add_resnext_config,
        get_cfg,
        get_config_file,
        resolve_resnext_spec,
    )
    from .config_plan import add_plan_config
    from . import modeling  # noqa: F401  (imported to register backbones and heads)
    from .modeling import TorchvisionBackbone, build_backbone_from_preset

__version__ = "0.1.0"
__all__ = [
    "PRESETS",
    "ResNeXtConfigError",
    "ResNeXtSpec",
    "add_resnext_config",
    "add_plan_config",
    "get_cfg",
    "get_config_file",
    "resolve_resnext_spec",
    "TorchvisionBackbone",
    "build_backbone_from_preset",
    "filter_known_third_party_warnings",
]
