"""FrozenBN folding: once into the conv for inference, on the fly (live) for training. FrozenBN is a fixed
affine map ``y*s + t`` with ``s = gamma/sqrt(var+eps)`` and ``t = beta - mean*s`` (all buffers, never
trained), so ``norm(conv(x, w, b)) == conv(x, w*s, b*s + t)``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from detectron2.layers import Conv2d, FrozenBatchNorm2d

from ._swap import memory_format_of, replace_submodules

__all__ = ["fold_frozen_bn", "FrozenBNFoldedConv2d", "fold_frozen_bn_on_the_fly"]


def _is_foldable_norm(norm: nn.Module) -> bool:
    # a BatchNorm in eval mode with running stats is an affine map too
    return isinstance(norm, FrozenBatchNorm2d) or (
        isinstance(norm, nn.BatchNorm2d) and not norm.training and norm.track_running_stats)


@torch.no_grad()
def fold_frozen_bn(model: nn.Module) -> int:
    """Fold the FrozenBN (or eval-mode BatchNorm2d) of each detectron2 ``Conv2d`` into it, in place
    and in float64: ``w' = w*s``, ``b' = (b-mean)*s + beta``, ``norm`` None. Returns the count."""
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
        module.weight = nn.Parameter(new_w.contiguous(memory_format=memory_format_of(w)),
                                     requires_grad=w.requires_grad)
        module.bias = nn.Parameter(new_bias.to(w.dtype), requires_grad=w.requires_grad)
        module.norm = None
        count += 1
    return count


class FrozenBNFoldedConv2d(Conv2d):
    """A detectron2 ``Conv2d`` + ``FrozenBatchNorm2d`` computed as ONE conv, the FrozenBN folded into its
    weight and bias at every call (for training): one weight-sized multiply instead of FrozenBN's passes
    over the activation. It holds the original's ``weight``, ``bias`` and ``norm`` under the same names,
    so state_dict keys and the optimizer's parameters are unchanged. Tracing, scripting and empty inputs
    take detectron2's conv-then-norm path.
    """

    @classmethod
    def from_conv(cls, conv: Conv2d) -> "FrozenBNFoldedConv2d":
        """The folded form of ``conv`` (norm a ``FrozenBatchNorm2d``), sharing its parameters."""
        if not isinstance(conv.norm, FrozenBatchNorm2d):
            raise TypeError(f"FrozenBNFoldedConv2d needs a Conv2d with FrozenBatchNorm2d, got norm={conv.norm!r}")
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                  padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                  bias=conv.bias is not None, padding_mode=conv.padding_mode,
                  norm=conv.norm, activation=conv.activation, device="meta")
        new.weight = conv.weight  # the same Parameter objects: nothing to copy, nothing renamed
        new.bias = conv.bias
        new.train(conv.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.norm
        if torch.jit.is_tracing() or torch.jit.is_scripting() or x.numel() == 0:
            return super().forward(x)
        with torch.no_grad():  # FrozenBN's buffers are constants
            scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
            shift = norm.bias - norm.running_mean * scale
        scale = scale.to(self.weight.dtype)
        w = self.weight * scale.reshape(-1, 1, 1, 1)
        b = shift.to(self.weight.dtype)
        if self.bias is not None:
            b = self.bias * scale + b
        out = self._conv_forward(x, w, b)
        if self.activation is not None:
            out = self.activation(out)
        return out


def fold_frozen_bn_on_the_fly(model: nn.Module) -> int:
    """Swap every detectron2 ``Conv2d`` + ``FrozenBatchNorm2d`` of ``model`` for a
    :class:`FrozenBNFoldedConv2d` in place; returns the number of folded convs in the model."""
    def make(m: nn.Module) -> Optional[nn.Module]:
        if type(m) is Conv2d and isinstance(m.norm, FrozenBatchNorm2d):
            return FrozenBNFoldedConv2d.from_conv(m)
        return None

    replace_submodules(model, make)
    return sum(isinstance(m, FrozenBNFoldedConv2d) for m in model.modules())
