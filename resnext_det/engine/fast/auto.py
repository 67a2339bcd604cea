"""``auto`` for the training layout switches (CHANNELS_LAST_TRAIN, FOLD_FROZEN_BN_TRAIN).

Whether they speed training up depends on the CPU (REFERENCE.md, X-101-32x4d training
iteration at 800x1333): on an AVX2-only machine channels_last ran at 0.80x stock and
channels_last+fold at 0.84x (slower), on an AVX-512+bf16 machine at 1.23x and 1.38x.

- channels_last: from the CPU's features: on for AVX-512 with native bf16 (AVX512-BF16/AMX),
  where it was measured faster; off elsewhere (AVX2: measured slower; other CPUs and CUDA:
  not measured, so the stock layout). A probe cannot decide it: its gain is a multi-thread
  effect (one thread, one block, the probe below measured channels_last *slower* than stock on
  the AVX-512 machine where the 2-thread iteration is 1.23x faster), and 2-thread wall times
  on a shared machine varied 3x between identical runs.
- fold: it does strictly less work (FrozenBN's passes over the activation go, a weight-sized
  multiply comes) and was measured faster on both kinds (on top of channels_last: 0.80x ->
  0.84x on AVX2, 1.23x -> 1.38x on AVX-512). A short probe on the layout just chosen guards it:
  one forward+backward of a copy of one of the model's own grouped bottleneck blocks, with and
  without the fold, one thread, timed by the thread's CPU time (robust to other processes),
  best of a few interleaved rounds; the fold stays off only when the probe shows it at least
  :data:`PROBE_MARGIN` slower. (The one-thread probe understates the fold's 2-thread gain --
  1.04-1.07x vs 1.12x under channels_last on the AVX-512 machine -- so it is a guard, not a
  threshold to clear.) Without a probe (no grouped block, probe disabled) it is on, on CPU.

So ``auto`` never picks a layout measured slower than stock. The decision is logged in one
line. :func:`choose_training_layout` is a pure function of the CPU features and the probe
times, so both machine kinds' branches are testable on either machine.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
from typing import Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from detectron2.modeling.backbone.resnet import BottleneckBlock

from ...hardware import CpuFeatures, read_cpu_flags  # noqa: F401  (re-exported: the one definition)
from .folding import fold_frozen_bn_on_the_fly

__all__ = ["AUTO", "CpuFeatures", "LayoutChoice", "parse_switch", "choose_training_layout",
           "probe_training_layouts", "probe_pair", "resolve_training_layout", "CANDIDATES"]

logger = logging.getLogger(__name__)

AUTO = "auto"
#: candidate layouts: name -> (channels_last, fold_frozen_bn)
CANDIDATES: Dict[str, Tuple[bool, bool]] = {
    "stock": (False, False),
    "channels_last": (True, False),
    "fold": (False, True),
    "channels_last+fold": (True, True),
}
#: the fold stays on unless the probe shows it slower than this fraction (the probe's noise)
PROBE_MARGIN = 0.03
# feature map cap of the probe: about 0.5 s in all for X-101-32x4d (one thread)
_PROBE_MAX_PIXELS = 48 * 80

_TRUE = ("true", "on", "1", "yes")
_FALSE = ("false", "off", "0", "no", "")


def parse_switch(value, key: str) -> Optional[bool]:
    """A training switch value: True/False, or None for ``auto``.

    Args:
        value: True, False, "auto", or "true"/"false"/"on"/"off" in any case (a YAML/command-line
            string; on the command line ``True`` would be refused by yacs, which keeps the default's
            type: write ``true`` or ``on``).
        key: the config key, named in the error.

    Raises:
        ValueError: any other value, naming the key and what works.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        v = value.strip().lower()
        if v == AUTO:
            return None
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
    raise ValueError(f"MODEL.RESNEXT.FAST.{key}={value!r} is not valid; use 'auto' (default), "
                     f"'on'/'off', or True/False")


@dataclasses.dataclass(frozen=True)
class LayoutChoice:
    """What ``auto`` decided, and why (one line)."""

    channels_last: bool
    fold_frozen_bn: bool
    reason: str


def _fast_cpu(device_type: str, features: CpuFeatures) -> bool:
    return device_type == "cpu" and features.avx512f and (features.avx512_bf16 or features.amx)


