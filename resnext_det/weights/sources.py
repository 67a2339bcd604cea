"""Every ImageNet weight source -> detectron2 parameter names + the input convention it implies
(:data:`INPUT_CONVENTIONS`, in 0..255 pixel units; docs/WEIGHTS.md). Names are detectron2's bottom-up
ones without a model prefix (``res2.0.shortcut.weight``), as its own converters write them; its suffix
matching (``align_and_update_state_dicts``) places them under the FPN, C4 trunk or C4 head.
"""
from __future__ import annotations

import copy
import logging
import os
import pickle
import re
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from detectron2.checkpoint.c2_model_loading import convert_basic_c2_names, convert_c2_detectron_names
from tqdm import tqdm

from ..config import BLOCKS_PER_STAGE, PRESETS
from ..io import atomic_open
from .names import D2_BN_EPS, from_torchvision_name
from .safe_io import SUPPORTED, WeightsError, safe_load, sniff_format
from .torch7 import torch7_to_detectron2

__all__ = [
    "INPUT_CONVENTIONS",
    "read_checkpoint",
    "convert_to_detectron2",
    "infer_architecture",
    "save_converted",
]

logger = logging.getLogger(__name__)

_TV_MEAN, _TV_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
_C2_MEAN = [103.53, 116.28, 123.675]

INPUT_CONVENTIONS: Dict[str, Dict[str, Any]] = {
    "torchvision": dict(input_format="RGB", pixel_mean=_TV_MEAN, pixel_std=_TV_STD, stride_in_1x1=False),
    "timm": dict(input_format="RGB", pixel_mean=_TV_MEAN, pixel_std=_TV_STD, stride_in_1x1=False),
    # Torch7: RGB in [0,1] normalised by ImageNet mean/std == torchvision's, in 0..255 units.
    "torch7": dict(input_format="RGB", pixel_mean=_TV_MEAN, pixel_std=_TV_STD, stride_in_1x1=False),
    "caffe2-msra": dict(input_format="BGR", pixel_mean=_C2_MEAN, pixel_std=[1.0, 1.0, 1.0], stride_in_1x1=True),
    "caffe2-fair": dict(input_format="BGR", pixel_mean=_C2_MEAN, pixel_std=[57.375, 57.12, 58.395],
                        stride_in_1x1=False),
    "caffe2-fair-gn": dict(input_format="BGR", pixel_mean=_C2_MEAN, pixel_std=[1.0, 1.0, 1.0],
                           stride_in_1x1=False),
}


def _to_tensor(v):
    return torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v


def _progress(items, enabled: bool, desc: str):
    return tqdm(items, desc=desc, unit="tensor", leave=False) if enabled else items


_CLASSIFIER = re.compile(r"^(fc|linear|pred|head\.fc|classifier)[._]")


def _convert_torchvision(sd: Dict[str, Any], path: str, progress: bool):
    out, dropped, unknown = {}, [], []
    for k in _progress(sorted(sd), progress, "renaming"):
        if k.endswith("num_batches_tracked"):
            continue
        if _CLASSIFIER.match(k):
            dropped.append(k)
            continue
        name = from_torchvision_name(k)
        if name is None:
            unknown.append(k)
        else:
            out[name] = _to_tensor(sd[k])
    if unknown:
        raise WeightsError(f"{path}: {len(unknown)} tensors have names outside the torchvision/timm "
                           f"ResNet layout (e.g. {unknown[:5]}); only plain ResNet/ResNeXt bottleneck models "
                           "(conv1, bn1, layerN.i.convK/bnK, downsample.0/1, fc) convert. Deep-stem / SE / "
                           "BasicBlock variants are not ResNeXt backbones this project builds.")
    if not any(k.endswith("conv3.weight") for k in out):
        raise WeightsError(f"{path}: no bottleneck blocks found (BasicBlock ResNet-18/34 is not supported)")
    return out, dropped


def _convert_caffe2(blobs: Dict[str, Any], path: str, progress: bool):
    blobs = {k: v for k, v in blobs.items() if not k.endswith("_momentum") and isinstance(v, np.ndarray)}
    detection = any(k.startswith(("rpn_", "conv_rpn", "fpn_", "cls_score", "bbox_pred")) for k in blobs)
    keys = sorted(blobs)
    orig_of = dict(zip(convert_basic_c2_names(keys), keys))
    if detection:  # a Detectron detection model: detectron2's full renaming (heads, FPN, RPN)
        renamed, _ = convert_c2_detectron_names({k: _to_tensor(v) for k, v in blobs.items()})
    else:
        renamed = {new: _to_tensor(blobs[old])
                   for new, old in _progress(orig_of.items(), progress, "renaming")}
    dropped = [k for k in renamed if k.startswith(("linear.", "pred."))] if not detection else []
    out = {k: v for k, v in renamed.items() if k not in dropped}
    # Caffe2 ImageNet models fold BN into an AffineChannel (``*_bn_s``, ``*_bn_b``): give
    # detectron2's BN the neutral statistics under which it computes that same affine
    for k in list(out):
        if k.endswith("norm.weight") and str(orig_of.get(k, "")).endswith("_bn_s"):
            prefix = k[: -len("weight")]
            if prefix + "running_mean" not in out:
                n = out[k].shape[0]
                out[prefix + "running_mean"] = torch.zeros(n)
                # running_var = 1 - eps makes x * scale / sqrt(var + eps) exactly x * scale
                out[prefix + "running_var"] = torch.full((n,), 1.0 - D2_BN_EPS)
    return out, dropped


