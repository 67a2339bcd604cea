"""The demo's miniature "ImageNet" (docs/DEMOS.md): :func:`pretrain_classifier` trains ``MODEL.RESNEXT``'s
backbone on crops of the synthetic training images and writes a bare torchvision state dict, a pure
function of the config values that shape it; a manifest beside it lets a rerun reuse it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Dict, List, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from torch.nn import functional as F
from torchvision.transforms.functional import normalize

from ..config import ResNeXtConfigError, resolve_resnext_spec
from ..io import atomic_open, atomic_write_json
from ..modeling.backbone import build_resnext
from ..modeling.classifier import ResNeXtClassifier
from ..weights.names import to_torchvision_name

__all__ = ["build_classifier", "pretrain_classifier", "pretrained_weights_path",
           "to_torchvision_state_dict", "shape_crops", "TORCHVISION_MEAN", "TORCHVISION_STD"]

logger = logging.getLogger(__name__)
# torchvision's ImageNet input convention, in 0..255 units (= Base-ResNeXt-*.yaml's PIXEL_MEAN/STD)
TORCHVISION_MEAN = (123.675, 116.280, 103.530)
TORCHVISION_STD = (58.395, 57.120, 57.375)
_FORMAT_VERSION = 1  # bump when the crops or the training change, so cached files are remade
_FILE_NAME = "tiny_resnext_torchvision.pth"


def build_classifier(cfg: CfgNode, num_classes: int) -> ResNeXtClassifier:
    """``cfg``'s ResNeXt with res5 and BatchNorm (as ImageNet models are trained), pooled, and an
    ``fc`` of ``num_classes`` outputs."""
    spec = resolve_resnext_spec(cfg, out_features=["res5"])
    if spec.block_form != "grouped":
        raise ResNeXtConfigError(
            f"MODEL.RESNEXT.BLOCK_FORM={spec.block_form!r}: pretraining writes torchvision's "
            "layout, which has the grouped-convolution form only; use BLOCK_FORM 'grouped'")
    return ResNeXtClassifier(build_resnext(dataclasses.replace(spec, norm="BN", freeze_at=0)), num_classes)


def to_torchvision_state_dict(model: ResNeXtClassifier) -> Dict[str, torch.Tensor]:
    """``model``'s weights under torchvision's ResNet names (``conv1``, ``bn1``, ``layer1..4``,
    ``fc``); the inverse of resnext_det.weights.sources' torchvision reader."""
    out = {}
    for name, tensor in model.backbone.state_dict().items():
        tv_name = to_torchvision_name(name)
        if tv_name is None:  # a new module in the backbone must get a torchvision name
            raise KeyError(f"no torchvision name for backbone tensor {name!r} (weights/names.py)")
        out[tv_name] = tensor.detach().clone()
    for name, tensor in model.fc.state_dict().items():
        out[f"fc.{name}"] = tensor.detach().clone()
    return out


def _square(cx: float, cy: float, side: float) -> Tuple[int, int, int, int]:
    half = side / 2
    return int(round(cx - half)), int(round(cy - half)), int(round(cx + half)), int(round(cy + half))


def _cut(image: np.ndarray, box: Tuple[int, int, int, int], size: int) -> np.ndarray:
    """The square ``box`` of ``image`` (padded with its mean colour), resized to ``size``."""
    x0, y0, x1, y1 = box
    h, w = image.shape[:2]
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    if pad:
        fill = image.reshape(-1, 3).mean(0).astype(image.dtype).tolist()
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=fill)
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    return cv2.resize(np.ascontiguousarray(image[y0:y1, x0:x1]), (size, size),
                      interpolation=cv2.INTER_AREA)


def shape_crops(dataset_dicts: List[dict], *, crop_size: int, crops_per_object: int,
                seed: int) -> Tuple[np.ndarray, np.ndarray, int]:
    """Classification crops of detection images: ``crops_per_object`` jittered crops per object
    (label = its class) and per image of background (label = number of classes); a pure
    function of the data and ``seed``. Returns ``(uint8 RGB (N, size, size, 3), int64 labels
    (N,), number of classes)``."""
    rng = np.random.default_rng(seed)
    class_ids = sorted({a["category_id"] for d in dataset_dicts for a in d.get("annotations", [])})
    background = len(class_ids)
    crops, labels = [], []
    for d in dataset_dicts:
        image = read_image(d["file_name"], format="RGB")
        h, w = image.shape[:2]
        boxes = []
        for ann in d.get("annotations", []):
            x, y, bw, bh = ann["bbox"]  # synthetic and COCO: XYWH_ABS
            boxes.append((x, y, x + bw, y + bh))
            side = max(bw, bh)
            for _ in range(crops_per_object):
                # the object fills 1/2 .. 4/5 of the crop; centre moved by up to 1/8 of its side
                s = side * rng.uniform(1.25, 2.0)
                cx = x + bw / 2 + rng.uniform(-0.125, 0.125) * side
                cy = y + bh / 2 + rng.uniform(-0.125, 0.125) * side
                crops.append(_cut(image, _square(cx, cy, s), crop_size))
                labels.append(class_ids.index(ann["category_id"]))
        sides = [max(b[2] - b[0], b[3] - b[1]) for b in boxes] or [min(h, w) / 3]
        for _ in range(crops_per_object):
            for _attempt in range(20):  # a window that holds (almost) no object
                s = float(rng.choice(sides)) * rng.uniform(1.25, 2.0)
                cx, cy = rng.uniform(s / 2, max(s / 2, w - s / 2)), rng.uniform(s / 2, max(s / 2, h - s / 2))
                win = _square(cx, cy, s)
                if all(_overlap(win, b) < 0.1 for b in boxes):
                    crops.append(_cut(image, win, crop_size))
                    labels.append(background)
                    break
    return np.stack(crops), np.asarray(labels, np.int64), background + 1


