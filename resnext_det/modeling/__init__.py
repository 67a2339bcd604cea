"""Importing this package registers the ResNeXt backbones and the C4 RoI head in detectron2."""
from .api import TorchvisionBackbone, build_backbone_from_preset
from .backbone import build_resnext, build_resnext_backbone, build_resnext_fpn_backbone, make_resnext_stage
from .classifier import ResNeXtClassifier
from .blocks import BLOCK_CLASSES, ConcatBlock, GroupedBlock, SplitBlock, grouped_state_to_form
from .roi_heads import ResNeXtRes5ROIHeads

__all__ = [k for k in dir() if not k.startswith("_")]
