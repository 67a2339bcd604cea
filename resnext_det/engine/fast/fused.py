"""oneDNN fused blocks for CPU fp32 inference: detectron2's bottleneck, stem and RPN head with fused
conv+ReLU and conv+add+ReLU kernels (``torch.ops.mkldnn._convolution_pointwise``), saving the separate
ReLU and residual passes. Each class subclasses detectron2's own and takes over a folded original's convs;
calls the fused kernels cannot serve (autograd, autocast, non-CPU, non-fp32, tracing) run detectron2's forward.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import CNNBlockBase, Conv2d
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock
from detectron2.modeling.proposal_generator.rpn import StandardRPNHead

from ._swap import replace_submodules

__all__ = ["FusedBottleneckBlock", "FusedStem", "FusedRPNHead", "fuse_blocks", "pointwise_available"]


def pointwise_available() -> bool:
    """True when this torch build has oneDNN's fused pointwise convolution."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _conv_args(conv: nn.Conv2d):
    return (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)


def _conv_relu(x, conv):
    pad, stride, dil, groups = _conv_args(conv)
    return torch.ops.mkldnn._convolution_pointwise(x, conv.weight, conv.bias, pad, stride, dil,
                                                   groups, "relu", [], "")


def _conv_add_relu(x, other, conv):
    pad, stride, dil, groups = _conv_args(conv)
    return torch.ops.mkldnn._convolution_pointwise(x, other, conv.weight, conv.bias, pad, stride,
                                                   dil, groups, "add", 1.0, "relu", [], "")


def _can_fuse(x: torch.Tensor, weight: torch.Tensor) -> bool:
    # The fused ops have no autograd, and the tracer cannot record their ``Scalar?[]`` argument.
    return (not torch.jit.is_tracing() and not torch.jit.is_scripting() and x.device.type == "cpu"
            and x.dtype == torch.float32 and weight.dtype == torch.float32 and x.dim() == 4
            and x.numel() > 0 and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


def _plain(conv: Optional[nn.Module]) -> bool:
    """A folded conv: detectron2 ``Conv2d`` without norm and activation."""
    return type(conv) is Conv2d and conv.norm is None and conv.activation is None


class FusedBottleneckBlock(BottleneckBlock):
    """detectron2's ``BottleneckBlock`` (folded convs; ``shortcut`` None for identity) with fused
    conv1+ReLU, conv2+ReLU, conv3+shortcut-add+ReLU."""

    def __init__(self, conv1: Conv2d, conv2: Conv2d, conv3: Conv2d, shortcut: Optional[Conv2d],
                 stride: int):
        CNNBlockBase.__init__(self, conv1.in_channels, conv3.out_channels, stride)
        self.conv1, self.conv2, self.conv3 = conv1, conv2, conv3
        self.shortcut = shortcut

    @classmethod
    def from_block(cls, block: BottleneckBlock) -> "FusedBottleneckBlock":
        """The fused form of a folded ``BottleneckBlock``, holding the same convs."""
        return cls(block.conv1, block.conv2, block.conv3, block.shortcut, block.stride)

    @staticmethod
    def fusable(block: nn.Module) -> bool:
        """True for a detectron2 ``BottleneckBlock`` (exact class) whose convs are folded."""
        return (type(block) is BottleneckBlock and all(_plain(c) for c in (block.conv1, block.conv2, block.conv3))
                and (block.shortcut is None or _plain(block.shortcut)))

    def forward(self, x):
        if not _can_fuse(x, self.conv1.weight):
            return super().forward(x)
        x = x.contiguous(memory_format=torch.channels_last)
        out = _conv_relu(x, self.conv1)
        out = _conv_relu(out, self.conv2)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return _conv_add_relu(out, shortcut.contiguous(memory_format=torch.channels_last), self.conv3)


class FusedStem(BasicStem):
    """detectron2's ``BasicStem`` (folded) with a oneDNN fused conv+ReLU before the max-pool."""

    def __init__(self, conv1: Conv2d):
        CNNBlockBase.__init__(self, conv1.in_channels, conv1.out_channels, 4)
        self.conv1 = conv1

    @staticmethod
    def fusable(stem: nn.Module) -> bool:
        """True for a detectron2 ``BasicStem`` (exact class) whose conv is folded."""
        return type(stem) is BasicStem and _plain(stem.conv1)

    def forward(self, x):
        if not _can_fuse(x, self.conv1.weight):
            return super().forward(x)
        x = _conv_relu(x.contiguous(memory_format=torch.channels_last), self.conv1)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class FusedRPNHead(StandardRPNHead):
    """detectron2's ``StandardRPNHead`` with its shared 3x3 conv+ReLU as one oneDNN fused
    kernel; the two 1x1 predictors are unchanged."""

    def __init__(self, conv: Conv2d, objectness_logits: nn.Module, anchor_deltas: nn.Module):
        nn.Module.__init__(self)  # StandardRPNHead.__init__ would build new layers
        self.conv, self.objectness_logits, self.anchor_deltas = conv, objectness_logits, anchor_deltas

    @staticmethod
    def fusable(head: nn.Module) -> bool:
        """True for a ``StandardRPNHead`` (exact class) with one ReLU conv and no norm."""
        conv = getattr(head, "conv", None)
        return (type(head) is StandardRPNHead and type(conv) is Conv2d and conv.norm is None
                and (isinstance(conv.activation, nn.ReLU) or conv.activation is F.relu))

    def forward(self, features):
        if not all(_can_fuse(x, self.conv.weight) for x in features):
            return super().forward(features)
        logits, deltas = [], []
        for x in features:
            t = _conv_relu(x.contiguous(memory_format=torch.channels_last), self.conv)
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas


def fuse_blocks(model: nn.Module) -> int:
    """Swap each folded ``BottleneckBlock``, ``BasicStem`` and ``StandardRPNHead`` of ``model`` for its
    fused class in place (no-op without oneDNN's fused ops); returns the number of fused modules."""
    if not pointwise_available():
        return 0

    def make(m: nn.Module) -> Optional[nn.Module]:
        if FusedBottleneckBlock.fusable(m):
            return FusedBottleneckBlock.from_block(m)
        if FusedStem.fusable(m):
            return FusedStem(m.conv1)
        if FusedRPNHead.fusable(m):
            return FusedRPNHead(m.conv, m.objectness_logits, m.anchor_deltas)
        return None

    replace_submodules(model, make)
    return sum(isinstance(m, (FusedBottleneckBlock, FusedStem, FusedRPNHead)) for m in model.modules())
