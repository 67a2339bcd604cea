"""The paper authors' Torch7 models (facebookresearch/ResNeXt ``models/resnext.lua``, and
fb.resnet.torch's ResNets: the same with C=1) -> detectron2 names. The top level holds the stem
conv + BN, four stage Sequentials of blocks ``Sequential{ConcatTable{main, shortcut}, CAddTable,
ReLU}`` and the classifier (dropped). ``main`` is conv1x1-BN-conv3x3 (groups=C, the stride)-BN-
conv1x1-BN (form C), or form B: C paths {conv1x1, BN, conv3x3, BN}, JoinTable, conv1x1, BN, whose
paths are merged into the grouped form (concatenating per-path weights along the output axis is
exactly the grouped conv's weight layout). ``shortcut`` is conv1x1/stride + BN or Identity.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torchfile

from .names import D2_BN_EPS
from .safe_io import WeightsError

__all__ = ["torch7_to_detectron2"]


def _is_obj(m) -> bool:
    return isinstance(m, torchfile.TorchObject)


def _name(m) -> str:
    t = m.torch_typename() if _is_obj(m) else type(m).__name__
    return t.decode() if isinstance(t, bytes) else str(t)


def _kind(m) -> str:
    return _name(m).rsplit(".", 1)[-1]


def _children(m) -> list:
    mods = m.modules if _is_obj(m) else None
    if mods is None:
        return []
    if isinstance(mods, dict):  # a table that was not list-like
        return [mods[k] for k in sorted(mods)]
    return list(mods)


def _arr(x) -> Optional[np.ndarray]:
    if x is None:
        return None
    a = np.asarray(x)
    return None if a.size == 0 else np.ascontiguousarray(a, dtype=np.float32)


class _Conv:
    def __init__(self, m, where: str):
        self.groups = int(m.groups or 1)
        w = _arr(m.weight)
        if w is None:
            raise WeightsError(f"{where}: convolution without weights")
        self.weight = w.reshape(int(m.nOutputPlane), int(m.nInputPlane) // self.groups, int(m.kH), int(m.kW))
        self.bias = _arr(m.bias)
        self.stride = int(m.dW or 1)


class _BN:
    def __init__(self, m, where: str):
        eps = float(m.eps if m.eps is not None else 1e-5)
        self.weight = _arr(m.weight)
        self.bias = _arr(m.bias)
        self.mean = _arr(m.running_mean)
        if m.running_var is not None:
            var = _arr(m.running_var).astype(np.float64)
        elif m.running_std is not None:  # nn before mid-2016 stored 1/sqrt(var + eps)
            var = 1.0 / np.square(_arr(m.running_std).astype(np.float64)) - eps
        else:
            raise WeightsError(f"{where}: batch norm without running statistics")
        self.var = (var + eps - D2_BN_EPS).astype(np.float32)
        if self.weight is None:  # affine=false
            self.weight, self.bias = np.ones_like(self.mean), np.zeros_like(self.mean)


def _concat_paths(paths: List[List[object]], where: str) -> List[object]:
    """Form B: C paths [conv1x1, BN, conv3x3, BN] -> one grouped [conv, BN, conv, BN]."""
    if any(len(p) != 4 for p in paths):
        raise WeightsError(f"{where}: a split path is not conv1x1-BN-conv3x3-BN")
    merged = []
    for j in range(4):
        ops = [p[j] for p in paths]
        out = copy.copy(ops[0])  # a conv keeps the stride
        if isinstance(out, _Conv):
            out.weight = np.concatenate([o.weight for o in ops], axis=0)
            out.bias = None if out.bias is None else np.concatenate([o.bias for o in ops])
            # conv1x1 of the paths: a plain conv over the full input; conv3x3: C groups.
            out.groups = len(ops) if j == 2 else 1
        else:
            for f in ("weight", "bias", "mean", "var"):
                setattr(out, f, np.concatenate([getattr(o, f) for o in ops]))
        merged.append(out)
    return merged


def _flatten(m, where: str) -> List[object]:
    """Convs and BNs of a branch in execution order (ReLU, JoinTable ... skipped)."""
    k = _kind(m)
    if k == "SpatialConvolution":
        return [_Conv(m, where)]
    if k == "SpatialBatchNormalization":
        return [_BN(m, where)]
    if k == "Sequential":
        return [op for c in _children(m) for op in _flatten(c, where)]
    if k == "ConcatTable":  # form B split inside the residual branch
        return _concat_paths([_flatten(c, where) for c in _children(m)], where)
    return []


def _put_conv_bn(sd: Dict[str, torch.Tensor], name: str, conv: _Conv, bn: _BN) -> None:
    mean = bn.mean
    if conv.bias is not None and np.any(conv.bias):
        mean = mean - conv.bias  # BN(x + b) with mean m == BN(x) with mean m - b
    sd[f"{name}.weight"] = torch.from_numpy(conv.weight.copy())
    sd[f"{name}.norm.weight"] = torch.from_numpy(bn.weight.copy())
    sd[f"{name}.norm.bias"] = torch.from_numpy(bn.bias.copy())
    sd[f"{name}.norm.running_mean"] = torch.from_numpy(np.ascontiguousarray(mean, np.float32))
    sd[f"{name}.norm.running_var"] = torch.from_numpy(bn.var.copy())


def _is_block(m) -> bool:
    ch = _children(m)
    return (_kind(m) == "Sequential" and len(ch) >= 2 and _kind(ch[0]) == "ConcatTable"
            and _kind(ch[1]) == "CAddTable")


def torch7_to_detectron2(model, path: str = "<t7>") -> Tuple[Dict[str, torch.Tensor], Optional[bool]]:
    """``(state dict in detectron2 names, stride_in_1x1 read from res3's first block)`` of a
    ``torchfile``-loaded fb.resnet.torch / ResNeXt model (``path`` names it in errors)."""
    if not _is_obj(model):
        raise WeightsError(f"{path}: the Torch7 file holds a {type(model).__name__}, not an nn model")
    while _kind(model) in ("DataParallelTable", "DataParallel") and _children(model):
        model = _children(model)[0]
    top = _children(model)
    sd: Dict[str, torch.Tensor] = {}
    stem_conv = next((c for c in top if _kind(c) == "SpatialConvolution"), None)
    stem_bn = next((c for c in top if _kind(c) == "SpatialBatchNormalization"), None)
    if stem_conv is None or stem_bn is None:
        raise WeightsError(f"{path}: no stem convolution + batch norm at the top level of the Torch7 model "
                           f"(found {[_name(c) for c in top]}); expected the fb.resnet.torch ImageNet layout")
    _put_conv_bn(sd, "stem.conv1", _Conv(stem_conv, path), _BN(stem_bn, path))
    stages = [c for c in top if _kind(c) == "Sequential" and _children(c) and all(_is_block(b) for b in _children(c))]
    if len(stages) != 4:
        raise WeightsError(f"{path}: found {len(stages)} residual stages, expected 4 (res2..res5) as in the "
                           "ImageNet models resnext_50_32x4d.t7 / resnext_101_*.t7 (CIFAR models are not "
                           "supported)")
    stride_in_1x1 = None
    for s, stage in enumerate(stages, start=2):
        for i, block in enumerate(_children(stage)):
            where = f"{path}: res{s}.{i}"
            main, shortcut = _children(_children(block)[0])[:2]
            ops = _flatten(main, where)
            if [type(o) for o in ops] != [_Conv, _BN] * 3:
                raise WeightsError(f"{where}: residual branch is not conv-BN-conv-BN-conv-BN")
            for k in range(3):
                _put_conv_bn(sd, f"res{s}.{i}.conv{k + 1}", ops[2 * k], ops[2 * k + 1])
            if s == 3 and i == 0:
                stride_in_1x1 = ops[0].stride > 1
            if _kind(shortcut) == "Identity":
                continue
            sc_ops = _flatten(shortcut, where)
            if [type(o) for o in sc_ops] != [_Conv, _BN]:
                raise WeightsError(f"{where}: shortcut {_name(shortcut)} is not conv1x1+BN (type B/C); the "
                                   "zero-padded type-A shortcut has no detectron2 equivalent")
            _put_conv_bn(sd, f"res{s}.{i}.shortcut", sc_ops[0], sc_ops[1])
    return sd, stride_in_1x1
