"""Python API for custom detectors: ResNeXt backbones without a YAML file, for detectron2 or for
torchvision's ``FasterRCNN`` (example: README.md, "Custom detectors (Python API)").
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Optional, Sequence

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import Backbone

from ..config import get_cfg
from .backbone import build_resnext_backbone, build_resnext_fpn_backbone

__all__ = ["build_backbone_from_preset", "TorchvisionBackbone"]


def build_backbone_from_preset(preset: str = "X-50-32x4d", *, fpn: bool = False,
                               out_features: Optional[Sequence[str]] = None, norm: str = "FrozenBN",
                               freeze_at: int = 0, fpn_out_channels: int = 256, in_channels: int = 3,
                               **resnext_options) -> Backbone:
    """A ResNeXt detectron2 ``Backbone`` (optionally with FPN) from a preset.

    Args:
        preset: a name from ``resnext_det.PRESETS`` ("X-101-32x4d", ...), or "" to use
            ``depth``/``cardinality``/``bottleneck_width`` given in ``resnext_options``.
        fpn: wrap the bottom-up network in detectron2's FPN (outputs p2..p6).
        out_features: bottom-up outputs (default res2..res5 with FPN, else res5).
        norm: "FrozenBN" (detection fine-tuning), "BN", "GN", "SyncBN" ...
        freeze_at: 0 trains everything; 1 freezes the stem; k freezes stem + res2..res{k}.
        resnext_options: any other ``MODEL.RESNEXT`` key in lower case, e.g. ``cardinality=8,
            block_form="split", stride_in_1x1=True``; one contradicting the preset raises
            ``ResNeXtConfigError``.
    """
    cfg = get_cfg()
    r = cfg.MODEL.RESNEXT
    r.PRESET = preset
    r.NORM = norm
    if out_features is None:
        out_features = ["res2", "res3", "res4", "res5"] if fpn else ["res5"]
    r.OUT_FEATURES = list(out_features)
    for key, value in resnext_options.items():
        if key.upper() not in r or key.upper() == "FAST":
            raise TypeError(f"build_backbone_from_preset() got an unknown option {key!r}; "
                            f"known MODEL.RESNEXT options: {sorted(k.lower() for k in r if k != 'FAST')}")
        r[key.upper()] = value
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    cfg.MODEL.FPN.IN_FEATURES = [f for f in out_features if f != "stem"]
    cfg.MODEL.FPN.OUT_CHANNELS = fpn_out_channels
    build = build_resnext_fpn_backbone if fpn else build_resnext_backbone
    return build(cfg, ShapeSpec(channels=in_channels))


class TorchvisionBackbone(nn.Module):
    """Adapter: a detectron2 ``Backbone`` as a torchvision detection backbone: ``out_channels`` and a
    forward returning an ``OrderedDict`` of feature maps, which must share one channel count (true for
    FPN outputs, or a single bottom-up output)."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.body = backbone
        shapes = backbone.output_shape()
        self.feature_names = list(shapes)
        channels = {shapes[n].channels for n in self.feature_names}
        if len(channels) != 1:
            raise ValueError(f"torchvision FasterRCNN needs one channel count for all feature maps, got "
                             f"{ {n: shapes[n].channels for n in self.feature_names} }; use fpn=True or a "
                             "single out feature")
        self.out_channels = channels.pop()
        self.strides = [shapes[n].stride for n in self.feature_names]

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        feats = self.body(x)
        return OrderedDict((n, feats[n]) for n in self.feature_names)

    def anchor_generator(self, sizes=None, aspect_ratios=(0.5, 1.0, 2.0)):
        """A torchvision ``AnchorGenerator`` with one anchor size per feature map (8 x stride)."""
        if sizes is None:
            sizes = tuple((8 * s,) for s in self.strides)
        return AnchorGenerator(sizes=sizes, aspect_ratios=(tuple(aspect_ratios),) * len(sizes))

    def roi_pool(self, output_size: int = 7, sampling_ratio: int = 2):
        """A torchvision ``MultiScaleRoIAlign`` over the maps (p6 excluded, as in FPN)."""
        names = [n for n in self.feature_names if n != "p6"] or self.feature_names
        return MultiScaleRoIAlign(featmap_names=names, output_size=output_size,
                                  sampling_ratio=sampling_ratio)
