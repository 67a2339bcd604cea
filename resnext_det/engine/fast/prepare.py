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
    """What the fast path did to a model (returned by the ``*_with_report`` functions; the
    model itself carries no record of it).

    Attributes:
        mode: "inference" or "training".
        precision: "fp32", "bf16" or "fp16".
        channels_last: conv weights stored NHWC.
        folded: FrozenBN folded into their convs once (inference).
        fused_blocks: modules swapped for oneDNN fused classes (inference, CPU fp32).
        folded_on_the_fly: convs folding their FrozenBN on the fly (training).
        layout_reason: why the training layout was chosen (``auto``'s log line).
        matrix_roi_align: RoI poolers' RoIAlign modules computing as a sparse matrix product
            (training, CPU: :mod:`.roi_align`).
    """

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
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def prepare_for_inference(model: nn.Module, precision: str = "fp32",
                          device: Optional[Union[str, torch.device]] = None, *,
                          channels_last: bool = True, fuse: bool = True) -> nn.Module:
    """Prepare a trained detectron2 model (or a bare backbone) for fast inference, in place;
    :func:`prepare_for_inference_with_report` without the report (it is logged).

    Args:
        model, precision, device, channels_last, fuse: as
            :func:`prepare_for_inference_with_report`.

    Returns:
        the prepared model (use the return value: a bare backbone in bf16/fp16 comes back
        wrapped).
    """
    return prepare_for_inference_with_report(model, precision, device, channels_last=channels_last,
                                             fuse=fuse)[0]


def prepare_for_inference_with_report(model: nn.Module, precision: str = "fp32",
                                      device: Optional[Union[str, torch.device]] = None, *,
                                      channels_last: bool = True,
                                      fuse: bool = True) -> Tuple[nn.Module, FastReport]:
    """Prepare a trained detectron2 model (or a bare backbone) for fast inference, in place.

    1. FrozenBN folded into the convs (:func:`~.folding.fold_frozen_bn`, float64): each such
       conv becomes a ``Conv2d`` with a bias.
    2. channels_last conv weights (oneDNN's NHWC kernels are much faster on CPU, especially
       for the grouped 3x3 conv; cuDNN's tensor-core kernels want NHWC). The FPN, RPN and RoI
       heads keep the channels_last feature maps (measured: converting them to NCHW for
       RoIAlign costs as much as RoIAlign's own internal conversion saves).
    3. On CPU, fp32: bottlenecks, stem and RPN head swapped for their oneDNN fused classes
       (:mod:`.fused`).
    4. ``precision`` "bf16"/"fp16": the backbone and the C4 res5 head are wrapped in
       :class:`~.layout.AutocastTrunk` (same state_dict keys) with fp32 outputs, so box
       decoding, NMS, RoIAlign, the box predictor and detectron2's post-processing stay fp32.

    Post-processing is detectron2's own. Puts the model in eval mode. In fp32 the outputs equal
    the unprepared model's up to float rounding. Process-wide settings (``cudnn.benchmark``)
    are left to the caller (the command line applies ``CUDNN_BENCHMARK``).

    Args:
        model: a ``GeneralizedRCNN`` (FPN or C4), a ``Backbone``, or any module whose
            convs are detectron2 ``Conv2d`` with FrozenBN.
        precision: "fp32"; "bf16" (CPU with AVX512-BF16/AMX, or CUDA); "fp16" (CUDA only).
        device: move the model there first (default: where its parameters are).
        channels_last: store conv weights and feature maps NHWC (default True).
        fuse: on CPU, use the oneDNN fused blocks (fp32, no-grad calls only; anything else runs
            detectron2's forward on the same folded convs).

    Returns:
        ``(model, report)``: the prepared model, the same object except that a bare backbone
        run in bf16/fp16 is returned wrapped in an ``AutocastTrunk`` (same parameters), and a
        :class:`FastReport` of what was done.
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
    """:func:`apply_training_switches_with_report` without the report.

    Args:
        model, cfg, channels_last, autocast, fold_frozen_bn, cpu_features, probe: as
            :func:`apply_training_switches_with_report`.

    Returns:
        the model to train (the same object, unless it is a bare backbone given ``autocast``).
    """
    return apply_training_switches_with_report(
        model, cfg, channels_last=channels_last, autocast=autocast, fold_frozen_bn=fold_frozen_bn,
        cpu_features=cpu_features, probe=probe)[0]


def apply_training_switches_with_report(model: nn.Module, cfg=None, *, channels_last=None,
                                        autocast: Optional[str] = None, fold_frozen_bn=None,
                                        matrix_roi_align=None,
                                        cpu_features: Optional[CpuFeatures] = None,
                                        probe: Union[bool, Mapping[str, float], None] = None
                                        ) -> Tuple[nn.Module, FastReport]:
    """Apply the training speed switches to a model, in place; its state_dict keys stay
    detectron2's, so checkpoints stay interchangeable with the stock path.

    - channels_last: conv weights (and their gradients / optimizer state) NHWC.
    - fold_frozen_bn: each ``Conv2d`` + ``FrozenBatchNorm2d`` becomes a
      :class:`~.folding.FrozenBNFoldedConv2d` (one conv, FrozenBN folded on the fly; same
      parameters, gradients equal up to rounding).
    - matrix_roi_align: on the CPU, the RoI poolers' RoIAlign computed as a sparse matrix
      product (:class:`~.roi_align.MatrixROIAlign`: torchvision's values up to rounding, a
      backward over whole channel rows); ``auto`` = on for CPU training, off on CUDA.
    - autocast ("bf16" / "fp16"): the backbone and C4 res5 are wrapped in
      :class:`~.layout.AutocastTrunk` with fp32 outputs, so the heads and losses stay fp32.
      From a config (``AUTOCAST_TRAIN``) only bf16 on CPU: mixed precision on CUDA is
      detectron2's ``SOLVER.AMP.ENABLED`` (its ``AMPTrainer``, with a grad scaler).

    ``auto`` (the config default of the two layout switches) picks what was measured faster on
    this CPU kind (:mod:`.auto`: the shipped measured table, the fold guarded by a short probe),
    logged in one line naming the record it followed.

    Args:
        model: the detectron2 model about to be trained.
        cfg: a config with ``MODEL.RESNEXT.FAST`` (CHANNELS_LAST_TRAIN, FOLD_FROZEN_BN_TRAIN,
            AUTOCAST_TRAIN); the keyword arguments, when given, take precedence.
        channels_last: override ``CHANNELS_LAST_TRAIN``: True, False or "auto".
        autocast: override ``AUTOCAST_TRAIN``: "" (off), "bf16" or "fp16" (any device).
        fold_frozen_bn: override ``FOLD_FROZEN_BN_TRAIN``: True, False or "auto".
        matrix_roi_align: override ``MATRIX_ROI_ALIGN_TRAIN``: True, False or "auto".
        cpu_features: for ``auto``: the CPU features to decide by (default: this machine's).
        probe: for ``auto``: None runs the fold probe (when the table chose the fold), False
            skips it, a mapping gives its times.

    Returns:
        ``(model, report)``: the model to train (the same object, unless it is a bare backbone
        given ``autocast``) and a :class:`FastReport` of the choices.

    Raises:
        ValueError: an invalid ``autocast``, or ``AUTOCAST_TRAIN`` asking for what
            ``SOLVER.AMP.ENABLED`` does (see :func:`~.precision.check_autocast_train`).
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
