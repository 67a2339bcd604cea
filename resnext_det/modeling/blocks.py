"""ResNeXt blocks in the three equivalent forms of the paper's Fig. 3 (C = cardinality, d = group width).

(c) ``grouped``: 1x1 (in -> C*d), 3x3 grouped conv with C groups, 1x1 (C*d -> out). This is
    detectron2's own :class:`BottleneckBlock` with ``num_groups=C``, used as-is so parameter
    names stay those of detectron2 and Caffe2 checkpoints.
(a) ``split``: C separate paths 1x1 (in -> d), 3x3 (d -> d), 1x1 (d -> out), summed; one BN after the sum.
(b) ``concat``: C paths of 1x1 + 3x3, outputs concatenated, one 1x1 (C*d -> out).

BN is per channel, so a BN over the C*d grouped channels equals C BNs over d channels each (and (a)'s
BN after the sum equals (c)'s after conv3); a 1x1 conv over concatenated paths equals the sum of per-path
1x1 convs over each path's slice of input channels. Hence the three forms compute the same function
given mapped weights (:func:`grouped_state_to_form`).
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import CNNBlockBase, Conv2d, get_norm
from detectron2.modeling.backbone.resnet import BottleneckBlock
from fvcore.nn import weight_init

__all__ = ["GroupedBlock", "SplitBlock", "ConcatBlock", "BLOCK_CLASSES", "grouped_state_to_form"]

GroupedBlock = BottleneckBlock


def _shortcut(in_channels, out_channels, stride, norm):
    if in_channels == out_channels and stride == 1:
        return None
    sc = Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False,
                norm=get_norm(norm, out_channels))
    weight_init.c2_msra_fill(sc)
    return sc


class _PathBlockBase(CNNBlockBase):
    """Shared constructor pieces of the split and concat forms."""

    def __init__(self, in_channels, out_channels, *, bottleneck_channels, stride=1,
                 num_groups=1, norm="BN", stride_in_1x1=False, dilation=1):
        super().__init__(in_channels, out_channels, stride)
        if bottleneck_channels % num_groups:
            raise ValueError(f"bottleneck_channels={bottleneck_channels} is not divisible by the "
                             f"cardinality num_groups={num_groups}")
        self.cardinality = num_groups
        self.group_width = bottleneck_channels // num_groups
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        d = self.group_width
        self.paths = nn.ModuleList()
        for _ in range(num_groups):
            path = nn.Module()
            path.conv1 = Conv2d(in_channels, d, kernel_size=1, stride=stride_1x1, bias=False,
                                norm=get_norm(norm, d))
            path.conv2 = Conv2d(d, d, kernel_size=3, stride=stride_3x3, padding=dilation,
                                dilation=dilation, bias=False, norm=get_norm(norm, d))
            for layer in (path.conv1, path.conv2):
                weight_init.c2_msra_fill(layer)
            self.paths.append(path)

    def _path_front(self, path, x):
        return F.relu_(path.conv2(F.relu_(path.conv1(x))))

    def _finish(self, out, x):
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out + shortcut)


class SplitBlock(_PathBlockBase):
    """Fig. 3(a): C paths 1x1-3x3-1x1, summed, BN after the aggregation."""

    def __init__(self, in_channels, out_channels, *, norm="BN", **kwargs):
        super().__init__(in_channels, out_channels, norm=norm, **kwargs)
        for path in self.paths:
            path.conv3 = nn.Conv2d(self.group_width, out_channels, kernel_size=1, bias=False)
            weight_init.c2_msra_fill(path.conv3)
        self.norm3 = get_norm(norm, out_channels) or nn.Identity()

    def forward(self, x):
        out = sum(path.conv3(self._path_front(path, x)) for path in self.paths)
        return self._finish(self.norm3(out), x)


class ConcatBlock(_PathBlockBase):
    """Fig. 3(b): C paths 1x1-3x3, concatenated, one 1x1 (C*d -> out)."""

    def __init__(self, in_channels, out_channels, *, bottleneck_channels, norm="BN", **kwargs):
        super().__init__(in_channels, out_channels, bottleneck_channels=bottleneck_channels,
                         norm=norm, **kwargs)
        self.conv3 = Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=False,
                            norm=get_norm(norm, out_channels))
        weight_init.c2_msra_fill(self.conv3)

    def forward(self, x):
        out = torch.cat([self._path_front(p, x) for p in self.paths], dim=1)
        return self._finish(self.conv3(out), x)


BLOCK_CLASSES = {"grouped": GroupedBlock, "split": SplitBlock, "concat": ConcatBlock}


def _norm_keys(prefix: str, state: Dict[str, torch.Tensor]):
    return [k[len(prefix):] for k in state if k.startswith(prefix)]


def grouped_state_to_form(state: Dict[str, torch.Tensor], form: str, cardinality: int
                          ) -> Dict[str, torch.Tensor]:
    """Map a ``GroupedBlock.state_dict()`` (form (c), C = ``cardinality`` groups) to the equivalent
    one of ``form`` "split" (a), "concat" (b) or "grouped" (identity), loadable into
    ``BLOCK_CLASSES[form]`` built with the same arguments."""
    if form == "grouped":
        return dict(state)
    if form not in ("split", "concat"):
        raise ValueError(f"unknown block form {form!r}; use one of {tuple(BLOCK_CLASSES)}")
    out: Dict[str, torch.Tensor] = {}
    w1, w2, w3 = state["conv1.weight"], state["conv2.weight"], state["conv3.weight"]
    d = w1.shape[0] // cardinality
    for i in range(cardinality):
        sl = slice(i * d, (i + 1) * d)
        p = f"paths.{i}."
        out[p + "conv1.weight"] = w1[sl].clone()
        # grouped conv weight is (C*d, d, 3, 3): group i's filters are rows i*d..(i+1)*d
        out[p + "conv2.weight"] = w2[sl].clone()
        for conv in ("conv1", "conv2"):
            for k in _norm_keys(f"{conv}.norm.", state):
                v = state[f"{conv}.norm.{k}"]
                out[f"{p}{conv}.norm.{k}"] = v[sl].clone() if v.dim() == 1 else v.clone()
        if form == "split":
            out[p + "conv3.weight"] = w3[:, sl].clone()
    if form == "concat":
        out["conv3.weight"] = w3.clone()
    for k in _norm_keys("conv3.norm.", state):
        out[("norm3." if form == "split" else "conv3.norm.") + k] = state["conv3.norm." + k].clone()
    for k, v in state.items():
        if k.startswith("shortcut."):
            out[k] = v.clone()
    return out
