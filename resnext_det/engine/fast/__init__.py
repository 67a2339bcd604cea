"""Fast inference and training switches for detectron2 models with a ResNeXt backbone, built by
composition: a prepared model is made of modules whose class says what they compute (entry points in
:mod:`.prepare`; docs/FAST_PATH.md).
"""
from .auto import AUTO, CpuFeatures, LayoutChoice, choose_training_layout, probe_training_layouts
from .folding import FrozenBNFoldedConv2d, fold_frozen_bn, fold_frozen_bn_on_the_fly
from .fused import FusedBottleneckBlock, FusedRPNHead, FusedStem, fuse_blocks
from .layout import AutocastTrunk, autocast_trunk
from .precision import PRECISIONS, autocast_dtype, check_autocast_train, cpu_has_native_bf16, training_autocast
from .prepare import (FastReport, apply_training_switches, apply_training_switches_with_report,
                      prepare_for_inference, prepare_for_inference_with_report)

__all__ = [
    "PRECISIONS", "AUTO",
    "prepare_for_inference", "apply_training_switches", "training_autocast",
    "FastReport", "prepare_for_inference_with_report", "apply_training_switches_with_report", "check_autocast_train",
    "fold_frozen_bn", "fold_frozen_bn_on_the_fly", "FrozenBNFoldedConv2d",
    "FusedBottleneckBlock", "FusedStem", "FusedRPNHead", "fuse_blocks",
    "AutocastTrunk", "autocast_trunk",
    "cpu_has_native_bf16", "autocast_dtype",
    "CpuFeatures", "LayoutChoice", "choose_training_layout", "probe_training_layouts",
]
