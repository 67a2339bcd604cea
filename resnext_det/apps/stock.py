"""The stock detectron2 equivalent of a ResNeXt config, the baseline of every speed claim: detectron2's own
grouped-conv ResNet (``MODEL.RESNETS.NUM_GROUPS/WIDTH_PER_GROUP``) with every other setting kept, so the two
models share parameter names and shapes (``load_state_dict`` works across; :func:`stock_equivalent_cfg`).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.utils.events import EventStorage

from ..config import ResNeXtConfigError, resolve_resnext_spec

__all__ = ["stock_equivalent_cfg", "randomize_frozen_bn", "training_iteration", "seeded_global_rng"]

_STOCK_BACKBONES = {
    "build_resnext_backbone": "build_resnet_backbone",
    "build_resnext_fpn_backbone": "build_resnet_fpn_backbone",
}


def stock_equivalent_cfg(cfg):
    """A copy of ``cfg`` that builds the same network with detectron2's own ResNet code (its
    builders, ``Res5ROIHeads``, ``MODEL.RESNETS`` from the ResNeXt spec). ResNeXtConfigError: a
    block form other than "grouped" (detectron2 has only form (c)), or no ResNeXt backbone."""
    spec = resolve_resnext_spec(cfg)
    if spec.block_form != "grouped":
        raise ResNeXtConfigError(f"MODEL.RESNEXT.BLOCK_FORM={spec.block_form!r} has no stock detectron2 "
                                 "equivalent; use 'grouped'")
    out = cfg.clone()
    out.defrost()
    name = out.MODEL.BACKBONE.NAME
    if name not in _STOCK_BACKBONES:
        raise ResNeXtConfigError(f"MODEL.BACKBONE.NAME={name!r} is not a ResNeXt backbone; use one of {list(_STOCK_BACKBONES)}")
    out.MODEL.BACKBONE.NAME = _STOCK_BACKBONES[name]
    if out.MODEL.ROI_HEADS.NAME == "ResNeXtRes5ROIHeads":
        out.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
    r = out.MODEL.RESNETS
    r.DEPTH = spec.depth
    r.NUM_GROUPS = spec.cardinality
    r.WIDTH_PER_GROUP = spec.bottleneck_width
    r.STRIDE_IN_1X1 = spec.stride_in_1x1
    r.NORM = spec.norm
    r.OUT_FEATURES = list(spec.out_features)
    r.RES5_DILATION = spec.res5_dilation
    r.STEM_OUT_CHANNELS = spec.stem_out_channels
    r.RES2_OUT_CHANNELS = spec.res2_out_channels
    r.DEFORM_ON_PER_STAGE = [False] * 4
    return out


def randomize_frozen_bn(model, generator: torch.Generator):
    """Give every FrozenBatchNorm2d of ``model`` non-trivial statistics (fresh ones are the
    identity map), so stock/fast comparisons exercise BN folding. Returns ``model``."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                n = m.weight.numel()
                m.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
    return model


@contextlib.contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """Inside the block torch's global RNG (CPU, and CUDA when initialized) starts from ``seed``;
    after it the caller's state is back. For code that cannot take a generator (detectron2's
    samplers, module init)."""
    # CUDA only when initialized: forking would initialize it, seeding it uninitialized outlives the block
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed_all(seed)
        yield


def training_iteration(model, optimizer, data) -> float:
    """One training iteration (forward, backward, ``optimizer`` step) as the stock-vs-ours timings
    run it; returns the total loss before the step. The forward runs under
    ``seeded_global_rng(1)``, so every model compared samples the same anchors and proposals."""
    model.train()
    # detectron2's models log to the current storage while training
    with seeded_global_rng(1), EventStorage(0):
        losses = model(data)
    total = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return total.item()
