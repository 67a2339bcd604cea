"""``ResNeXtCheckpointer``: detectron2's checkpointer that reads every weight source safely,
checks the config's input convention against the weights and reports what was loaded."""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs

import numpy as np

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts

from .safe_io import WeightsError
from ..io import make_atomic
from .names import TRUNK_KEY
from .sources import read_checkpoint

__all__ = ["ResNeXtCheckpointer", "InputFormatMismatchError", "LoadReport", "check_input_format",
           "load_checkpoint", "make_checkpointer", "meta_from_cfg"]

logger = logging.getLogger(__name__)


class InputFormatMismatchError(WeightsError):
    """The config feeds the weights a different input than they were trained on."""


def _stride_key(cfg) -> str:
    if "RESNEXT" in cfg.MODEL and "resnext" in str(cfg.MODEL.BACKBONE.NAME):
        return "MODEL.RESNEXT.STRIDE_IN_1X1"
    return "MODEL.RESNETS.STRIDE_IN_1X1"


def meta_from_cfg(cfg, source: str = "detectron2") -> Dict[str, Any]:
    """The input convention a config feeds its model (what a checkpoint trained with it needs)."""
    return {"source": source, "input_format": str(cfg.INPUT.FORMAT),
            "pixel_mean": [float(x) for x in cfg.MODEL.PIXEL_MEAN],
            "pixel_std": [float(x) for x in cfg.MODEL.PIXEL_STD],
            "stride_in_1x1": bool(functools.reduce(getattr, _stride_key(cfg).split("."), cfg))}


def check_input_format(cfg, meta: Optional[Dict[str, Any]], path: str = "the weights") -> bool:
    """Compare ``INPUT.FORMAT``, ``MODEL.PIXEL_MEAN/STD`` and ``STRIDE_IN_1X1`` with ``meta``: True if
    consistent, False without ``meta`` (logged); InputFormatMismatchError names both sides and the fix."""
    if not meta or meta.get("input_format") is None:
        logger.warning(f"{path} carries no input-convention metadata (e.g. a detectron2 model-zoo file): "
                       "INPUT.FORMAT / MODEL.PIXEL_MEAN / MODEL.PIXEL_STD / STRIDE_IN_1X1 "
                       "could not be checked")
        return False
    have = meta_from_cfg(cfg)
    rows: List[Tuple[str, Any, Any]] = []
    if have["input_format"] != meta["input_format"]:
        rows.append(("INPUT.FORMAT", have["input_format"], meta["input_format"]))
    for field, key in (("pixel_mean", "MODEL.PIXEL_MEAN"), ("pixel_std", "MODEL.PIXEL_STD")):
        want = meta.get(field)
        if want is not None and not np.allclose(have[field], want, rtol=0, atol=1e-3):
            rows.append((key, have[field], [float(x) for x in want]))
    want_stride = meta.get("stride_in_1x1")
    if want_stride is not None and have["stride_in_1x1"] != bool(want_stride):
        rows.append((_stride_key(cfg), have["stride_in_1x1"], bool(want_stride)))
    if not rows:
        return True
    conv = meta.get("convention", meta.get("source", "?"))
    lines = "\n".join(f"  {k}: config has {c!r}, weights need {w!r}" for k, c, w in rows)
    fix_yaml = "; ".join(f"{k}: {w!r}" for k, _, w in rows)
    fix_cli = " ".join(f"{k} \"{w!r}\"" if isinstance(w, list) else f"{k} {w}" for k, _, w in rows)
    raise InputFormatMismatchError(
        f"{path} was trained with {conv} input ({meta['input_format']}, PIXEL_MEAN "
        f"{meta.get('pixel_mean')}, PIXEL_STD {meta.get('pixel_std')}, STRIDE_IN_1X1 "
        f"{meta.get('stride_in_1x1')}), but the config differs:\n{lines}\n"
        f"Set in the config: {fix_yaml}\n(or on the command line: {fix_cli}); "
        f"a wrong input convention silently costs accuracy."
    )


@dataclasses.dataclass
class LoadReport:
    """What a load did. ``backbone_*`` count the ResNeXt trunk (stem, res2..res5)."""

    path: str
    source: str
    backbone_loaded: int
    backbone_total: int
    missing_backbone: List[str]
    missing: List[str]
    unexpected: List[str]
    wrong_shape: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]
    format_check: str  # "ok", "no cfg given", or "no metadata in the file"

    def summary(self) -> str:
        def few(xs):
            xs = [x if isinstance(x, str) else f"{x[0]} (checkpoint {x[1]}, model {x[2]})" for x in xs]
            return ", ".join(xs[:8]) + (f" ... (+{len(xs) - 8})" if len(xs) > 8 else "") if xs else "none"

        return (
            f"Loaded {self.backbone_loaded}/{self.backbone_total} backbone tensors from {self.path} "
            f"({self.source}); input format check: {self.format_check}.\n"
            f"  missing backbone tensors: {few(self.missing_backbone)}\n"
            f"  missing (whole model, {len(self.missing)}): {few(self.missing)}\n"
            f"  unexpected ({len(self.unexpected)}): {few(self.unexpected)}\n"
            f"  wrong shape ({len(self.wrong_shape)}): {few(self.wrong_shape)}"
        )


class ResNeXtCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` for every ImageNet weight source, loaded safely (docs/WEIGHTS.md). On load,
    ``cfg``'s input convention is checked against the weights' metadata (:class:`InputFormatMismatchError`);
    every save writes it. ``strict_backbone``: a :class:`WeightsError` when any trunk tensor is missing.
    ``last_report``: the last load's :class:`LoadReport`."""

    def __init__(self, model, save_dir: str = "", *, cfg=None, strict_backbone: bool = False,
                 **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        # saves and the last_checkpoint tag are atomic: a kill leaves the old or the new checkpoint
        make_atomic(self)
        self.cfg = cfg
        self.strict_backbone = strict_backbone
        self.last_report: Optional[LoadReport] = None
        self._loading_path = ""
        self._loaded_meta: Optional[Dict[str, Any]] = None

    def _load_file(self, filename: str) -> Dict[str, Any]:
        self._loading_path = filename
        ckpt = read_checkpoint(filename)
        parsed = self._parsed_url_during_load
        if parsed is not None:
            queries = parse_qs(parsed.query)
            if queries.pop("matching_heuristics", "False") == ["True"]:
                ckpt["matching_heuristics"] = True
            if queries:
                raise ValueError(f"Unsupported query remaining: {queries}, filename: {parsed.geturl()}")
        return ckpt

    def _load_model(self, checkpoint: Dict[str, Any]):
        path = self._loading_path
        meta = checkpoint.pop("meta", None)
        format_check = "no cfg given"
        if self.cfg is not None:
            format_check = "ok" if check_input_format(self.cfg, meta, path) else "no metadata in the file"
        self._loaded_meta = meta
        model_sd = self.model.state_dict()
        ckpt_sd = checkpoint["model"]
        self._convert_ndarray_to_tensor(ckpt_sd)
        if checkpoint.pop("matching_heuristics", False):
            # Suffix matching puts res2.* under backbone.bottom_up. (FPN) / backbone. (C4) and
            # res5.* under roi_heads.res5. (C4); names are already detectron2's (no c2 pass).
            ckpt_sd = align_and_update_state_dicts(model_sd, ckpt_sd, c2_conversion=False)
            checkpoint["model"] = ckpt_sd
        offered = set(ckpt_sd)
        incompatible = super()._load_model(checkpoint)

        wrong_shape = list(incompatible.incorrect_shapes)
        unexpected = []
        for k in incompatible.unexpected_keys:
            # align_and_update_state_dicts leaves a shape-mismatched tensor under its own name.
            target = next((mk for mk in model_sd if mk == k or mk.endswith("." + k)), None)
            if target is not None and tuple(model_sd[target].shape) != tuple(ckpt_sd[k].shape):
                wrong_shape.append((target, tuple(ckpt_sd[k].shape), tuple(model_sd[target].shape)))
            else:
                unexpected.append(k)
        bad = {w[0] for w in wrong_shape}
        trunk = [k for k in model_sd if TRUNK_KEY.search(k) and not k.endswith("num_batches_tracked")]
        missing_trunk = [k for k in trunk if k not in offered or k in bad]
        # the source: meta's, else __author__ (detectron2's convention: "Caffe2", "torchvision", ...)
        self.last_report = LoadReport(
            path=path, source=(meta or {}).get("source") or str(checkpoint.get("__author__") or "detectron2"),
            backbone_loaded=len(trunk) - len(missing_trunk), backbone_total=len(trunk),
            missing_backbone=missing_trunk, missing=list(incompatible.missing_keys), unexpected=unexpected,
            wrong_shape=wrong_shape, format_check=format_check)
        logger.info(self.last_report.summary())
        if self.strict_backbone and missing_trunk:
            raise WeightsError(f"{path}: {len(missing_trunk)} of {len(trunk)} backbone tensors were not "
                               f"loaded (missing or wrong shape), e.g. {missing_trunk[:5]}; "
                               "strict_backbone=True. Check that MODEL.RESNEXT (preset, C, d, widths) "
                               "matches the weights (tools/convert_weights.py --preset NAME tells what they are).")
        return incompatible

    def save(self, name: str, **kwargs: Any) -> None:
        """As detectron2's, plus ``meta``: the input convention of ``cfg`` (or of the weights
        last loaded), so loading the file later re-checks the config."""
        if "meta" not in kwargs:
            if self.cfg is not None:
                kwargs["meta"] = meta_from_cfg(self.cfg, source="detectron2 (resnext_det)")
            elif self._loaded_meta is not None:
                kwargs["meta"] = self._loaded_meta
        super().save(name, **kwargs)


def make_checkpointer(model, cfg, save_dir=None, **checkpointables) -> "ResNeXtCheckpointer":
    """The project's checkpointer for ``model`` and ``cfg``, saving under ``save_dir`` (default OUTPUT_DIR)."""
    save_dir = cfg.OUTPUT_DIR if save_dir is None else save_dir
    return ResNeXtCheckpointer(model, save_dir, cfg=cfg, **checkpointables)


def load_checkpoint(model, cfg, path: str, *, resume: bool = False):
    """Load ``path`` (any source; "" = none), or with ``resume`` OUTPUT_DIR's last checkpoint when there
    is one, into ``model``; returns the checkpoint's extra entries, as detectron2's ``resume_or_load``."""
    return make_checkpointer(model, cfg).resume_or_load(path, resume=resume)

