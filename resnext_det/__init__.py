"""resnext-det: ResNeXt (Xie et al., CVPR 2017) as a Detectron2 backbone plugin. ``import resnext_det``
registers ``build_resnext_backbone``, ``build_resnext_fpn_backbone`` and ``ResNeXtRes5ROIHeads`` in
detectron2's registries and changes no process-wide state; :func:`get_cfg` adds every config node the YAMLs use.
"""
from ._warnings import filter_known_third_party_warnings, known_third_party_warnings_silenced

# detectron2 warns at import (see _warnings); silenced for these imports only
with known_third_party_warnings_silenced():
    from .config import (PRESETS, ResNeXtConfigError, ResNeXtSpec, add_resnext_config, get_cfg,
                         get_config_file, resolve_resnext_spec)
    from .config_plan import add_plan_config
    from . import modeling  # noqa: F401  (imported to register backbones and heads)
    from .modeling import TorchvisionBackbone, build_backbone_from_preset

__version__ = "0.1.0"
__all__ = ["PRESETS", "ResNeXtConfigError", "ResNeXtSpec", "add_resnext_config", "add_plan_config",
           "get_cfg", "get_config_file", "resolve_resnext_spec", "TorchvisionBackbone",
           "build_backbone_from_preset", "filter_known_third_party_warnings"]