def probe_pair(channels_last: bool) -> Tuple[str, str]:
    """The two candidate names the fold probe compares under a layout: (without, with fold)."""
    return ("channels_last", "channels_last+fold") if channels_last else ("stock", "fold")


def choose_training_layout(channels_last: Optional[bool], fold_frozen_bn: Optional[bool], *,
                           device_type: str, features: CpuFeatures,
                           probe: Optional[Mapping[str, float]] = None,
                           margin: float = PROBE_MARGIN) -> LayoutChoice:
    """Resolve ``auto`` (None) switches; explicit True/False are kept as given.

    Args:
        channels_last, fold_frozen_bn: True/False, or None for ``auto``.
        device_type: "cpu" or "cuda".
        features: the CPU's flags.
        probe: seconds per candidate name (keys of :data:`CANDIDATES`; the two of
            :func:`probe_pair` for the chosen layout are used), or None when no probe ran.
        margin: the fold is turned off only when the probe shows it this fraction slower.

    Returns:
        the resolved switches and a one-line reason.
    """
    if channels_last is not None and fold_frozen_bn is not None:
        return LayoutChoice(channels_last, fold_frozen_bn, "set in the config")
    fast_cpu = _fast_cpu(device_type, features)
    where = f"CPU {features.describe()}" if device_type == "cpu" else device_type
    reasons = []
    if channels_last is None:
        channels_last = fast_cpu
        reasons.append("channels_last " + (
            "on (AVX-512+bf16 CPU: training iteration measured 1.23x stock)" if fast_cpu else
            "off (AVX2-only CPU: measured 0.80x stock)" if device_type == "cpu" and not features.avx512f else
            "off (measured faster only on AVX-512+bf16 CPUs)"))
    if fold_frozen_bn is None:
        without, with_fold = probe_pair(channels_last)
        if probe is not None and without in probe and with_fold in probe:
            fold_frozen_bn = probe[with_fold] <= (1.0 + margin) * probe[without]
            reasons.append(
                f"fold {'on' if fold_frozen_bn else 'off'} (probe, one grouped block fwd+bwd, 1 thread: "
                f"{1e3 * probe[with_fold]:.1f} ms folded vs {1e3 * probe[without]:.1f} ms, "
                f"{probe[without] / probe[with_fold]:.2f}x; off only if >= {100 * margin:.0f}% slower)")
        else:
            fold_frozen_bn = device_type == "cpu"
            reasons.append("fold " + ("on (no probe; measured faster on AVX2 and AVX-512 CPUs)"
                                      if fold_frozen_bn else "off (no probe, not measured on this device)"))
    return LayoutChoice(channels_last, fold_frozen_bn, f"{where}: " + "; ".join(reasons))


def _probe_block(model: nn.Module) -> Optional[Tuple[str, BottleneckBlock]]:
    """A representative trainable grouped bottleneck: the second block of the first stage
    that has a grouped 3x3 conv and trainable weights (stride 1, identity shortcut)."""
    first = None
    for name, m in model.named_modules():
        if (isinstance(m, BottleneckBlock) and m.conv2.groups > 1 and m.conv2.weight.requires_grad):
            if first is None:
                first = (name, m)
            elif m.stride == 1 and m.shortcut is None:
                return name, m
    return first


