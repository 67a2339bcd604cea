"""ResNeXt backbones registered in detectron2's ``BACKBONE_REGISTRY``: detectron2's own :class:`ResNet`
container (stem + ``res2..res5`` stages, freezing, output bookkeeping) filled with ResNeXt blocks built
from the paper's terms. Module names are detectron2's, so detectron2 and Caffe2 checkpoints load unchanged.
"""
from __future__ import annotations

from typing import Optional

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.resnet import BasicStem

from ..config import ResNeXtConfigError, ResNeXtSpec, resolve_resnext_spec
from .blocks import BLOCK_CLASSES

__all__ = ["make_resnext_stage", "build_resnext", "build_resnext_backbone", "build_resnext_fpn_backbone"]

_STAGE_INDEX = {"stem": 1, "res2": 2, "res3": 3, "res4": 4, "res5": 5}


def make_resnext_stage(spec: ResNeXtSpec, stage_idx: int, in_channels: int, *,
                       first_stride: Optional[int] = None, norm: Optional[str] = None):
    """Stage ``stage_idx`` (2..5, a list of blocks) of a ResNeXt: the single place stages are made, for
    the backbone's res2..res5 and the C4 RoI head's res5. ``first_stride`` defaults to 1 for res2
    and a dilated res5, else 2; ``norm`` overrides ``spec.norm``."""
    bottleneck, out_channels = spec.stage_channels(stage_idx)
    dilation = spec.res5_dilation if stage_idx == 5 else 1
    if first_stride is None:
        first_stride = 1 if (stage_idx == 2 or dilation == 2) else 2
    n = spec.blocks_per_stage[stage_idx - 2]
    return ResNet.make_stage(
        BLOCK_CLASSES[spec.block_form],
        n,
        stride_per_block=[first_stride] + [1] * (n - 1),
        in_channels=in_channels,
        out_channels=out_channels,
        bottleneck_channels=bottleneck,
        num_groups=spec.cardinality,
        norm=spec.norm if norm is None else norm,
        stride_in_1x1=spec.stride_in_1x1,
        dilation=dilation,
    )


def build_resnext(spec: ResNeXtSpec, in_channels: int = 3) -> ResNet:
    """The bottom-up ResNeXt (a detectron2 ``ResNet``) of a spec; stages past the deepest output are
    not built (as detectron2 does)."""
    stem = BasicStem(in_channels=in_channels, out_channels=spec.stem_out_channels, norm=spec.norm)
    deepest = max(_STAGE_INDEX[f] for f in spec.out_features)
    stages = [make_resnext_stage(spec, i, spec.stage_channels(i - 1)[1] if i > 2 else spec.stem_out_channels)
              for i in range(2, deepest + 1)]
    return ResNet(stem, stages, out_features=list(spec.out_features), freeze_at=spec.freeze_at)


@BACKBONE_REGISTRY.register()
def build_resnext_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """Bottom-up ResNeXt from ``cfg.MODEL.RESNEXT`` (res2..res5 at strides 4/8/16/32). The C4 form
    sets ``OUT_FEATURES: ["res4"]``; its res5 lives in :class:`ResNeXtRes5ROIHeads`."""
    return build_resnext(resolve_resnext_spec(cfg), in_channels=input_shape.channels)


@BACKBONE_REGISTRY.register()
def build_resnext_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNeXt + detectron2's FPN (``MODEL.FPN.*``) + LastLevelMaxPool: outputs p2..p6."""
    spec = resolve_resnext_spec(cfg)
    missing = [f for f in cfg.MODEL.FPN.IN_FEATURES if f not in spec.out_features]
    if missing:
        raise ResNeXtConfigError(
            f"MODEL.FPN.IN_FEATURES={list(cfg.MODEL.FPN.IN_FEATURES)} asks for {missing}, which "
            f"MODEL.RESNEXT.OUT_FEATURES={list(spec.out_features)} does not produce; add them to "
            "OUT_FEATURES (usually ['res2', 'res3', 'res4', 'res5'])")
    bottom_up = build_resnext(spec, in_channels=input_shape.channels)
    fpn = cfg.MODEL.FPN
    return FPN(bottom_up=bottom_up, in_features=fpn.IN_FEATURES, out_channels=fpn.OUT_CHANNELS, norm=fpn.NORM,
               top_block=LastLevelMaxPool(), fuse_type=fpn.FUSE_TYPE)
