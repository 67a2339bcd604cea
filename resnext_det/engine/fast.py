"""Fast inference and training switches for detectron2 models with a ResNeXt backbone.

Inference (:func:`prepare_for_inference`, one call on a trained model):

1. **FrozenBN folding.** Every detectron2 ``Conv2d`` whose ``norm`` is a
   ``FrozenBatchNorm2d`` (or an eval-mode ``BatchNorm2d``) gets the affine map folded
   into its weight and a bias; the norm is removed. Done in float64, so in fp32 the
   outputs change only by float rounding.
2. **channels_last.** Conv weights are stored NHWC and the backbone (and the C4 res5
   head) convert their input to NHWC: oneDNN's NHWC kernels are much faster on CPU,
   especially for the grouped 3x3 conv, and cuDNN's tensor-core kernels want NHWC.
3. **Fused bottleneck (CPU, fp32).** Each ResNeXt/ResNet bottleneck runs its convs
   through oneDNN's fused conv+ReLU and conv+add+ReLU kernels
   (``torch.ops.mkldnn._convolution_pointwise``), saving the separate ReLU and residual
   passes over memory. Same arithmetic, so fp32 outputs change only by rounding.
4. **Reduced precision (optional).** ``precision="bf16"`` (CPU or CUDA) or ``"fp16"``
   (CUDA) runs the *backbone* (and the C4 res5 head) under ``torch.autocast``; their
   outputs are cast back to fp32, so the RPN's box decoding, NMS, RoIAlign, the box
   predictor and detectron2's post-processing all still run in fp32.
   bf16 only pays off on CPUs with native bf16 (AVX512-BF16 / AMX): elsewhere oneDNN
   falls back to slow reference kernels and a warning says so.

5. **RPN head (CPU, fp32).** The RPN's shared 3x3 conv runs as a fused conv+ReLU.
6. **Post-processing.** ``box_predictor.inference`` uses :func:`batched_nms_sorted`: the same
   per-class NMS as torchvision's CPU loop (same kept boxes, same order) with one stable sort by
   class instead of one full ``idxs == c`` scan per class (80 scans of up to 80k entries each at
   a low score threshold; on a loaded 2-core host those tiny parallel ops cost seconds).

The FPN, RPN and RoI heads keep channels_last feature maps (measured: converting them to NCHW
for RoIAlign costs as much as RoIAlign's own internal conversion saves).

On CUDA, ``torch.backends.cudnn.benchmark`` is turned on (fixed-size inputs pick the
fastest algorithm once).

Training (:func:`apply_training_switches`, behind ``MODEL.RESNEXT.FAST.CHANNELS_LAST_TRAIN``
and ``MODEL.RESNEXT.FAST.AUTOCAST_TRAIN``): channels_last and/or autocast of the backbone,
without folding (the conv weights are being trained) and without renaming any parameter,
so checkpoints stay interchangeable with the stock path. Losses are computed in fp32.
Optionally (``fold_frozen_bn=True``) each conv+FrozenBN runs as one conv with the FrozenBN folded
into weight and bias on the fly (state_dict, parameters and gradients unchanged up to rounding).

Integration is one line: ``model = maybe_apply_fast_config(model, cfg, training=...)``.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock

__all__ = [
    "PRECISIONS",
    "fold_frozen_bn",
    "prepare_for_inference",
    "apply_training_switches",
    "training_autocast",
    "maybe_apply_fast_config",
    "cpu_has_native_bf16",
    "autocast_dtype",
    "batched_nms_sorted",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """True when oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX)."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if probe is not None:
        try:
            return bool(probe())
        except Exception:  # pragma: no cover - very old/odd builds
            pass
    cap = torch.backends.cpu.get_cpu_capability()
    return "AMX" in cap or "BF16" in cap