def _overlap(win, box) -> float:
    """Fraction of ``box`` inside ``win``."""
    ix = max(0.0, min(win[2], box[2]) - max(win[0], box[0]))
    iy = max(0.0, min(win[3], box[3]) - max(win[1], box[1]))
    area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-6)
    return ix * iy / area


def _normalise(crops: np.ndarray) -> torch.Tensor:
    return normalize(torch.from_numpy(crops).permute(0, 3, 1, 2).float(), TORCHVISION_MEAN, TORCHVISION_STD)


def pretrained_weights_path(cfg: CfgNode) -> str:
    """Where ``RESNEXT_PLAN.PRETRAIN`` writes its torchvision file (``OUTPUT`` or
    ``<OUTPUT_DIR>/pretrain/tiny_resnext_torchvision.pth``)."""
    return cfg.RESNEXT_PLAN.PRETRAIN.OUTPUT or os.path.join(cfg.OUTPUT_DIR, "pretrain", _FILE_NAME)


def _manifest(cfg: CfgNode) -> Dict[str, Any]:
    spec = resolve_resnext_spec(cfg, out_features=["res5"])
    manifest = {
        "format": _FORMAT_VERSION,
        "architecture": {k: getattr(spec, k) for k in ("depth", "cardinality", "bottleneck_width",
                                                        "stem_out_channels", "res2_out_channels",
                                                        "stride_in_1x1")},
        "train_datasets": list(cfg.DATASETS.TRAIN), "test_datasets": list(cfg.DATASETS.TEST),
        "synthetic": {k: v for k, v in cfg.RESNEXT_PLAN.SYNTHETIC.items() if k != "ROOT"},
        "pretrain": {k: v for k, v in cfg.RESNEXT_PLAN.PRETRAIN.items() if k not in ("ENABLED", "OUTPUT")},
        "seed": int(cfg.SEED),
    }
    return json.loads(json.dumps(manifest))  # as read back from the JSON file (tuples -> lists)


def pretrain_classifier(cfg: CfgNode) -> Dict[str, Any]:
    """Train the miniature "ImageNet" model of ``cfg`` on crops of ``DATASETS.TRAIN`` (top-1 on
    ``DATASETS.TEST``), or reuse an identical earlier one. Returns ``{"weights", "top1" (%),
    "num_crops", "seconds", "reused", ...}`` (also in ``<file>.json``)."""
    path = pretrained_weights_path(cfg)
    info_path = path + ".json"
    manifest = _manifest(cfg)
    if os.path.isfile(path) and os.path.isfile(info_path):
        with open(info_path) as f:
            info = json.load(f)
        if info.get("manifest") == manifest:
            logger.info("Pretrained classifier reused: %s (top-1 %.1f%% on val crops)", path,
                        info["top1"])
            return dict(info["results"], reused=True)

    p = cfg.RESNEXT_PLAN.PRETRAIN
    seed = max(int(cfg.SEED), 0)
    t0 = time.perf_counter()
    train = [d for name in cfg.DATASETS.TRAIN for d in DatasetCatalog.get(name)]
    val = [d for name in cfg.DATASETS.TEST for d in DatasetCatalog.get(name)]
    x_train, y_train, num_classes = shape_crops(train, crop_size=p.CROP_SIZE,
                                                crops_per_object=p.CROPS_PER_OBJECT, seed=seed)
    x_val, y_val, _ = shape_crops(val, crop_size=p.CROP_SIZE, crops_per_object=1, seed=seed + 1)
    x_train, x_val, y_train = _normalise(x_train), _normalise(x_val), torch.from_numpy(y_train)
    logger.info("Pretraining the ResNeXt as a %d-way classifier on %d crops (%d px) of %s, "
                "%d epochs ...", num_classes, len(x_train), p.CROP_SIZE,
                ", ".join(cfg.DATASETS.TRAIN), p.EPOCHS)

    torch.manual_seed(seed)
    model = build_classifier(cfg, num_classes)
    batch = min(int(p.IMS_PER_BATCH), len(x_train))
    steps_per_epoch = max(1, len(x_train) // batch)
    total = steps_per_epoch * int(p.EPOCHS)
    optimizer = torch.optim.SGD(model.parameters(), lr=p.BASE_LR, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    step = 0
    model.train()
    for epoch in range(int(p.EPOCHS)):
        order = torch.randperm(len(x_train), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * batch:(i + 1) * batch]
            images = x_train[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            images[flip] = images[flip].flip(-1)
            for group in optimizer.param_groups:  # cosine decay to 0
                group["lr"] = 0.5 * p.BASE_LR * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(model(images), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        logger.info("pretrain epoch %d/%d: loss %.3f", epoch + 1, p.EPOCHS, loss.item())
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x_val[i:i + 256]).argmax(1) for i in range(0, len(x_val), 256)])
    top1 = float((pred.numpy() == y_val).mean() * 100)
    seconds = time.perf_counter() - t0
    with atomic_open(path, "wb") as f:  # a bare state dict, as torchvision's own files
        torch.save(to_torchvision_state_dict(model), f)
    results = {"weights": path, "top1": top1, "num_classes": num_classes,
               "num_crops": int(len(x_train)), "crop_size": int(p.CROP_SIZE),
               "epochs": int(p.EPOCHS), "seconds": seconds}
    atomic_write_json(info_path, {"manifest": manifest, "top1": top1, "results": results}, indent=2)
    logger.info("Pretrained classifier: top-1 %.1f%% on %d val crops, %.0f s -> %s", top1,
                len(x_val), seconds, path)
    return dict(results, reused=False)
