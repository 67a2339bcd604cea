"""The ``MODEL.RESNEXT`` config node: ResNeXt in the paper's own terms, its depth, cardinality C (paths /
groups) and bottleneck width d (channels per path in res2, doubling at each downsampling): "32x4d" is C=32,
d=4. Presets name the three numbers; an explicit value contradicting the preset is an error, never an override.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg as d2_get_cfg

from .config_plan import add_plan_config

logger = logging.getLogger(__name__)

__all__ = ["PRESETS", "ResNeXtSpec", "add_resnext_config", "get_cfg", "default_device",
           "resolve_resnext_spec", "ResNeXtConfigError", "UserInputError", "USER_ERRORS",
           "get_config_file"]


class UserInputError(Exception):
    """An error in what the user gave (config, flag, file, data); a command line says it in one
    line, exit status 2."""


# what command lines and the trainer report as the user's error, in one line
USER_ERRORS = (UserInputError, FileNotFoundError)


class ResNeXtConfigError(UserInputError, ValueError):
    """A config value that cannot work. The message names the key, the value and what would."""


# depth -> number of blocks in res2..res5 (the ResNet paper's bottleneck layouts).
BLOCKS_PER_STAGE: Dict[int, Tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

# name -> (depth, cardinality, bottleneck_width); "R-*": the plain ResNet baselines (C=1, d=64)
PRESETS: Dict[str, Tuple[int, int, int]] = {
    "X-50-32x4d": (50, 32, 4), "X-101-32x4d": (101, 32, 4), "X-101-32x8d": (101, 32, 8),
    "X-101-64x4d": (101, 64, 4), "X-152-32x4d": (152, 32, 4), "X-152-32x8d": (152, 32, 8),
    # Table 2 of the paper: the equal-complexity ResNeXt-50 family.
    "X-50-2x40d": (50, 2, 40), "X-50-4x24d": (50, 4, 24), "X-50-8x14d": (50, 8, 14),
    "R-50": (50, 1, 64), "R-101": (101, 1, 64), "R-152": (152, 1, 64),
}

# unset (0) values without PRESET: the paper's ResNeXt-50 32x4d template
_FALLBACK = {"DEPTH": 50, "CARDINALITY": 32, "BOTTLENECK_WIDTH": 4}

FEATURE_NAMES = ("stem", "res2", "res3", "res4", "res5")
NORMS = ("FrozenBN", "BN", "SyncBN", "GN", "nnSyncBN", "naiveSyncBN", "LN", "")
BLOCK_FORMS = ("grouped", "split", "concat")


_DEVICE_LOGGED = False


def default_device() -> str:
    """``"cuda"`` when a CUDA device is usable, else ``"cpu"`` (logged once per process)."""
    global _DEVICE_LOGGED
    if torch.cuda.is_available():
        return "cuda"
    if not _DEVICE_LOGGED:
        logger.info("MODEL.DEVICE: no CUDA device found, using cpu")
        _DEVICE_LOGGED = True
    return "cpu"


def add_resnext_config(cfg: CN) -> CN:
    """Add ``MODEL.RESNEXT`` and ``RESNEXT_PLAN`` to a detectron2 ``cfg`` (in place; also returned),
    before ``merge_from_file``. ``MODEL.DEVICE`` defaults to ``cuda`` only when one is usable."""
    cfg.MODEL.DEVICE = default_device()
    add_plan_config(cfg)
    r = cfg.MODEL.RESNEXT = CN()
    r.PRESET = ""  # a PRESETS name ("X-101-32x4d", ...); "": DEPTH/CARDINALITY/BOTTLENECK_WIDTH
    # 0 = "not set": taken from PRESET (or 50 / 32 / 4 when PRESET is empty).
    r.DEPTH = 0
    r.CARDINALITY = 0
    r.BOTTLENECK_WIDTH = 0  # d: channels per group in res2; doubles per stage
    r.NORM = "FrozenBN"
    r.STRIDE_IN_1X1 = False  # ResNeXt (FB Torch / torchvision / Caffe2) strides the 3x3 conv
    r.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    r.RES5_DILATION = 1
    r.STEM_OUT_CHANNELS = 64
    r.RES2_OUT_CHANNELS = 256
    r.BLOCK_FORM = "grouped"  # Fig. 3 of the paper: "grouped" (c), "split" (a), "concat" (b)
    r.FAST = CN()  # engine.fast
    r.FAST.INFERENCE = False  # fold FrozenBN + channels_last (+ fused oneDNN blocks) at inference
    r.FAST.PRECISION = "fp32"  # "fp32", "bf16" (CPU/CUDA), "fp16" (CUDA)
    # training switches: "auto", "on"/"off"; losses unchanged beyond rounding (engine/fast/auto.py)
    r.FAST.CHANNELS_LAST_TRAIN = "auto"  # conv weights and activations NHWC
    r.FAST.FOLD_FROZEN_BN_TRAIN = "auto"  # each conv+FrozenBN run as one conv, folded on the fly
    # off by default: it changes the loss beyond rounding; CPU only (CUDA: SOLVER.AMP.ENABLED)
    r.FAST.AUTOCAST_TRAIN = ""  # "" (off) or "bf16"
    r.FAST.MATRIX_ROI_ALIGN_TRAIN = "auto"  # RoIAlign as a sparse matrix product (auto: on CPU)
    return cfg


def get_cfg() -> CN:
    """``add_resnext_config(detectron2.config.get_cfg())``."""
    return add_resnext_config(d2_get_cfg())


def check_device(cfg: CN) -> None:
    """``MODEL.DEVICE`` names a device this machine has."""
    device = str(cfg.MODEL.DEVICE)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ResNeXtConfigError(
            f"MODEL.DEVICE={device!r} but this machine has no usable CUDA device; set "
            "MODEL.DEVICE cpu (or leave it unset: resnext_det picks cuda when present, else cpu)"
        )


@dataclasses.dataclass(frozen=True)
class ResNeXtSpec:
    """Resolved, validated description of a ResNeXt (what the builders consume)."""

    depth: int
    cardinality: int
    bottleneck_width: int
    norm: str = "FrozenBN"
    stride_in_1x1: bool = False
    out_features: Tuple[str, ...] = ("res2", "res3", "res4", "res5")
    res5_dilation: int = 1
    stem_out_channels: int = 64
    res2_out_channels: int = 256
    block_form: str = "grouped"
    freeze_at: int = 0
    preset: str = ""

    @property
    def blocks_per_stage(self) -> Tuple[int, int, int, int]:
        return BLOCKS_PER_STAGE[self.depth]

    def stage_channels(self, stage_idx: int) -> Tuple[int, int]:
        """(bottleneck_channels, out_channels) for stage 2..5."""
        scale = 2 ** (stage_idx - 2)
        return self.cardinality * self.bottleneck_width * scale, self.res2_out_channels * scale

    @property
    def name(self) -> str:
        return self.preset or f"X-{self.depth}-{self.cardinality}x{self.bottleneck_width}d"


def _err(key: str, value, allowed: str) -> ResNeXtConfigError:
    return ResNeXtConfigError(f"MODEL.RESNEXT.{key}={value!r} is not valid; {allowed}")


def resolve_resnext_spec(cfg: CN, out_features: Optional[List[str]] = None) -> ResNeXtSpec:
    """Validate ``cfg.MODEL.RESNEXT`` (+ ``MODEL.BACKBONE.FREEZE_AT``) into a :class:`ResNeXtSpec`;
    ``out_features`` overrides ``MODEL.RESNEXT.OUT_FEATURES``."""
    if "RESNEXT" not in cfg.MODEL:
        raise ResNeXtConfigError(
            "cfg.MODEL.RESNEXT is missing: call resnext_det.add_resnext_config(cfg) "
            "before merge_from_file() (or start from resnext_det.get_cfg())"
        )
    check_device(cfg)
    r = cfg.MODEL.RESNEXT
    values = {"DEPTH": int(r.DEPTH), "CARDINALITY": int(r.CARDINALITY),
              "BOTTLENECK_WIDTH": int(r.BOTTLENECK_WIDTH)}
    for key, v in values.items():
        if v < 0:
            raise _err(key, v, "use a positive integer, or 0 to take it from PRESET")
    preset = str(r.PRESET)
    if preset:
        if preset not in PRESETS:
            raise _err("PRESET", preset, f"known presets: {', '.join(PRESETS)} (or '' for explicit values)")
        depth, card, width = PRESETS[preset]
        for key, preset_v in zip(("DEPTH", "CARDINALITY", "BOTTLENECK_WIDTH"), (depth, card, width)):
            if values[key] and values[key] != preset_v:
                raise ResNeXtConfigError(
                    f"MODEL.RESNEXT.{key}={values[key]} contradicts MODEL.RESNEXT.PRESET={preset!r} "
                    f"({key}={preset_v}); leave {key} at 0 (take it from the preset), set it to "
                    f"{preset_v}, or set PRESET to '' to use explicit values"
                )
    else:
        depth, card, width = (values[k] or _FALLBACK[k] for k in ("DEPTH", "CARDINALITY", "BOTTLENECK_WIDTH"))
    if depth not in BLOCKS_PER_STAGE:
        raise _err("DEPTH", depth, f"supported depths: {sorted(BLOCKS_PER_STAGE)}")

    norm = r.NORM
    if not isinstance(norm, str) or norm not in NORMS:
        raise _err("NORM", norm, f"use one of {NORMS}")
    block_form = str(r.BLOCK_FORM)
    if block_form not in BLOCK_FORMS:
        raise _err("BLOCK_FORM", block_form, f"use one of {BLOCK_FORMS} (Fig. 3 (c), (a), (b))")

    feats = list(out_features if out_features is not None else r.OUT_FEATURES)
    if not feats:
        raise _err("OUT_FEATURES", feats, f"name at least one of {FEATURE_NAMES}")
    for f in feats:
        if f not in FEATURE_NAMES:
            raise _err("OUT_FEATURES", feats, f"{f!r} is unknown; allowed: {FEATURE_NAMES}")

    dilation = int(r.RES5_DILATION)
    if dilation not in (1, 2):
        raise _err("RES5_DILATION", dilation, "use 1 or 2")
    for key in ("STEM_OUT_CHANNELS", "RES2_OUT_CHANNELS"):
        if int(r[key]) <= 0:
            raise _err(key, r[key], "use a positive integer")

    freeze_at = int(cfg.MODEL.BACKBONE.FREEZE_AT)
    if not 0 <= freeze_at <= 5:
        raise ResNeXtConfigError(
            f"MODEL.BACKBONE.FREEZE_AT={freeze_at} is not valid; use 0 (train all) .. 5 "
            "(1 freezes the stem, k freezes the stem and res2..res{k})"
        )
    return ResNeXtSpec(depth=depth, cardinality=card, bottleneck_width=width, norm=norm,
                       stride_in_1x1=bool(r.STRIDE_IN_1X1), out_features=tuple(feats), res5_dilation=dilation,
                       stem_out_channels=int(r.STEM_OUT_CHANNELS), res2_out_channels=int(r.RES2_OUT_CHANNELS),
                       block_form=block_form, freeze_at=freeze_at, preset=preset)


def get_config_file(name: str) -> str:
    """Absolute path of a shipped YAML config ``configs/NAME``, from the repo or the installed package."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [
        os.path.join(here, "model_configs", name),  # installed package (see setup.py)
        os.path.join(os.path.dirname(here), "configs", name),  # source checkout
    ]
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise FileNotFoundError(f"config {name!r} not found; looked in: {', '.join(candidates)}")


