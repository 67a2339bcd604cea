"""Memory format and reduced precision of the conv trunks.

channels_last needs no wrapper: once a conv's weight is stored NHWC, oneDNN (and cuDNN) pick
their NHWC kernels and return NHWC activations, so the layout flows from the first conv on.
Reduced precision needs a scope: :func:`autocast_trunk` gives a trunk (the backbone, the C4
head's res5) the class ``Autocast<TrunkClass>``, which runs the trunk's own forward under
``torch.autocast`` and returns fp32 outputs, so box decoding, NMS, RoIAlign, the box head and
the losses stay fp32.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Tuple

import torch
from torch import nn

__all__ = ["AutocastTrunk", "autocast_trunk", "trunks_of", "to_fp32"]


def to_fp32(out):
    """Floating tensors in ``out`` (a tensor, or dicts/lists/tuples of them) cast to fp32."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return {k: to_fp32(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(to_fp32(v) for v in out)
    return out


class AutocastTrunk(nn.Module):
    """Mixin in front of a trunk's class (``Autocast<Name>(AutocastTrunk, Name)``): the trunk's
    own forward under ``torch.autocast(autocast_device_type, autocast_dtype)``, the input made
    channels_last first when ``channels_last`` is set, floating outputs cast back to fp32.

    Made by :func:`autocast_trunk`, which gives the new object the original's parameters,
    buffers and children under the same names (so checkpoints and optimizer parameter names
    are those of the stock model) and keeps ``isinstance`` true for the original class.
    """

    autocast_device_type: str = "cpu"
    autocast_dtype: Optional[torch.dtype] = None
    channels_last: bool = False

    @property
    def trunk_class(self) -> type:
        """The original class of the trunk (what the autocast scope wraps)."""
        return type(self).__mro__[2]

    def forward(self, x, *args, **kwargs):
        if self.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is None:
            return super().forward(x, *args, **kwargs)
        with torch.autocast(device_type=self.autocast_device_type, dtype=self.autocast_dtype):
            out = super().forward(x, *args, **kwargs)
        return to_fp32(out)

    def __reduce_ex__(self, protocol):
        # The class is made at run time: pickle (torch.save of a whole model, deepcopy) rebuilds
        # it from the importable trunk class.
        return (_new_autocast_trunk, (self.trunk_class,), self.__dict__)


@functools.lru_cache(maxsize=None)
def _autocast_class(trunk_class: type) -> type:
    return type(f"Autocast{trunk_class.__name__}", (AutocastTrunk, trunk_class),
                {"__module__": __name__, "__doc__": f"{trunk_class.__name__} under autocast, fp32 outputs "
                                                    f"(see AutocastTrunk)."})


def _new_autocast_trunk(trunk_class: type) -> nn.Module:
    cls = _autocast_class(trunk_class)
    return cls.__new__(cls)


def autocast_trunk(module: nn.Module, device_type: str, dtype: Optional[torch.dtype],
                   channels_last: bool = False) -> nn.Module:
    """``module`` as an ``Autocast<Class>`` (see :class:`AutocastTrunk`): a new module object
    holding the same parameters, buffers and children (no copy, same names). Swap it in where
    ``module`` was; the old object is no longer needed.

    Args:
        module: a trunk (backbone, C4 res5) or an ``AutocastTrunk`` made earlier (re-set).
        device_type: "cpu" or "cuda".
        dtype: torch.bfloat16 / torch.float16, or None (no autocast; only the layout).
        channels_last: convert a 4-D input to channels_last before the trunk runs.

    Returns:
        the new module.
    """
    trunk_class = module.trunk_class if isinstance(module, AutocastTrunk) else type(module)
    new = _new_autocast_trunk(trunk_class)
    new.__dict__.update(module.__dict__)
    new.autocast_device_type, new.autocast_dtype, new.channels_last = device_type, dtype, channels_last
    return new


def trunks_of(model: nn.Module) -> List[Tuple[Optional[nn.Module], str, nn.Module]]:
    """The conv trunks that run under reduced precision: ``(parent, attribute, trunk)`` for the
    backbone (parent None when ``model`` is itself a bare backbone) and the C4 head's res5."""
    parts: List[Tuple[Optional[nn.Module], str, nn.Module]] = []
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        parts.append((model, "backbone", backbone))
    else:
        parts.append((None, "", model))
    roi_heads = getattr(model, "roi_heads", None)
    res5 = getattr(roi_heads, "res5", None)
    if isinstance(res5, nn.Module):
        parts.append((roi_heads, "res5", res5))
    return parts


def autocast_trunks(model: nn.Module, device_type: str, dtype: Optional[torch.dtype],
                    channels_last: bool = False) -> nn.Module:
    """Give every trunk of ``model`` (see :func:`trunks_of`) its autocast scope, in place.

    Args:
        model: a detectron2 model or a bare backbone.
        device_type, dtype, channels_last: as :func:`autocast_trunk`.

    Returns:
        ``model``, or for a bare backbone its ``Autocast<Class>`` replacement.
    """
    root = model
    for parent, name, trunk in trunks_of(model):
        new = autocast_trunk(trunk, device_type, dtype, channels_last)
        if parent is None:
            root = new
        else:
            setattr(parent, name, new)
    return root
