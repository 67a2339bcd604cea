"""Replace submodules in place (the one way the fast path changes a model's structure), and a
tensor's memory format."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def replace_submodules(model: nn.Module, make: Callable[[nn.Module], Optional[nn.Module]]) -> int:
    """Swap every submodule ``m`` of ``model`` for ``make(m)`` when that is not None (parents
    first, under the same attribute name; a replacement's children are not visited); returns how
    many were replaced. A plain-list alias of a child (like ``FPN.lateral_convs``) would still call
    the old one: the fast path swaps nothing aliased that way."""
    n = 0
    for name, child in list(model.named_children()):
        new = make(child)
        if new is None:
            n += replace_submodules(child, make)
        else:
            setattr(model, name, new)
            n += 1
    return n
