"""``auto`` for the training layout switches (CHANNELS_LAST_TRAIN, FOLD_FROZEN_BN_TRAIN): their speed-up
depends on the CPU kind, so ``auto`` follows what was measured per kind (:data:`MEASURED_LAYOUTS`), guarded
by a probe of the fold on one of the model's own blocks (docs/FAST_PATH.md; docs/SPEED.md, "Training `auto`").
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from typing import Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from detectron2.modeling.backbone.resnet import BottleneckBlock

from ...config import ResNeXtConfigError
from ...hardware import CpuFeatures, cpu_kind, synchronize
from ...measured_choices import entry_for, load_choice_table, not_measured
from .folding import fold_frozen_bn_on_the_fly

__all__ = ["AUTO", "CpuFeatures", "LayoutChoice", "parse_switch", "choose_training_layout",
           "probe_training_layouts", "probe_pair", "resolve_training_layout", "CANDIDATES",
           "MEASURED_LAYOUTS", "load_measured_layouts", "table_choice"]

logger = logging.getLogger(__name__)

AUTO = "auto"
#: candidate layouts: name -> (channels_last, fold_frozen_bn)
CANDIDATES: Dict[str, Tuple[bool, bool]] = {"stock": (False, False), "channels_last": (True, False),
                                            "fold": (False, True), "channels_last+fold": (True, True)}
MEASURED_LAYOUTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "measured_layouts.json")
#: the chosen fold stays on unless the probe shows it slower than this fraction (the probe's noise)
PROBE_MARGIN = 0.03
# feature map cap of the probe: about 0.5 s in all for X-101-32x4d (one thread)
_PROBE_MAX_PIXELS = 48 * 80

_SWITCH_VALUES = {AUTO: None, **dict.fromkeys(("true", "on", "1", "yes"), True),
                  **dict.fromkeys(("false", "off", "0", "no", ""), False)}


def parse_switch(value, key: str) -> Optional[bool]:
    """A training switch value (bool, "auto", or "true"/"false"/"on"/"off" in any case): True/False,
    or None for ``auto``; :class:`ResNeXtConfigError` naming ``key`` otherwise. (On the command
    line yacs refuses ``True`` for a string key: write ``true`` or ``on``.)"""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _SWITCH_VALUES:
        return _SWITCH_VALUES[value.strip().lower()]
    raise ResNeXtConfigError(f"MODEL.RESNEXT.FAST.{key}={value!r} is not valid; use 'auto' (default), "
                             f"'on'/'off', or True/False")


@dataclasses.dataclass(frozen=True)
class LayoutChoice:
    """What ``auto`` decided, and why (one line)."""

    channels_last: bool
    fold_frozen_bn: bool
    reason: str


def load_measured_layouts(path: Optional[str] = None) -> dict:
    """The measured-layouts table (default :data:`MEASURED_LAYOUTS`); empty when missing."""
    return load_choice_table(path or MEASURED_LAYOUTS)


def probe_pair(channels_last: bool) -> Tuple[str, str]:
    """The two candidate names the fold probe compares under a layout: (without, with fold)."""
    return ("channels_last", "channels_last+fold") if channels_last else ("stock", "fold")


def _name(channels_last: bool, fold: bool) -> str:
    return next(k for k, v in CANDIDATES.items() if v == (channels_last, fold))


def table_choice(cl: Optional[bool], fold: Optional[bool], entry: Optional[Mapping], kind: str
                  ) -> Tuple[str, str]:
    """(candidate name, one-line reason) the table's ``entry`` (None: not measured) picks for
    ``kind``, given the explicit switches ``cl``, ``fold`` (None: ``auto``, which defaults to off)."""
    allowed = [k for k, (c, f) in CANDIDATES.items() if (cl is None or c == cl) and (fold is None or f == fold)]
    baseline = _name(bool(cl), bool(fold))  # the explicit switches as given, the auto ones off
    if entry is None:
        return baseline, f"{baseline} layout: {not_measured(kind)}"
    src = f"{entry.get('record', '?')}, {entry.get('preset', '?')} {'x'.join(map(str, entry.get('image', [])))}"
    if entry.get("noisy"):
        return baseline, (f"{src} is noisy (A/A {entry.get('aa_ratio')}): ignored, stock layout")
    ratios = {"stock": 1.0, **{k: float(v) for k, v in (entry.get("ratios") or {}).items() if v}}
    if baseline not in ratios:
        return baseline, f"{baseline} not measured in {src}: kept"
    noise = float(entry.get("noise", 0.05))
    measured = [k for k in allowed if k in ratios]
    best = max(measured, key=lambda k: ratios[k])
    control = ("A/A-controlled" if entry.get("control") == "aa" else
               f"no A/A control, margin = stock's own spread {100 * noise:.0f}%")
    figures = ", ".join(f"{k} {ratios[k]:.2f}x" for k in measured if k != "stock")
    if best != baseline and ratios[best] > ratios[baseline] * (1.0 + noise):
        return best, f"{best} fastest, by more than the noise {100 * noise:.0f}% ({figures} stock; {src}; {control})"
    return baseline, f"{baseline}: no candidate faster by more than the noise {100 * noise:.0f}% ({figures} stock; {src}; {control})"


def choose_training_layout(channels_last: Optional[bool], fold_frozen_bn: Optional[bool], *,
                           device_type: str, features: Optional[CpuFeatures] = None,
                           kind: Optional[str] = None, table: Optional[Mapping] = None,
                           probe: Optional[Mapping[str, float]] = None,
                           margin: float = PROBE_MARGIN) -> LayoutChoice:
    """Resolve ``auto`` (None) switches by the measured table's rule (:func:`table_choice`; stock on
    CUDA); explicit True/False are kept. ``kind`` defaults to the CPU kind of ``features`` (default: this
    machine's), ``table`` to the shipped one. ``probe``: seconds per candidate name (:func:`probe_pair`)
    or None; it turns a chosen fold off when it is ``margin`` slower, never on what the table did not choose.
    """
    if channels_last is not None and fold_frozen_bn is not None:
        return LayoutChoice(channels_last, fold_frozen_bn, "set in the config")
    if device_type != "cpu":
        return LayoutChoice(bool(channels_last), bool(fold_frozen_bn),
                            f"{device_type}: not measured (the table holds CPU kinds): stock layout")
    features = features if features is not None else CpuFeatures.detect()
    kind = kind or cpu_kind(features)
    table = table if table is not None else load_measured_layouts()
    name, reason = table_choice(channels_last, fold_frozen_bn, entry_for(table, kind), kind)
    cl, fold = CANDIDATES[name]
    if fold_frozen_bn is None and fold:  # the guard: this CPU's own per-core cost of the fold
        without, with_fold = probe_pair(cl)
        if probe is not None and without in probe and with_fold in probe:
            slower = probe[with_fold] > (1.0 + margin) * probe[without]
            fold = not slower
            reason += (f"; fold probe (one grouped block fwd+bwd, 1 thread): {1e3 * probe[with_fold]:.1f} ms "
                       f"folded vs {1e3 * probe[without]:.1f} ms: fold {'off' if slower else 'kept'} "
                       f"(off only if >= {100 * margin:.0f}% slower)")
    return LayoutChoice(cl, fold, f"CPU {kind} ({features.describe()}): {reason}")


def _probe_block(model: nn.Module) -> Optional[Tuple[str, BottleneckBlock]]:
    """A representative trainable grouped bottleneck (stride 1, identity shortcut if any)."""
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


def probe_training_layouts(model: nn.Module, cfg=None, *, rounds: int = 3,
                           candidates: Optional[Mapping[str, Tuple[bool, bool]]] = None
                           ) -> Optional[Dict[str, float]]:
    """Seconds of one forward+backward of a copy of one of ``model``'s grouped bottleneck blocks
    per candidate layout (default :data:`CANDIDATES`; best of ``rounds``, interleaved, after a
    warm-up; feature size from ``cfg``'s INPUT sizes); None without a trainable grouped block."""
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
    # On CPU: one thread, timed by its own CPU time, so other processes cost the probe nothing.
    on_cpu = device.type == "cpu"
    clock = time.thread_time if on_cpu else time.perf_counter
    threads = torch.get_num_threads()
    times = {k: float("inf") for k in runs}
    try:
        if on_cpu:
            torch.set_num_threads(1)
        for r in range(rounds + 1):
            for k, run in runs.items():
                synchronize(device)
                t = clock()
                run()
                synchronize(device)
                if r:  # round 0 warms up
                    times[k] = min(times[k], clock() - t)
    finally:
        torch.set_num_threads(threads)
    logger.debug("training layout probe on %s at %dx%d: %s", name, h, w, times)
    return times


def resolve_training_layout(model: nn.Module, cfg, channels_last, fold_frozen_bn, *,
                            features: Optional[CpuFeatures] = None,
                            probe: Union[bool, Mapping[str, float], None] = None,
                            table: Optional[Mapping] = None) -> LayoutChoice:
    """Resolve the two layout switches (:func:`parse_switch` values) for ``model`` and log the
    decision when anything was ``auto``. ``probe``: None/True runs it when the table folds,
    False runs none, a mapping gives its times."""
    cl = parse_switch(channels_last, "CHANNELS_LAST_TRAIN")
    fold = parse_switch(fold_frozen_bn, "FOLD_FROZEN_BN_TRAIN")
    if cl is not None and fold is not None:
        return LayoutChoice(cl, fold, "set in the config")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    features = features if features is not None else CpuFeatures.detect()
    kw = dict(device_type=device.type, features=features, table=table)
    choice = choose_training_layout(cl, fold, **kw, probe=probe if isinstance(probe, Mapping) else None)
    if fold is None and choice.fold_frozen_bn and probe in (None, True):
        times = probe_training_layouts(model, cfg, candidates={k: CANDIDATES[k] for k in
                                                               probe_pair(choice.channels_last)})
        choice = choose_training_layout(cl, fold, **kw, probe=times)
    logger.info("MODEL.RESNEXT.FAST auto: CHANNELS_LAST_TRAIN=%s FOLD_FROZEN_BN_TRAIN=%s (%s)",
                choice.channels_last, choice.fold_frozen_bn, choice.reason)
    return choice