def autocast_dtype(precision: str, device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype for a precision name on a device type; None means fp32 (no autocast).

    Args:
        precision: "fp32", "bf16" or "fp16".
        device_type: "cpu" or "cuda".

    Raises:
        ValueError: unknown precision, or fp16 on CPU (oneDNN has no fp16 conv on CPU worth using).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"MODEL.RESNEXT.FAST.PRECISION={precision!r} is not valid; use one of {PRECISIONS}")
    if precision == "fp16" and device_type == "cpu":
        raise ValueError(
            "MODEL.RESNEXT.FAST.PRECISION='fp16' is not valid on CPU; use 'bf16' on CPU "
            "(fp16 or bf16 on CUDA) or 'fp32'"
        )
    return _DTYPES[precision]


# --------------------------------------------------------------------------- folding
def _is_foldable_norm(norm: nn.Module) -> bool:
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    # A BatchNorm in eval mode with running stats is an affine map too.
    return isinstance(norm, nn.BatchNorm2d) and not norm.training and norm.track_running_stats


@torch.no_grad()
def fold_frozen_bn(model: nn.Module) -> int:
    """Fold each conv's FrozenBN into the conv (in place): ``w' = w*s``, ``b' = (b-mean)*s + beta``.

    ``s = gamma / sqrt(var + eps)``, computed in float64. The conv's ``norm`` becomes None.

    Args:
        model: any module; every detectron2 ``Conv2d`` with a foldable ``norm`` is changed.

    Returns:
        the number of convs folded.
    """
    count = 0
    for module in model.modules():
        if not isinstance(module, Conv2d) or module.norm is None or not _is_foldable_norm(module.norm):
            continue
        norm = module.norm
        w = module.weight
        scale = norm.weight.double() * (norm.running_var.double() + norm.eps).rsqrt()
        bias = module.bias.double() if module.bias is not None else torch.zeros_like(scale)
        new_bias = (bias - norm.running_mean.double()) * scale + norm.bias.double()
        new_w = (w.double() * scale.reshape(-1, 1, 1, 1)).to(w.dtype)
        module.weight = nn.Parameter(new_w.contiguous(memory_format=_memory_format_of(w)),
                                     requires_grad=w.requires_grad)
        module.bias = nn.Parameter(new_bias.to(w.dtype), requires_grad=w.requires_grad)
        module.norm = None
        count += 1
    return count