def resolve_config_file(config_file: str) -> str:
    """``config_file`` as given when it exists, else the shipped config of that name."""
    if os.path.isfile(config_file):
        return config_file
    try:  # a shipped config's bare name
        return get_config_file(os.path.basename(config_file))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"config file {config_file!r} not found (neither as a path nor as a shipped config in "
            f"{os.path.dirname(get_config_file('Base-ResNeXt-FPN.yaml'))})") from None


def load_config(config_file: str, opts=(), add_nodes=None) -> CN:
    """The full, unfrozen config of a YAML file (path or shipped name) and ``KEY VALUE`` ``opts``, the
    set-up every command line shares; ``add_nodes(cfg)`` adds an application's nodes first."""
    path = resolve_config_file(config_file)
    cfg = get_cfg()
    if add_nodes is not None:
        add_nodes(cfg)
    try:
        cfg.merge_from_file(path)
    except (KeyError, ValueError, AssertionError) as e:  # yacs: unknown key, wrong type
        raise ResNeXtConfigError(f"config file {path!r}: {e}") from None
    opts = list(opts or [])
    if len(opts) % 2:
        raise ResNeXtConfigError(f"trailing options must be KEY VALUE pairs; {opts[-1]!r} has no value")
    try:
        cfg.merge_from_list(opts)
    except (KeyError, ValueError, AssertionError) as e:
        raise ResNeXtConfigError(f"command-line option: {e} (trailing options are KEY VALUE pairs "
                                 "of existing config keys, e.g. SOLVER.BASE_LR 0.01)") from None
    return cfg

