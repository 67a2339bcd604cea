"""``auto`` for the training layout switches (CHANNELS_LAST_TRAIN, FOLD_FROZEN_BN_TRAIN).

Whether channels_last and the on-the-fly FrozenBN fold speed training up depends on the CPU
(REFERENCE.md, X-101-32x4d training iteration at 800x1333): on an AVX2-only machine
channels_last ran at 0.80x stock and +fold at 0.84x (slower), on an AVX-512+bf16 machine at
1.23x and 1.38x. ``auto`` therefore times the real choice where it can: a short probe, one
forward+backward of one of the model's own grouped bottleneck blocks (deep-copied, batch 1, at
the feature size of the configured training images, capped) in each candidate layout,
interleaved, best of a few rounds; a candidate is taken only when it beats stock by a margin,
so ``auto`` never picks something measured slower than stock. Without a probe (no grouped
block in the model, or probe disabled) the CPU's features decide: AVX-512 with native bf16
(AVX512-BF16/AMX) -> both on; otherwise stock. The decision is logged in one line.

The decision itself (:func:`choose_training_layout`) is a pure function of the CPU features
and the probe times, so both machine kinds' branches are testable on either machine.
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

from .folding import fold_frozen_bn_on_the_fly

__all__ = ["AUTO", "CpuFeatures", "LayoutChoice", "parse_switch", "choose_training_layout",
           "probe_training_layouts", "CANDIDATES"]

logger = logging.getLogger(__name__)

AUTO = "auto"
#: candidate layouts: name -> (channels_last, fold_frozen_bn)
CANDIDATES: Dict[str, Tuple[bool, bool]] = {
    "stock": (False, False),
    "channels_last": (True, False),
    "fold": (False, True),
    "channels_last+fold": (True, True),
}
#: a candidate must beat stock by this fraction in the probe to be picked (noise guard)
PROBE_MARGIN = 0.05
_PROBE_MAX_PIXELS = 96 * 160  # feature map cap of the probe (keeps it well under a second)

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
class CpuFeatures:
    """The CPU flags that decide the layout (Linux ``/proc/cpuinfo`` flag names)."""

    avx2: bool = False
    avx512f: bool = False
    avx512_bf16: bool = False
    amx: bool = False

    @classmethod
    def detect(cls) -> "CpuFeatures":
        """This machine's flags (from ``/proc/cpuinfo``; else from torch's CPU capability)."""
        flags = set()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("flags"):
                        flags = set(line.split(":", 1)[1].split())
                        break
        except OSError:
            pass
        if not flags:  # not Linux: torch knows the vector ISA it dispatches to
            cap = torch.backends.cpu.get_cpu_capability()
            return cls(avx2=cap in ("AVX2", "AVX512") or "AMX" in cap, avx512f=cap.startswith("AVX512"),
                       avx512_bf16="BF16" in cap or "AMX" in cap, amx="AMX" in cap)
        return cls(avx2="avx2" in flags, avx512f="avx512f" in flags, avx512_bf16="avx512_bf16" in flags,
                   amx=any(f.startswith("amx") for f in flags))

    def describe(self) -> str:
        names = [f.name for f in dataclasses.fields(self) if getattr(self, f.name)]
        return " ".join(names) or "no AVX2"


@dataclasses.dataclass(frozen=True)
class LayoutChoice:
    """What ``auto`` decided, and why (one line)."""

    channels_last: bool
    fold_frozen_bn: bool
    reason: str


def choose_training_layout(channels_last: Optional[bool], fold_frozen_bn: Optional[bool], *,
                           device_type: str, features: CpuFeatures,
                           probe: Optional[Mapping[str, float]] = None,
                           margin: float = PROBE_MARGIN) -> LayoutChoice:
    """Resolve ``auto`` (None) switches; explicit True/False are kept as given.

    Args:
        channels_last, fold_frozen_bn: True/False, or None for ``auto``.
        device_type: "cpu" or "cuda".
        features: the CPU's flags (only used on CPU without probe times).
        probe: seconds per candidate name (keys of :data:`CANDIDATES`, "stock" required), or
            None when no probe ran.
        margin: a candidate must be at least this fraction faster than stock to be chosen.

    Returns:
        the resolved switches and a one-line reason.
    """
    if channels_last is not None and fold_frozen_bn is not None:
        return LayoutChoice(channels_last, fold_frozen_bn, "set in the config")
    # the candidates consistent with the explicitly set switch
    allowed = {name: cf for name, cf in CANDIDATES.items()
               if (channels_last is None or cf[0] == channels_last)
               and (fold_frozen_bn is None or cf[1] == fold_frozen_bn)}
    if probe is not None and "stock" in probe:
        times = {k: v for k, v in probe.items() if k in allowed}
        base = probe["stock"]
        # the baseline among the allowed: stock itself, or the explicit switch with auto off
        fallback = min(allowed, key=lambda k: sum(allowed[k]))
        best = min(times, key=times.get) if times else fallback
        pick = best if times.get(best, base) < (1.0 - margin) * times.get(fallback, base) else fallback
        cl, fold = allowed[pick]
        measured = ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in sorted(probe.items(), key=lambda kv: kv[1]))
        reason = (f"probe (one grouped block fwd+bwd): {measured}; picked {pick} "
                  f"({probe['stock'] / probe.get(pick, base):.2f}x stock; >= {100 * margin:.0f}% gain needed)")
        return LayoutChoice(cl, fold, reason)
    fast_cpu = device_type == "cpu" and features.avx512f and (features.avx512_bf16 or features.amx)
    want = fast_cpu  # measured (REFERENCE.md): 1.23x / 1.38x there, 0.80x / 0.84x on AVX2-only
    cl = channels_last if channels_last is not None else want
    fold = fold_frozen_bn if fold_frozen_bn is not None else want
    why = ("AVX-512 with native bf16: channels_last+fold measured 1.38x stock there" if fast_cpu else
           "no probe and not an AVX-512+bf16 CPU (AVX2-only: channels_last measured 0.80x, +fold 0.84x): "
           "stock layout" if device_type == "cpu" else f"no probe on {device_type}: stock layout")
    return LayoutChoice(cl, fold, f"CPU {features.describe()}: {why}")


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
    times = {k: float("inf") for k in runs}
    for r in range(rounds + 1):
        for k, run in runs.items():
            _sync(device)
            t = time.perf_counter()
            run()
            _sync(device)
            if r:  # round 0 warms up
                times[k] = min(times[k], time.perf_counter() - t)
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
    if probe is None or probe is True:
        probe = probe_training_layouts(model, cfg)
    elif probe is False:
        probe = None
    choice = choose_training_layout(cl, fold, device_type=device.type, features=features, probe=probe)
    logger.info("MODEL.RESNEXT.FAST auto: CHANNELS_LAST_TRAIN=%s FOLD_FROZEN_BN_TRAIN=%s (%s)",
                choice.channels_last, choice.fold_frozen_bn, choice.reason)
    return choice