def _memory_format_of(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


# --------------------------------------------------------------------------- forward wrapper
class _FastForward:
    """Replaces ``module.forward`` on one instance: input to channels_last, optional autocast,
    floating outputs back to fp32. An instance attribute (not a wrapper module), so no
    parameter is renamed and checkpoints stay loadable."""

    def __init__(self, module: nn.Module, channels_last: bool, device_type: str,
                 dtype: Optional[torch.dtype]):
        self.inner = module.forward
        self.channels_last = channels_last
        self.device_type = device_type
        self.dtype = dtype

    def __call__(self, x, *args, **kwargs):
        if self.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.dtype is None:
            return self.inner(x, *args, **kwargs)
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            out = self.inner(x, *args, **kwargs)
        return _to_fp32(out)


def _to_fp32(out):
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return {k: _to_fp32(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_to_fp32(v) for v in out)
    return out


def _wrap_forward(module: nn.Module, channels_last: bool, device_type: str,
                  dtype: Optional[torch.dtype]) -> None:
    if isinstance(module.__dict__.get("forward"), _FastForward):
        fwd = module.__dict__["forward"]
        fwd.channels_last, fwd.device_type, fwd.dtype = channels_last, device_type, dtype
        return
    module.forward = _FastForward(module, channels_last, device_type, dtype)


def _heavy_parts(model: nn.Module):
    """The conv trunks whose forward gets wrapped: the backbone (or the model itself when it
    is a bare backbone) and the C4 head's res5."""
    parts = []
    backbone = getattr(model, "backbone", None)
    parts.append(backbone if isinstance(backbone, nn.Module) else model)
    res5 = getattr(getattr(model, "roi_heads", None), "res5", None)
    if isinstance(res5, nn.Module):
        parts.append(res5)
    return parts


# --------------------------------------------------------------------------- fused blocks (CPU fp32)
def _pointwise_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _conv_args(conv: nn.Conv2d):
    return (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)


def _fused_conv_relu(x, conv):
    pad, stride, dil, groups = _conv_args(conv)
    return torch.ops.mkldnn._convolution_pointwise(x, conv.weight, conv.bias, pad, stride, dil,
                                                   groups, "relu", [], "")


def _fused_conv_add_relu(x, other, conv):
    pad, stride, dil, groups = _conv_args(conv)
    return torch.ops.mkldnn._convolution_pointwise(x, other, conv.weight, conv.bias, pad, stride,
                                                   dil, groups, "add", 1.0, "relu", [], "")


def _can_fuse(x: torch.Tensor, weight: torch.Tensor) -> bool:
    # The fused oneDNN ops have no autograd: only used where no gradient can be asked for.
    # The TorchScript tracer cannot record their ``Scalar?[]`` argument: a traced model
    # keeps the folded, channels_last, unfused convs.
    return (not torch.jit.is_tracing() and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 and x.numel() > 0
            and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


class _FusedBottleneckForward:
    """oneDNN fused forward of a folded detectron2 ``BottleneckBlock`` (CPU, fp32, no grad);
    any other input goes through the block's own forward."""

    def __init__(self, block: BottleneckBlock):
        self.block = block
        self.inner = block.forward

    def __call__(self, x):
        b = self.block
        if not _can_fuse(x, b.conv1.weight):
            return self.inner(x)
        x = x.contiguous(memory_format=torch.channels_last)
        out = _fused_conv_relu(x, b.conv1)
        out = _fused_conv_relu(out, b.conv2)
        shortcut = b.shortcut(x) if b.shortcut is not None else x
        return _fused_conv_add_relu(out, shortcut.contiguous(memory_format=torch.channels_last), b.conv3)


class _FusedStemForward:
    def __init__(self, stem: BasicStem):
        self.stem = stem
        self.inner = stem.forward

    def __call__(self, x):
        if not _can_fuse(x, self.stem.conv1.weight):
            return self.inner(x)
        x = _fused_conv_relu(x.contiguous(memory_format=torch.channels_last), self.stem.conv1)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class _FusedRPNHeadForward:
    """oneDNN fused 3x3 conv+ReLU of a ``StandardRPNHead`` (CPU, fp32, no grad); the two 1x1
    predictors are unchanged. Anything else goes through the head's own forward."""

    def __init__(self, head: nn.Module):
        self.head = head
        self.inner = head.forward

    def __call__(self, features):
        h = self.head
        if not all(_can_fuse(x, h.conv.weight) for x in features):
            return self.inner(features)
        logits, deltas = [], []
        for x in features:
            t = _fused_conv_relu(x.contiguous(memory_format=torch.channels_last), h.conv)
            logits.append(h.objectness_logits(t))
            deltas.append(h.anchor_deltas(t))
        return logits, deltas


def _fuse_rpn_heads(model: nn.Module) -> int:
    from detectron2.modeling.proposal_generator.rpn import StandardRPNHead

    n = 0
    for m in model.modules():
        if (type(m) is StandardRPNHead and isinstance(m.conv, Conv2d) and m.conv.norm is None
                and (isinstance(m.conv.activation, nn.ReLU) or m.conv.activation is F.relu)):
            if not isinstance(m.__dict__.get("forward"), _FusedRPNHeadForward):
                m.forward = _FusedRPNHeadForward(m)
            n += 1
    return n


def _fuse_blocks(model: nn.Module) -> int:
    """Install the fused forwards on folded bottlenecks and stems (norm and activation gone)."""
    if not _pointwise_available():
        return 0
    n = 0
    for m in model.modules():
        if isinstance(m, BottleneckBlock) and all(
            c.norm is None and c.activation is None for c in (m.conv1, m.conv2, m.conv3)
        ) and (m.shortcut is None or m.shortcut.norm is None):
            if not isinstance(m.__dict__.get("forward"), _FusedBottleneckForward):
                m.forward = _FusedBottleneckForward(m)
                n += 1
        elif isinstance(m, BasicStem) and m.conv1.norm is None and m.conv1.activation is None:
            if not isinstance(m.__dict__.get("forward"), _FusedStemForward):
                m.forward = _FusedStemForward(m)
                n += 1
    return n


# --------------------------------------------------------------------------- training: FrozenBN folded on the fly
class _FoldedNormConvForward:
    """Training forward of a detectron2 ``Conv2d`` whose norm is a ``FrozenBatchNorm2d``.

    FrozenBN is a fixed affine map ``y*s + t`` (``s = gamma/sqrt(var+eps)``, ``t = beta - mean*s``;
    all buffers, never trained), so ``norm(conv(x, w, b)) == conv(x, w*s, b*s + t)``. The folded
    weight is recomputed from the live parameters and buffers at every call (a weight-sized op),
    so nothing is renamed or replaced: ``state_dict`` keys, loaded checkpoints and the optimizer's
    parameters are the module's own, and autograd carries ``dL/dw = s * dL/dw'`` to the real
    weight. What it saves is FrozenBN's two full passes over the activation in the forward
    (``x*scale + bias``) and one (``grad*scale``) in the backward. Equal up to float rounding.
    """

    def __init__(self, conv: Conv2d):
        self.conv = conv
        self.inner = conv.forward

    def __call__(self, x):
        c = self.conv
        norm = c.norm
        if (not isinstance(norm, FrozenBatchNorm2d) or torch.jit.is_tracing() or torch.jit.is_scripting()
                or x.numel() == 0):
            return self.inner(x)
        with torch.no_grad():
            scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
            shift = norm.bias - norm.running_mean * scale
        w = c.weight * scale.to(c.weight.dtype).reshape(-1, 1, 1, 1)
        b = shift.to(c.weight.dtype)
        if c.bias is not None:
            b = c.bias * scale.to(c.weight.dtype) + b
        out = c._conv_forward(x, w, b)
        if c.activation is not None:
            out = c.activation(out)
        return out


def _fold_frozen_bn_for_training(model: nn.Module) -> int:
    n = 0
    for m in model.modules():
        if isinstance(m, Conv2d) and isinstance(m.norm, FrozenBatchNorm2d):
            if not isinstance(m.__dict__.get("forward"), _FoldedNormConvForward):
                m.forward = _FoldedNormConvForward(m)
            n += 1
    return n


# --------------------------------------------------------------------------- post-processing
# torchvision's CPU batched NMS switches to a per-class loop above this many box coordinates
# (``torchvision.ops.boxes.batched_nms``); below it, it uses the coordinate-offset trick.
_TV_CPU_VANILLA_NUMEL = 4000


def batched_nms_sorted(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                       iou_threshold: float) -> torch.Tensor:
    """detectron2's ``batched_nms`` with the same result (same kept indices, same order), faster
    for many classes on CPU.

    torchvision's per-class loop (used on CPU above 1000 boxes) scans all N boxes once per class
    (``torch.where(idxs == c)``: 80 full passes over a strided column for COCO). Here one stable
    sort by class makes every class a contiguous slice holding the same boxes in the same order,
    so each per-class ``nms`` sees exactly the inputs it saw before. Small inputs, non-CPU
    tensors and tracing go to torchvision's own dispatch unchanged.
    """
    from torchvision.ops import boxes as box_ops
    from torchvision.ops import nms

    boxes = boxes.float()  # as detectron2.layers.batched_nms
    if (boxes.device.type != "cpu" or boxes.numel() <= _TV_CPU_VANILLA_NUMEL
            or torch.jit.is_tracing() or torch.jit.is_scripting()):
        return box_ops.batched_nms(boxes, scores, idxs, iou_threshold)
    order = torch.sort(idxs, stable=True)[1]
    counts = torch.unique_consecutive(idxs[order], return_counts=True)[1].tolist()
    boxes_s, scores_s = boxes[order], scores[order]
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    start = 0
    for n in counts:
        keep = nms(boxes_s[start:start + n], scores_s[start:start + n], iou_threshold)
        keep_mask[order[start:start + n][keep]] = True
        start += n
    keep_indices = torch.where(keep_mask)[0]
    return keep_indices[scores[keep_indices].sort(descending=True)[1]]


def _fast_rcnn_inference_single_image(boxes, scores, image_shape, score_thresh, nms_thresh,
                                      topk_per_image):
    """``detectron2.modeling.roi_heads.fast_rcnn.fast_rcnn_inference_single_image`` with
    :func:`batched_nms_sorted` (identical result)."""
    from detectron2.structures import Boxes, Instances

    valid_mask = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not valid_mask.all():
        boxes = boxes[valid_mask]
        scores = scores[valid_mask]
    scores = scores[:, :-1]
    num_bbox_reg_classes = boxes.shape[1] // 4
    boxes = Boxes(boxes.reshape(-1, 4))
    boxes.clip(image_shape)
    boxes = boxes.tensor.view(-1, num_bbox_reg_classes, 4)  # R x C x 4
    filter_mask = scores > score_thresh  # R x K
    filter_inds = filter_mask.nonzero()
    if num_bbox_reg_classes == 1:
        boxes = boxes[filter_inds[:, 0], 0]
    else:
        boxes = boxes[filter_mask]
    scores = scores[filter_mask]
    keep = batched_nms_sorted(boxes, scores, filter_inds[:, 1], nms_thresh)
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
    boxes, scores, filter_inds = boxes[keep], scores[keep], filter_inds[keep]
    result = Instances(image_shape)
    result.pred_boxes = Boxes(boxes)
    result.scores = scores
    result.pred_classes = filter_inds[:, 1]
    return result, filter_inds[:, 0]


class _FastBoxInference:
    """Replaces ``box_predictor.inference`` on one ``FastRCNNOutputLayers`` instance: the same
    computation with :func:`batched_nms_sorted`. Tracing/scripting use the original."""

    def __init__(self, predictor: nn.Module):
        self.predictor = predictor

    def __call__(self, predictions, proposals):
        p = self.predictor
        if torch.jit.is_tracing() or torch.jit.is_scripting():
            return type(p).inference(p, predictions, proposals)
        boxes = p.predict_boxes(predictions, proposals)
        scores = p.predict_probs(predictions, proposals)
        results = [
            _fast_rcnn_inference_single_image(b, s, x.image_size, p.test_score_thresh,
                                              p.test_nms_thresh, p.test_topk_per_image)
            for s, b, x in zip(scores, boxes, proposals)
        ]
        return [r[0] for r in results], [r[1] for r in results]


def _install_fast_postprocess(model: nn.Module) -> int:
    from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers

    n = 0
    for m in model.modules():
        # only the stock class's own inference (a subclass may compute it differently)
        if isinstance(m, FastRCNNOutputLayers) and type(m).inference is FastRCNNOutputLayers.inference:
            if not isinstance(m.__dict__.get("inference"), _FastBoxInference):
                m.inference = _FastBoxInference(m)
            n += 1
    return n


# --------------------------------------------------------------------------- public API
def _resolve_device(model: nn.Module, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def prepare_for_inference(model: nn.Module, precision: str = "fp32",
                          device: Optional[Union[str, torch.device]] = None, *,
                          channels_last: bool = True, fuse: bool = True) -> nn.Module:
    """Prepare a trained detectron2 model (or a bare backbone) for fast inference, in place.

    Folds FrozenBN into the convs, switches to channels_last, installs oneDNN fused
    bottlenecks on CPU, and optionally runs the backbone under bf16/fp16 autocast with
    fp32 outputs (so box decoding, NMS and post-processing stay fp32). Puts the model in
    eval mode. In fp32 the outputs equal the unprepared model's up to float rounding.

    Args:
        model: a ``GeneralizedRCNN`` (FPN or C4), a ``Backbone``, or any module whose
            convs are detectron2 ``Conv2d`` with FrozenBN.
        precision: "fp32"; "bf16" (CPU with AVX512-BF16/AMX, or CUDA); "fp16" (CUDA only).
        device: move the model there first (default: where its parameters are).
        channels_last: store conv weights and feature maps NHWC (default True).
        fuse: on CPU, use oneDNN fused conv+ReLU / conv+add+ReLU in the bottlenecks
            (fp32, no-grad calls only; anything else uses the normal forward).

    Returns:
        the same model object, prepared.
    """
    dev = _resolve_device(model, device)
    dtype = autocast_dtype(precision, dev.type)
    if dtype == torch.bfloat16 and dev.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            "prepare_for_inference(precision='bf16'): this CPU has no native bf16 "
            "(AVX512-BF16/AMX); oneDNN falls back to reference kernels and bf16 will be much "
            "SLOWER than fp32 here. Use precision='fp32' on this machine.",
            RuntimeWarning, stacklevel=2,
        )
    model.to(dev)
    model.eval()
    model.requires_grad_(False)  # inference only; lets the fused (autograd-free) kernels run
    n_folded = fold_frozen_bn(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    n_fused = 0
    if fuse and dev.type == "cpu" and dtype is None:
        n_fused = _fuse_blocks(model) + _fuse_rpn_heads(model)
    n_post = _install_fast_postprocess(model)
    for part in _heavy_parts(model):
        _wrap_forward(part, channels_last, dev.type, dtype)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model._resnext_fast = {"mode": "inference", "precision": precision, "folded": n_folded,
                           "fused_blocks": n_fused, "fast_postprocess": n_post,
                           "channels_last": channels_last}
    logger.info("prepare_for_inference: folded %d FrozenBN, fused %d blocks, channels_last=%s, %s",
                n_folded, n_fused, channels_last, precision)
    return model


def apply_training_switches(model: nn.Module, cfg=None, *, channels_last: Optional[bool] = None,
                            autocast: Optional[str] = None, fold_frozen_bn: Optional[bool] = None) -> nn.Module:
    """Apply the training speed switches to a model, in place (nothing is folded or renamed).

    ``channels_last``: conv weights (and their gradients / optimizer state) NHWC, backbone
    input converted to NHWC. ``autocast`` ("bf16" / "fp16"): the backbone and C4 res5 run
    under ``torch.autocast`` with fp32 outputs, so the heads and losses stay fp32. With fp16
    the trainer should also use a grad scaler (detectron2's ``AMPTrainer``).

    Args:
        model: the detectron2 model about to be trained.
        cfg: a config with ``MODEL.RESNEXT.FAST`` (CHANNELS_LAST_TRAIN, AUTOCAST_TRAIN); the
            keyword arguments, when given, take precedence.
        channels_last: override ``CHANNELS_LAST_TRAIN``.
        autocast: override ``AUTOCAST_TRAIN``: "" (off), "bf16" or "fp16".
        fold_frozen_bn: each ``Conv2d`` + ``FrozenBatchNorm2d`` runs as one conv with the
            FrozenBN folded into its weight and bias *on the fly* (see ``_FoldedNormConvForward``:
            no module, parameter or buffer is changed; gradients equal up to rounding).
            Default: off (opt-in: not yet shown to pay off on the 2-core AVX2 benchmark host).

    Returns:
        the same model object.
    """
    fast = cfg.MODEL.RESNEXT.FAST if cfg is not None else None
    if channels_last is None:
        channels_last = bool(fast.CHANNELS_LAST_TRAIN) if fast is not None else False
    if autocast is None:
        autocast = str(fast.AUTOCAST_TRAIN) if fast is not None else ""
    if autocast not in ("",) + PRECISIONS:
        raise ValueError(
            f"MODEL.RESNEXT.FAST.AUTOCAST_TRAIN={autocast!r} is not valid; use '' (off), 'bf16' or 'fp16'"
        )
    dev = _resolve_device(model, None)
    dtype = autocast_dtype(autocast or "fp32", dev.type)
    if dtype == torch.bfloat16 and dev.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("AUTOCAST_TRAIN='bf16' on a CPU without native bf16: expect it to be slower than fp32",
                      RuntimeWarning, stacklevel=2)
    if fold_frozen_bn is None:
        fold_frozen_bn = bool(fast.get("FOLD_FROZEN_BN_TRAIN", False)) if fast is not None else False
    n_folded = _fold_frozen_bn_for_training(model) if fold_frozen_bn else 0
    if not channels_last and dtype is None:
        if n_folded:
            model._resnext_fast = {"mode": "training", "precision": "fp32", "channels_last": False,
                                   "folded_on_the_fly": n_folded}
        return model
    if channels_last:
        model.to(memory_format=torch.channels_last)
    for part in _heavy_parts(model):
        _wrap_forward(part, channels_last, dev.type, dtype)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model._resnext_fast = {"mode": "training", "precision": autocast or "fp32", "channels_last": channels_last,
                           "folded_on_the_fly": n_folded}
    return model


@contextlib.contextmanager
def training_autocast(cfg=None, device_type: str = "cpu", precision: Optional[str] = None) -> Iterator[None]:
    """Context manager for a trainer that prefers to autocast the whole ``model(data)`` call.

    A no-op when ``MODEL.RESNEXT.FAST.AUTOCAST_TRAIN`` (or ``precision``) is "" / "fp32".
    Unlike :func:`apply_training_switches` it also autocasts the heads; detectron2 keeps the
    loss computations in fp32 either way (``smooth_l1``/``cross_entropy`` autocast to fp32).

    Args:
        cfg: a config with ``MODEL.RESNEXT.FAST.AUTOCAST_TRAIN``.
        device_type: "cpu" or "cuda".
        precision: overrides the config: "", "fp32", "bf16", "fp16".
    """
    if precision is None:
        precision = str(cfg.MODEL.RESNEXT.FAST.AUTOCAST_TRAIN) if cfg is not None else ""
    dtype = autocast_dtype(precision or "fp32", device_type)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device_type, dtype=dtype):
        yield


def maybe_apply_fast_config(model: nn.Module, cfg, training: bool) -> nn.Module:
    """Apply what ``cfg.MODEL.RESNEXT.FAST`` asks for; the one-line integration point.

    - ``training=False`` and ``FAST.INFERENCE``: :func:`prepare_for_inference` with
      ``FAST.PRECISION`` (on ``cfg.MODEL.DEVICE``).
    - ``training=True``: :func:`apply_training_switches` (CHANNELS_LAST_TRAIN, AUTOCAST_TRAIN).
    - otherwise the model is returned unchanged.

    Args:
        model: a built detectron2 model.
        cfg: its config (went through ``add_resnext_config``).
        training: whether the model is about to be trained (else: evaluated).

    Returns:
        the same model object.
    """
    if "RESNEXT" not in cfg.MODEL:
        return model
    fast = cfg.MODEL.RESNEXT.FAST
    if training:
        return apply_training_switches(model, cfg)
    if bool(fast.INFERENCE):
        return prepare_for_inference(model, precision=str(fast.PRECISION))
    return model
