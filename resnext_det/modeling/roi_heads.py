"""C4 form: detectron2's Res5ROIHeads with a ResNeXt res5 built from ``MODEL.RESNEXT``."""
from __future__ import annotations

import dataclasses

from torch import nn

from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads

from ..config import resolve_resnext_spec
from .backbone import make_resnext_stage

__all__ = ["ResNeXtRes5ROIHeads"]


@ROI_HEADS_REGISTRY.register()
class ResNeXtRes5ROIHeads(Res5ROIHeads):
    """The ResNet paper's C4 head: RoI pooling on res4, then a ResNeXt res5 stage made by
    :func:`make_resnext_stage`, as the backbone's stages are, so C, d, block form, norm and stride
    placement always agree with the backbone. Parameter names are detectron2's."""

    @classmethod
    def _build_res5_block(cls, cfg):
        # The RoI head's res5 always downsamples (stride 2) and is never dilated.
        spec = dataclasses.replace(resolve_resnext_spec(cfg), res5_dilation=1)
        in_channels = spec.stage_channels(4)[1]
        blocks = make_resnext_stage(spec, 5, in_channels, first_stride=2)
        return nn.Sequential(*blocks), blocks[-1].out_channels
