"""Memory format and reduced precision of the conv trunks. channels_last needs no wrapper: NHWC weights
make oneDNN/cuDNN return NHWC activations. Reduced precision needs a scope: :class:`AutocastTrunk` runs a
trunk (backbone, C4 res5) under ``torch.autocast`` and returns fp32, so the heads, NMS and losses stay fp32.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

__all__ = ["AutocastTrunk", "autocast_trunk", "autocast_trunks", "trunks_of", "to_fp32"]

_CHILD = "trunk"  # the wrapped module's attribute name (absent from state_dict keys, see below)


def to_fp32(out):
    """``out`` (tensors in dicts/lists/tuples) with its floating tensors cast to fp32."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return {k: to_fp32(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(to_fp32(v) for v in out)
    return out


def _drop_child_level(module, state_dict, prefix, local_metadata) -> None:
    # state_dict post-hook: "<prefix>trunk.x" -> "<prefix>x" (they are written last: order kept)
    inner = prefix + _CHILD + "."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)


def _add_child_level(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                     error_msgs) -> None:
    # load_state_dict pre-hook, the inverse (keys already carrying the level pass unchanged)
    inner = prefix + _CHILD + "."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix):]] = state_dict.pop(key)


class AutocastTrunk(nn.Module):
    """A trunk run under ``torch.autocast(device_type, dtype)`` (``dtype`` None: no autocast), a 4-D
    input made channels_last first when ``channels_last``, floating outputs cast back to fp32. Its
    state_dict leaves the child level ``trunk`` out (checkpoints keep the stock keys); missing attributes
    are read from the trunk (``size_divisibility``, ``output_shape()``); an ``AutocastTrunk`` is re-set, not nested.
    """

    def __init__(self, trunk: nn.Module, device_type: str, dtype: Optional[torch.dtype],
                 channels_last: bool = False):
        super().__init__()
        if isinstance(trunk, AutocastTrunk):
            trunk = trunk.trunk
        self.trunk = trunk
        self.autocast_device_type = device_type
        self.autocast_dtype = dtype
        self.channels_last = bool(channels_last)
        self.register_state_dict_post_hook(_drop_child_level)
        self.register_load_state_dict_pre_hook(_add_child_level)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # parameters, buffers, children (the trunk itself)
        except AttributeError:
            modules = self.__dict__.get("_modules")
            if not modules or _CHILD not in modules or name.startswith("__"):
                raise  # half-built (unpickling, deepcopy) or a dunder: no delegation
            return getattr(modules[_CHILD], name)

    def forward(self, x, *args, **kwargs):
        if self.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is None:
            return self.trunk(x, *args, **kwargs)
        with torch.autocast(device_type=self.autocast_device_type, dtype=self.autocast_dtype):
            out = self.trunk(x, *args, **kwargs)
        return to_fp32(out)

    def extra_repr(self) -> str:
        return f"device_type={self.autocast_device_type}, dtype={self.autocast_dtype}, " \
               f"channels_last={self.channels_last}"


def autocast_trunk(module: nn.Module, device_type: str, dtype: Optional[torch.dtype],
                   channels_last: bool = False) -> AutocastTrunk:
    """``module`` wrapped in an :class:`AutocastTrunk` (same parameter objects); swap it in."""
    return AutocastTrunk(module, device_type, dtype, channels_last)


def trunks_of(model: nn.Module) -> List[Tuple[Optional[nn.Module], str, nn.Module]]:
    """``(parent, attribute, trunk)`` of the backbone (parent None for a bare backbone) and the C4
    head's res5: the trunks that run under reduced precision."""
    backbone = getattr(model, "backbone", None)
    has_backbone = isinstance(backbone, nn.Module) and not isinstance(model, AutocastTrunk)
    parts: List[Tuple[Optional[nn.Module], str, nn.Module]] = [
        (model, "backbone", backbone) if has_backbone else (None, "", model)]
    roi_heads = getattr(model, "roi_heads", None)
    res5 = getattr(roi_heads, "res5", None)
    if isinstance(res5, nn.Module):
        parts.append((roi_heads, "res5", res5))
    return parts


def autocast_trunks(model: nn.Module, device_type: str, dtype: Optional[torch.dtype],
                    channels_last: bool = False) -> nn.Module:
    """Wrap every trunk of ``model`` (:func:`trunks_of`) in place; returns ``model``, or for a bare
    backbone its :class:`AutocastTrunk`."""
    root = model
    for parent, name, trunk in trunks_of(model):
        new = autocast_trunk(trunk, device_type, dtype, channels_last)
        if parent is None:
            root = new
        else:
            setattr(parent, name, new)
    return root
