"""The fast path's entry points: :func:`prepare_for_inference` and :func:`apply_training_switches`
(each also ``*_with_report``, returning what it chose)."""
from __future__ import annotations

import dataclasses
import logging
from typing import Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .auto import CpuFeatures, parse_switch, resolve_training_layout
from .folding import fold_frozen_bn, fold_frozen_bn_on_the_fly
from .fused import fuse_blocks
from .layout import autocast_trunks
from .precision import PRECISIONS, autocast_dtype, check_autocast_train, warn_if_bf16_is_slow
from .roi_align import use_matrix_roi_align

__all__ = ["FastReport", "prepare_for_inference", "prepare_for_inference_with_report", "apply_training_switches",
           "apply_training_switches_with_report"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FastReport:
    """What the fast path did to a model (``mode`` "inference" or "training"); the counts are of
    convs folded once, modules fused, convs folded on the fly and RoIAlign modules swapped."""

    mode: str
    precision: str
    channels_last: bool
    folded: int = 0
    fused_blocks: int = 0
    folded_on_the_fly: int = 0
    layout_reason: str = ""
    matrix_roi_align: int = 0


def _resolve_device(model: nn.Module, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def prepare_for_inference(model: nn.Module, precision: str = "fp32",
                          device: Optional[Union[str, torch.device]] = None, *,
                          channels_last: bool = True, fuse: bool = True) -> nn.Module:
    """:func:`prepare_for_inference_with_report` without the report (use the return value: a bare
    backbone in bf16/fp16 comes back wrapped)."""
    return prepare_for_inference_with_report(model, precision, device, channels_last=channels_last,
                                             fuse=fuse)[0]


def prepare_for_inference_with_report(model: nn.Module, precision: str = "fp32",
                                      device: Optional[Union[str, torch.device]] = None, *,
                                      channels_last: bool = True,
                                      fuse: bool = True) -> Tuple[nn.Module, FastReport]:
    """Prepare a trained detectron2 model (or a bare backbone) for fast inference, in place: FrozenBN
    folded into the convs (float64); ``channels_last`` conv weights (oneDNN's NHWC kernels are faster on
    CPU, above all for the grouped 3x3); with ``fuse``, on CPU in fp32, the fused blocks (:mod:`.fused`);
    ``precision`` "bf16" (CPU with AVX512-BF16/AMX, or CUDA) / "fp16" (CUDA): the trunks wrapped in
    :class:`~.layout.AutocastTrunk`, so everything after them stays fp32 (docs/FAST_PATH.md).

    Eval mode, moved to ``device`` (default: where its parameters are); ``cudnn.benchmark`` is left to
    the caller. Returns ``(model, FastReport)``, the model the same object but a bare backbone in bf16/fp16.
    """
    dev = _resolve_device(model, device)
    dtype = autocast_dtype(precision, dev.type)
    warn_if_bf16_is_slow(dtype, dev.type, "prepare_for_inference(precision='bf16')")
    model.to(dev)
    model.eval()
    model.requires_grad_(False)  # inference only; lets the fused (autograd-free) kernels run
    n_folded = fold_frozen_bn(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    n_fused = fuse_blocks(model) if fuse and dev.type == "cpu" and dtype is None else 0
    if dtype is not None:
        model = autocast_trunks(model, dev.type, dtype, channels_last)
    report = FastReport(mode="inference", precision=precision, channels_last=bool(channels_last),
                        folded=n_folded, fused_blocks=n_fused)
    logger.info("prepare_for_inference: folded %d FrozenBN, fused %d blocks, channels_last=%s, %s",
                n_folded, n_fused, channels_last, precision)
    return model, report


def apply_training_switches(model: nn.Module, cfg=None, *, channels_last=None,
                            autocast: Optional[str] = None, fold_frozen_bn=None,
                            cpu_features: Optional[CpuFeatures] = None,
                            probe: Union[bool, Mapping[str, float], None] = None) -> nn.Module:
    """:func:`apply_training_switches_with_report` without the report."""
    return apply_training_switches_with_report(
        model, cfg, channels_last=channels_last, autocast=autocast, fold_frozen_bn=fold_frozen_bn,
        cpu_features=cpu_features, probe=probe)[0]


def apply_training_switches_with_report(model: nn.Module, cfg=None, *, channels_last=None,
                                        autocast: Optional[str] = None, fold_frozen_bn=None,
                                        matrix_roi_align=None,
                                        cpu_features: Optional[CpuFeatures] = None,
                                        probe: Union[bool, Mapping[str, float], None] = None
                                        ) -> Tuple[nn.Module, FastReport]:
    """Apply the training speed switches to a model, in place; its state_dict keys stay detectron2's, so
    checkpoints stay interchangeable with the stock path (docs/FAST_PATH.md). Each keyword, when given,
    overrides its ``MODEL.RESNEXT.FAST.*_TRAIN`` key of ``cfg``: ``channels_last``, ``fold_frozen_bn``
    (:class:`~.folding.FrozenBNFoldedConv2d`), ``matrix_roi_align`` (:mod:`.roi_align`; ``auto``: on CPU),
    ``autocast`` ("" / "bf16" / "fp16": the trunks in :class:`~.layout.AutocastTrunk`; from a config only
    bf16 on CPU, ValueError otherwise). ``auto`` layout switches follow :mod:`.auto` (``cpu_features``,
    ``probe`` as there). Returns ``(model, FastReport)``, the model the same object but a bare backbone
    given ``autocast``.
    """
    fast = cfg.MODEL.RESNEXT.FAST if cfg is not None else None
    if channels_last is None:
        channels_last = fast.CHANNELS_LAST_TRAIN if fast is not None else False
    if fold_frozen_bn is None:
        fold_frozen_bn = fast.get("FOLD_FROZEN_BN_TRAIN", False) if fast is not None else False
    dev = _resolve_device(model, None)
    if autocast is None:
        autocast = check_autocast_train(str(fast.AUTOCAST_TRAIN), dev.type) if fast is not None else ""
    if autocast not in ("",) + PRECISIONS:
        raise ValueError(f"autocast={autocast!r} is not valid; use '' (off), 'bf16' or 'fp16'")
    dtype = autocast_dtype(autocast or "fp32", dev.type)
    warn_if_bf16_is_slow(dtype, dev.type, "AUTOCAST_TRAIN='bf16'")
    choice = resolve_training_layout(model, cfg, channels_last, fold_frozen_bn,
                                     features=cpu_features, probe=probe)
    n_folded = fold_frozen_bn_on_the_fly(model) if choice.fold_frozen_bn else 0
    if matrix_roi_align is None:
        matrix_roi_align = fast.get("MATRIX_ROI_ALIGN_TRAIN", "auto") if fast is not None else False
    use_matrix = parse_switch(matrix_roi_align, "MATRIX_ROI_ALIGN_TRAIN")
    if use_matrix is None:  # auto: the CPU (torchvision's CUDA kernel is parallel already)
        use_matrix = dev.type == "cpu"
    n_matrix = use_matrix_roi_align(model) if use_matrix else 0
    if n_matrix:
        logger.info("RoIAlign of %d RoI pooler level(s) computed as a sparse matrix product for training "
                    "(MODEL.RESNEXT.FAST.MATRIX_ROI_ALIGN_TRAIN=%s)", n_matrix, matrix_roi_align)
    if choice.channels_last:
        model.to(memory_format=torch.channels_last)
    if dtype is not None:
        model = autocast_trunks(model, dev.type, dtype, choice.channels_last)
    report = FastReport(mode="training", precision=autocast or "fp32", channels_last=bool(choice.channels_last),
                        folded_on_the_fly=n_folded, layout_reason=choice.reason,
                        matrix_roi_align=n_matrix)
    return model, report
