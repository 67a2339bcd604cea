"""``auto`` for the training layout switches (CHANNELS_LAST_TRAIN, FOLD_FROZEN_BN_TRAIN).

Whether channels_last and FrozenBN folding speed training up depends on the CPU kind (measured:
faster on one kind, slower on another), so ``auto`` decides from what was measured and shipped,
never from figures written into this file:

- :data:`MEASURED_LAYOUTS` (``measured_layouts.json`` beside this module) holds, per CPU kind
  (:func:`resnext_det.hardware.cpu_kind`), the measured training-iteration ratio of each
  candidate layout vs stock detectron2, the noise margin of that run and the record it comes
  from. ``benchmarks/choices.py`` renders it from the A/A-controlled records
  ``benchmarks/<kind>/train-layouts.json`` (written by ``python tools/benchmark.py --parts
  train``); it is read through the package's one loader of measured choices
  (:mod:`resnext_det.measured_choices`), so nothing here parses records and a machine takes its
  own kind's entry only.
- The rule (:func:`choose_training_layout`, a pure function of the table): the fastest
  candidate measured faster than stock by more than the run's noise; stock where this kind was
  not measured, where its run was noisy (A/A control outside its band), and on CUDA. A record
  without an A/A control is followed only beyond a wider margin: the stock path's own spread
  over the rounds (the table says which and the log line repeats it).
- The fold probe stays as a guard: when the table's choice folds FrozenBN, one forward+backward
  of a copy of one of the model's own grouped blocks, with and without the fold, one thread,
  timed by the thread's CPU time (robust to other processes), may turn the fold off when it is
  at least :data:`PROBE_MARGIN` slower on this very CPU (another model of the same kind). It
  never turns on what the table did not choose.

The decision is logged in one line naming the record it followed.
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
CANDIDATES: Dict[str, Tuple[bool, bool]] = {
    "stock": (False, False),
    "channels_last": (True, False),
    "fold": (False, True),
    "channels_last+fold": (True, True),
}
#: the shipped table the rule reads (rendered from records by ``benchmarks/choices.py``)
MEASURED_LAYOUTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "measured_layouts.json")
#: the chosen fold stays on unless the probe shows it slower than this fraction (the probe's noise)
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
        ResNeXtConfigError: any other value, naming the key and what works.
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
    raise ResNeXtConfigError(f"MODEL.RESNEXT.FAST.{key}={value!r} is not valid; use 'auto' (default), "
                             f"'on'/'off', or True/False")


@dataclasses.dataclass(frozen=True)
class LayoutChoice:
    """What ``auto`` decided, and why (one line)."""

    channels_last: bool
    fold_frozen_bn: bool
    reason: str


def load_measured_layouts(path: Optional[str] = None) -> dict:
    """The measured-layouts table (see the module docstring); no kind measured when it is missing.

    Args:
        path: the JSON file; default :data:`MEASURED_LAYOUTS`, the one shipped in the package.
    """
    return load_choice_table(path or MEASURED_LAYOUTS)


def probe_pair(channels_last: bool) -> Tuple[str, str]:
    """The two candidate names the fold probe compares under a layout: (without, with fold)."""
    return ("channels_last", "channels_last+fold") if channels_last else ("stock", "fold")


def _name(channels_last: bool, fold: bool) -> str:
    return next(k for k, v in CANDIDATES.items() if v == (channels_last, fold))


def table_choice(cl: Optional[bool], fold: Optional[bool], entry: Optional[Mapping], kind: str
                  ) -> Tuple[str, str]:
    """The candidate the table's ``entry`` for ``kind`` picks, and why.

    Args:
        cl, fold: the explicit switches (None: ``auto``; an auto switch defaults to off).
        entry: the table's entry for the kind, or None when the kind was not measured.
        kind: the CPU kind (named in the reason).

    Returns:
        (candidate name of :data:`CANDIDATES`, one-line reason naming the record).
    """
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
    """Resolve ``auto`` (None) switches from the measured table; explicit True/False are kept.

    Args:
        channels_last, fold_frozen_bn: True/False, or None for ``auto``.
        device_type: "cpu" or "cuda" (the table holds CPU kinds only).
        features: the CPU's flags (default: this machine's); decide ``kind`` when it is not given.
        kind: the CPU kind to look up (default: :func:`resnext_det.hardware.cpu_kind` of ``features``).
        table: the measured-layouts table (default: the shipped one, :func:`load_measured_layouts`).
        probe: seconds per candidate name (the two of :func:`probe_pair` for the chosen layout
            are used), or None when no probe ran.
        margin: the probe turns the chosen fold off only when it shows it this fraction slower.

    Returns:
        the resolved switches and a one-line reason naming the record followed.
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
    """Resolve the two layout switches for ``model`` (``auto`` -> the measured table, the fold
    guarded by the probe) and log the decision in one line when anything was ``auto``.

    Args:
        model: the model about to be trained.
        cfg: its config (or None).
        channels_last, fold_frozen_bn: True/False/"auto"/"on"/"off" (see :func:`parse_switch`).
        features: injected CPU features (default: this machine's).
        probe: None or True: run the probe when the table's choice folds FrozenBN; False: no
            probe; a mapping: injected probe times (seconds per candidate).
        table: injected measured-layouts table (default: the shipped one).

    Returns:
        the resolved choice.
    """
    cl = parse_switch(channels_last, "CHANNELS_LAST_TRAIN")
    fold = parse_switch(fold_frozen_bn, "FOLD_FROZEN_BN_TRAIN")
    if cl is not None and fold is not None:
        return LayoutChoice(cl, fold, "set in the config")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    features = features if features is not None else CpuFeatures.detect()
    kw = dict(device_type=device.type, features=features, table=table)
    choice = choose_training_layout(cl, fold, **kw, probe=probe if isinstance(probe, Mapping) else None)
    if fold is None and choice.fold_frozen_bn and probe in (None, True):
        # the probe only guards a fold the table chose: time that layout with and without it
        times = probe_training_layouts(model, cfg, candidates={k: CANDIDATES[k] for k in
                                                               probe_pair(choice.channels_last)})
        choice = choose_training_layout(cl, fold, **kw, probe=times)
    logger.info("MODEL.RESNEXT.FAST auto: CHANNELS_LAST_TRAIN=%s FOLD_FROZEN_BN_TRAIN=%s (%s)",
                choice.channels_last, choice.fold_frozen_bn, choice.reason)
    return choice