def _caffe2_convention(blobs: Dict[str, Any]) -> str:
    if any("_gn_" in k for k in blobs):
        return "caffe2-fair-gn"
    a, b = blobs.get("res2_0_branch2a_w"), blobs.get("res2_0_branch2b_w")
    if a is not None and b is not None and a.shape[0] != b.shape[1]:
        return "caffe2-fair"  # grouped 3x3: FAIR ResNeXt (stride on the 3x3)
    return "caffe2-msra"


def _unwrap(obj: Any, path: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(flat state dict, the wrapper's other entries)."""
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict; expected one of: {SUPPORTED}")
    for key in ("model", "state_dict", "model_state", "module"):
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(k, str) for k in inner):
            return dict(inner), {k: v for k, v in obj.items() if k != key}
    if "blobs" in obj and isinstance(obj["blobs"], dict):  # Detectron detection model
        return dict(obj["blobs"]), {k: v for k, v in obj.items() if k != "blobs"}
    return dict(obj), {}


def _classify(sd: Dict[str, Any]) -> str:
    if any(re.match(r"^layer[1-4]\.\d+\.", k) for k in sd):
        return "torchvision"
    if any(re.match(r"^res\d_\d+_branch", k) or k.startswith("res_conv1_") for k in sd):
        return "caffe2"
    if any(re.search(r"(?:^|\.)(stem\.conv1|res[2-5]\.\d+\.conv1)\.weight$", k) for k in sd):
        return "detectron2"
    return "unknown"


def infer_architecture(sd: Dict[str, Any]) -> Dict[str, Any]:
    """Depth, cardinality C, bottleneck width d and widths of a detectron2-named state dict (bare or
    prefixed names); ``{}`` when the trunk is not complete enough to tell."""
    blocks = {s: 0 for s in range(2, 6)}
    conv = {}
    for k, v in sd.items():
        m = re.search(r"(?:^|\.)res([2-5])\.(\d+)\.(conv[123]|shortcut)\.weight$", k)
        if m:
            s, i = int(m[1]), int(m[2])
            blocks[s] = max(blocks[s], i + 1)
            conv[(s, i, m[3])] = tuple(v.shape)
        elif re.search(r"(?:^|\.)stem\.conv1\.weight$", k):
            conv["stem"] = tuple(v.shape)
    c2, c3 = conv.get((2, 0, "conv2")), conv.get((2, 0, "conv3"))
    if c2 is None or not c3 or len(c2) != 4 or not c2[1]:
        return {}
    arch = {
        "blocks_per_stage": [blocks[s] for s in range(2, 6)],
        "cardinality": c2[0] // c2[1],
        "bottleneck_width": c2[1],
        "res2_out_channels": c3[0],
        "stem_out_channels": conv["stem"][0] if "stem" in conv else None,
    }
    arch["depth"] = next((d for d, b in BLOCKS_PER_STAGE.items() if list(b) == arch["blocks_per_stage"]), None)
    arch["preset"] = next((name for name, spec in PRESETS.items()
                           if spec == (arch["depth"], arch["cardinality"], c2[1])
                           and arch["res2_out_channels"] == 256 and arch["stem_out_channels"] == 64), "")
    return arch


def _checked_architecture(sd: Dict[str, Any], preset: Optional[str], path: str) -> Dict[str, Any]:
    """:func:`infer_architecture` of ``sd``, which must be ``preset``'s when one is given."""
    arch = infer_architecture(sd)
    if not preset:
        return arch
    if preset not in PRESETS:
        raise WeightsError(f"--preset {preset!r} is unknown; known presets: {', '.join(PRESETS)}")
    if not arch:
        raise WeightsError(f"{path}: cannot tell the architecture of these weights to compare with preset {preset!r}")
    want = PRESETS[preset]
    have = (arch["depth"], arch["cardinality"], arch["bottleneck_width"])
    if have != want or arch["res2_out_channels"] != 256 or arch["stem_out_channels"] != 64:
        got = arch["preset"] or (f"depth {arch['depth']} (blocks {arch['blocks_per_stage']}), "
                                 f"C={arch['cardinality']}, d={arch['bottleneck_width']}, "
                                 f"res2 width {arch['res2_out_channels']}")
        raise WeightsError(f"{path}: the weights are {got}, not preset {preset!r} (depth {want[0]}, "
                           f"C={want[1]}, d={want[2]}); pass the matching --preset or none")
    return arch


def _meta(source: str, convention: str, path: str, arch: Dict[str, Any], **extra) -> Dict[str, Any]:
    meta: Dict[str, Any] = {"source": source, "original_file": os.path.basename(path),
                            **copy.deepcopy(INPUT_CONVENTIONS[convention]), "convention": convention}
    if arch:
        meta["architecture"] = arch
    meta.update(extra)
    return meta


def read_checkpoint(path: str, preset: Optional[str] = None, *, progress: bool = False) -> Dict[str, Any]:
    """Read any supported weights file into the dict the checkpointer wants: ``model`` (d2 names),
    ``meta`` (None for a detectron2 checkpoint without it), ``matching_heuristics`` and a training
    checkpoint's other entries. ``preset``: the weights must have this architecture (WeightsError)."""
    t0 = time.perf_counter()
    fmt = sniff_format(path)
    if progress:
        logger.info(f"Reading {path} ({os.path.getsize(path) / 2**20:.1f} MiB, {fmt}) ...")
    obj = safe_load(path)
    if progress:
        logger.info(f"Read in {time.perf_counter() - t0:.1f}s; converting ...")
    if fmt == "torch7":
        sd, stride_in_1x1 = torch7_to_detectron2(obj, path)
        meta = _meta("torch7", "torch7", path, _checked_architecture(sd, preset, path))
        if stride_in_1x1 is not None:
            meta["stride_in_1x1"] = bool(stride_in_1x1)
        return dict(model=sd, meta=meta, matching_heuristics=True, __author__="torch7")

    sd, extras = _unwrap(obj, path)
    if sd and all(k.startswith("module.") for k in sd):  # saved from a DataParallel model
        sd = {k[len("module."):]: v for k, v in sd.items()}
    kind = _classify(sd)
    if kind in ("torchvision", "detectron2"):
        bad = [k for k, v in sd.items() if not isinstance(v, (torch.Tensor, np.ndarray))]
        if bad:
            raise WeightsError(f"{path}: entries {bad[:5]} of the state dict are not tensors/arrays; "
                               f"expected one of: {SUPPORTED}")
    if kind in ("torchvision", "caffe2"):
        if kind == "torchvision":
            out, dropped = _convert_torchvision(sd, path, progress)
            timm = fmt == "safetensors" or "arch" in extras or "state_dict_ema" in extras
            source = convention = author = "timm" if timm else "torchvision"
        else:
            out, dropped = _convert_caffe2(sd, path, progress)
            source, convention, author = "caffe2", _caffe2_convention(sd), "Caffe2"
        meta = _meta(source, convention, path, _checked_architecture(out, preset, path), dropped=dropped)
        return dict(model=out, meta=meta, matching_heuristics=True, __author__=author)
    if kind == "detectron2":
        model = {k: _to_tensor(v) for k, v in sd.items()}
        arch = _checked_architecture(model, preset, path)
        meta = extras.pop("meta", None)
        author = extras.pop("__author__", None)
        heuristics = bool(extras.pop("matching_heuristics", False))
        if meta is None and author == "torchvision":
            # detectron2's tools/convert-torchvision-to-d2.py output: torchvision's convention.
            meta = _meta("torchvision", "torchvision", path, arch, via="convert-torchvision-to-d2")
        elif meta is not None:
            meta = dict(meta)
        return dict(model=model, meta=meta, matching_heuristics=heuristics,
                    __author__=author or "detectron2", **extras)
    raise WeightsError(f"{path}: a {fmt} file whose tensor names match no known layout "
                       f"(e.g. {sorted(sd)[:5]}); expected one of: {SUPPORTED}")


def convert_to_detectron2(path: str, preset: Optional[str] = None, *, progress: bool = False):
    """``(state_dict, meta)`` of :func:`read_checkpoint`: tensors in detectron2 names; ``meta`` with
    ``source``, ``input_format``, ``pixel_mean``, ``pixel_std``, ``stride_in_1x1``, ``architecture``.
    WeightsError: unreadable, unsafe or unrecognised file; preset mismatch."""
    ckpt = read_checkpoint(path, preset, progress=progress)
    return ckpt["model"], ckpt["meta"]


def save_converted(state_dict: Dict[str, Any], meta: Optional[Dict[str, Any]], output: str, *,
                   matching_heuristics: bool = True, progress: bool = False) -> str:
    """Write a detectron2 checkpoint, ``.pkl`` (numpy arrays) or ``.pth`` (tensors), with ``meta`` (the
    input convention): :class:`ResNeXtCheckpointer` re-checks the config, detectron2's still loads it."""
    model = {}
    for k in _progress(sorted(state_dict), progress, "writing"):
        v = state_dict[k]
        if output.endswith(".pkl"):
            model[k] = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        else:
            model[k] = v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
    source = (meta or {}).get("source", "unknown")
    data = {"model": model, "__author__": f"resnext_det (from {source})",
            "matching_heuristics": bool(matching_heuristics), "meta": meta}
    with atomic_open(output, "wb") as f:  # a kill never leaves half a file at ``output``
        if output.endswith(".pkl"):
            pickle.dump(data, f, protocol=4)
        else:
            torch.save(data, f)
    return output
