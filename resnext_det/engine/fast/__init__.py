"""Fast inference and training switches for detectron2 models with a ResNeXt backbone, built by
composition: a prepared model is made of modules whose class says what they compute.

- :mod:`.folding`: FrozenBN folded into the conv, once (inference: a ``Conv2d`` with bias) or
  on the fly (training: :class:`FrozenBNFoldedConv2d`, same parameters).
- :mod:`.layout`: channels_last, and :class:`AutocastTrunk` (a wrapper) for reduced precision.
- :mod:`.fused`: :class:`FusedBottleneckBlock`, :class:`FusedStem`, :class:`FusedRPNHead`
  (oneDNN fused conv+ReLU / conv+add+ReLU, CPU fp32 inference).
- :mod:`.precision`: precision names, native bf16 detection, :func:`training_autocast`.
- :mod:`.auto`: ``auto`` for the training layout switches (the shipped measured table, a probe guard).
- :mod:`.prepare`: the entry points.

The trainer applies the training switches (``MODEL.RESNEXT.FAST.*_TRAIN``) when it builds the
model and :func:`prepare_for_inference` to a copy for evaluation (``FAST.INFERENCE``).
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
