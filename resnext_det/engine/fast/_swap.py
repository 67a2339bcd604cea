"""Replace submodules in place: the one way the fast path changes a model's structure."""
from __future__ import annotations

from typing import Callable, Optional

from torch import nn


def replace_submodules(model: nn.Module, make: Callable[[nn.Module], Optional[nn.Module]]) -> int:
    """Swap every submodule ``m`` of ``model`` for ``make(m)`` (setattr on its parent), when
    ``make`` returns a module; ``None`` keeps ``m``. Modules are visited parents first, and a
    replacement's own children are not visited again.

    The replacement is registered under the same attribute name, so a replacement that keeps
    its original's parameters under the same attribute names keeps every parameter name.
    (detectron2 modules that also keep a plain-list alias of a child, like ``FPN.lateral_convs``,
    would still call the old child: the fast path only swaps blocks, convs inside blocks, the
    RPN head and whole trunks, none of which is aliased that way.)

    Args:
        model: the root module (never replaced itself).
        make: the factory; called once per visited submodule.

    Returns:
        the number of submodules replaced.
    """
    n = 0
    for name, child in list(model.named_children()):
        new = make(child)
        if new is None:
            n += replace_submodules(child, make)
        else:
            setattr(model, name, new)
            n += 1
    return n