def _feature_size(name: str, cfg) -> Tuple[int, int]:
    h, w = 800, 1333
    if cfg is not None:
        h = int(min(cfg.INPUT.MIN_SIZE_TRAIN))
        w = int(cfg.INPUT.MAX_SIZE_TRAIN) if cfg.INPUT.MAX_SIZE_TRAIN else h
        w = max(h, min(w, int(round(h * 1333 / 800))))
    stride = next((s for stage, s in (("res2", 4), ("res3", 8), ("res4", 16), ("res5", 32)) if stage in name), 8)
    h, w = max(1, -(-h // stride)), max(1, -(-w // stride))
    while h * w > _PROBE_MAX_PIXELS:
        h, w = -(-h // 2) if h > 1 else 1, -(-w // 2) if w > 1 else 1
    return h, w


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe_training_layouts(model: nn.Module, cfg=None, *, rounds: int = 3,
                           candidates: Optional[Mapping[str, Tuple[bool, bool]]] = None
                           ) -> Optional[Dict[str, float]]:
    """Time one forward+backward of a copy of one of the model's grouped bottleneck blocks in
    each candidate layout (best of ``rounds``, candidates interleaved, after one warm-up).

    Args:
        model: the model about to be trained (not changed).
        cfg: its config (INPUT.MIN_SIZE_TRAIN / MAX_SIZE_TRAIN set the probe's feature size).
        rounds: timed rounds per candidate.
        candidates: name -> (channels_last, fold); default :data:`CANDIDATES`.

    Returns:
        seconds per candidate; None when the model has no trainable grouped ``BottleneckBlock``
        (nothing representative to time).
    """
    found = _probe_block(model)
    if found is None:
        return None
    name, block = found
    device = block.conv1.weight.device
    h, w = _feature_size(name, cfg)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, block.in_channels, h, w, generator=g).to(device)
    runs = {}
    for cand, (cl, fold) in (candidates or CANDIDATES).items():
        b = copy.deepcopy(block).train()
        if fold:
            fold_frozen_bn_on_the_fly(b)
        fmt = torch.channels_last if cl else torch.contiguous_format
        b.to(memory_format=fmt)
        x = x0.contiguous(memory_format=fmt).requires_grad_(True)

        def run(b=b, x=x):
            out = b(x)
            out.backward(torch.ones_like(out))
            x.grad = None
            for p in b.parameters():
                p.grad = None

        runs[cand] = run
    # On CPU: one thread, timed by the thread's own CPU time. Other processes on a shared
    # machine then cost the probe nothing (wall time with 2 OpenMP threads on a loaded 2-core
    # host was seen to vary 3x between identical runs: a descheduled thread stalls the other at
    # every barrier); the per-core cost of each layout is what differs between CPU kinds.
    on_cpu = device.type == "cpu"
    clock = time.thread_time if on_cpu else time.perf_counter
    threads = torch.get_num_threads()
    times = {k: float("inf") for k in runs}
    try:
        if on_cpu:
            torch.set_num_threads(1)
        for r in range(rounds + 1):
            for k, run in runs.items():
                _sync(device)
                t = clock()
                run()
                _sync(device)
                if r:  # round 0 warms up
                    times[k] = min(times[k], clock() - t)
    finally:
        torch.set_num_threads(threads)
    logger.debug("training layout probe on %s at %dx%d: %s", name, h, w, times)
    return times


def resolve_training_layout(model: nn.Module, cfg, channels_last, fold_frozen_bn, *,
                            features: Optional[CpuFeatures] = None,
                            probe: Union[bool, Mapping[str, float], None] = None) -> LayoutChoice:
    """Resolve the two layout switches for ``model`` (``auto`` -> probe or CPU features) and log
    the decision in one line when anything was ``auto``.

    Args:
        model: the model about to be trained.
        cfg: its config (or None).
        channels_last, fold_frozen_bn: True/False/"auto"/"on"/"off" (see :func:`parse_switch`).
        features: injected CPU features (default: this machine's).
        probe: None or True: run the probe; False: no probe (features decide); a mapping:
            injected probe times (seconds per candidate).

    Returns:
        the resolved choice.
    """
    cl = parse_switch(channels_last, "CHANNELS_LAST_TRAIN")
    fold = parse_switch(fold_frozen_bn, "FOLD_FROZEN_BN_TRAIN")
    if cl is not None and fold is not None:
        return LayoutChoice(cl, fold, "set in the config")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    features = features if features is not None else CpuFeatures.detect()
    if isinstance(probe, Mapping):
        pass  # injected times
    elif fold is None and probe is not False:
        layout = cl if cl is not None else _fast_cpu(device.type, features)
        probe = probe_training_layouts(model, cfg, candidates={k: CANDIDATES[k] for k in probe_pair(layout)})
    else:
        probe = None
    choice = choose_training_layout(cl, fold, device_type=device.type, features=features, probe=probe)
    logger.info("MODEL.RESNEXT.FAST auto: CHANNELS_LAST_TRAIN=%s FOLD_FROZEN_BN_TRAIN=%s (%s)",
                choice.channels_last, choice.fold_frozen_bn, choice.reason)
    return choice
