"""A synthetic COCO-format detection dataset, reproducible from a seed (the demo's data): 1..``max_objects``
bright filled shapes (square, circle, triangle) on a dark, slightly noisy background, boxed by their exact
extents. As in COCO, some images hold no object (:data:`EMPTY_EVERY`), and val mixes square, landscape and
portrait images. The same arguments give byte-identical files.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.structures import Boxes, Instances
from PIL import Image, ImageDraw

from ..io import atomic_write_json
from .coco_json import register_coco_checked

#: the embedded demos on this data (``tools/train_net.py --demo NAME``) and their shipped configs
DEMO_CONFIGS = {
    "fpn": "demo_tiny_X_FPN_synthetic.yaml",
    "two_stage": "demo_tiny_X_C4_two_stage_synthetic.yaml",
}

__all__ = ["DEMO_CONFIGS", "CLASSES", "EMPTY_EVERY", "image_shape", "is_empty_image", "make_synthetic_coco",
           "register_synthetic_coco", "synthetic_dataset_names", "synthetic_train_batch"]

CLASSES = ("square", "circle", "triangle")
_SPLITS = ("train", "val")
_FORMAT_VERSION = 3  # bump when the drawing changes, so cached folders are remade
# one image in n has no object, starting at index 3 (so that small test sets have one too)
EMPTY_EVERY = {"train": 40, "val": 8}
# val image i: square (i % 3 == 0), landscape (1) or portrait (2), the long side 4/3 of the short
_VAL_ASPECTS = ((1, 1), (3, 4), (4, 3))


def is_empty_image(split: str, index: int) -> bool:
    return index % EMPTY_EVERY[split] == 3


def image_shape(split: str, index: int, size: int):
    """(height, width) of image ``index`` of ``split``: ``size`` square in train; in val the
    short side ``size`` and a third each square, landscape and portrait."""
    if split != "val":
        return size, size
    h, w = _VAL_ASPECTS[index % 3]
    return size * h // min(h, w), size * w // min(h, w)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _draw_image(rng: np.random.Generator, shape: Sequence[int], max_objects: int,
                object_size: Sequence[float] = (0.18, 0.42)):
    """One image and its objects [(class index, [x0, y0, x1, y1], polygon)] (``max_objects`` 0:
    background only)."""
    height, width = shape
    size = min(height, width)
    bg = rng.uniform(0, 60, size=3) * np.ones((height, width, 3)) + rng.normal(0, 6, size=(height, width, 3))
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    objects: List = []
    for _ in range(int(rng.integers(1, max_objects + 1)) if max_objects else 0):
        for _attempt in range(20):
            cls = int(rng.integers(len(CLASSES)))
            s = float(rng.uniform(*object_size) * size)
            x0, y0 = rng.uniform(0, width - s), rng.uniform(0, height - s)
            box = [float(x0), float(y0), float(x0 + s), float(y0 + s)]
            if all(_iou(box, o[1]) < 0.2 for o in objects):
                break
        else:
            continue
        colour = tuple(int(v) for v in rng.integers(110, 256, size=3))
        if cls == 0:
            poly = [(box[0], box[1]), (box[2], box[1]), (box[2], box[3]), (box[0], box[3])]
            draw.polygon(poly, fill=colour)
        elif cls == 1:
            draw.ellipse(box, fill=colour)
            ang = np.linspace(0, 2 * np.pi, 16, endpoint=False)
            cx, cy, r = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, s / 2
            poly = [(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a in ang]
        else:
            poly = [((box[0] + box[2]) / 2, box[1]), (box[2], box[3]), (box[0], box[3])]
            draw.polygon(poly, fill=colour)
        objects.append((cls, box, poly))
    return img, objects


def make_synthetic_coco(root: str, *, seed: int = 0, num_train: int = 400, num_val: int = 100,
                        image_size: int = 128, max_objects: int = 4,
                        object_size: Sequence[float] = (0.18, 0.42)) -> Dict[str, Dict[str, str]]:
    """Write ``<split>/*.png`` and ``annotations/instances_<split>.json`` under ``root`` (skipped when
    an identical set is there). ``image_size``: train side, val short side; ``object_size``:
    (min, max) shape side as a fraction of the image side. Returns ``{split: {"json_file",
    "image_root"}}``."""
    params = {"format": _FORMAT_VERSION, "seed": int(seed), "num_train": int(num_train),
              "num_val": int(num_val), "image_size": int(image_size),
              "max_objects": int(max_objects), "classes": list(CLASSES)}
    lo, hi = (float(v) for v in object_size)
    if not 0 < lo <= hi < 1:
        raise ValueError(f"object_size={tuple(object_size)!r}: give (min, max) fractions of the "
                         "image side with 0 < min <= max < 1, e.g. (0.18, 0.42)")
    if (lo, hi) != (0.18, 0.42):  # the default keeps the manifests (and caches) of before
        params["object_size"] = [lo, hi]
    out = {split: {"json_file": os.path.join(root, "annotations", f"instances_{split}.json"),
                   "image_root": os.path.join(root, split)} for split in _SPLITS}
    manifest = os.path.join(root, "manifest.json")
    if os.path.isfile(manifest) and all(os.path.isfile(v["json_file"]) for v in out.values()):
        with open(manifest) as f:
            if json.load(f) == params:
                return out
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]
    for split_index, (split, count) in enumerate(zip(_SPLITS, (num_train, num_val))):
        os.makedirs(out[split]["image_root"], exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            rng = np.random.default_rng([int(seed), split_index, i])
            height, width = image_shape(split, i, image_size)
            img, objects = _draw_image(rng, (height, width), 0 if is_empty_image(split, i) else max_objects,
                                       (lo, hi))
            file_name = f"{i:06d}.png"
            img.save(os.path.join(out[split]["image_root"], file_name))
            image_id = i + 1
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            for cls, (x0, y0, x1, y1), poly in objects:
                w, h = x1 - x0, y1 - y0
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                    "bbox": [round(x0, 2), round(y0, 2), round(w, 2), round(h, 2)],
                    "area": round(w * h, 2), "iscrowd": 0,
                    "segmentation": [[round(v, 2) for xy in poly for v in xy]],
                })
        data = {"info": {"description": "resnext-det synthetic shapes", **params},
                "images": images, "annotations": annotations, "categories": categories}
        atomic_write_json(out[split]["json_file"], data)
    atomic_write_json(manifest, params)  # written last: a half-made folder is remade next time
    return out


def synthetic_dataset_names(name: str) -> Sequence[str]:
    """The registered names for ``name``: ``(<name>_train, <name>_val)``."""
    return tuple(f"{name}_{split}" for split in _SPLITS)


def register_synthetic_coco(name: str, root: str, **kwargs) -> Sequence[str]:
    """Make (or reuse, ``kwargs`` as :func:`make_synthetic_coco`) the dataset under ``root`` and
    register ``<name>_train`` / ``<name>_val``; returns those names."""
    paths = make_synthetic_coco(root, **kwargs)
    names = synthetic_dataset_names(name)
    for split, dataset_name in zip(_SPLITS, names):
        register_coco_checked(dataset_name, paths[split]["json_file"], paths[split]["image_root"],
                              metadata={"thing_classes": list(CLASSES)})
    return names


# Boxes of synthetic_train_batch as fractions (x0, y0, x1, y1) of the image's width/height:
# spread over the image and overlapping a little, so the RPN and box head both see positives.
_BATCH_BOXES = ((0.1, 0.1, 0.5, 0.6), (0.4, 0.3, 0.9, 0.8), (0.2, 0.5, 0.35, 0.7))


def synthetic_train_batch(sizes: Sequence[Sequence[int]], classes: Sequence[int] = (1, 5, 17),
                          seed: int = 0) -> List[Dict]:
    """An in-memory training batch in detectron2's input format for timing: random pixels from
    ``seed``, one image per ``(height, width)`` of ``sizes``, a fixed box per class of ``classes``."""
    if not 1 <= len(classes) <= len(_BATCH_BOXES):
        raise ValueError(f"classes={tuple(classes)!r}: give 1 to {len(_BATCH_BOXES)} class indices")
    g = torch.Generator().manual_seed(seed)
    batch = []
    for h, w in sizes:
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor([[x0 * w, y0 * h, x1 * w, y1 * h]
                                            for x0, y0, x1, y1 in _BATCH_BOXES[:len(classes)]]))
        inst.gt_classes = torch.tensor(list(classes))
        batch.append({"image": torch.randint(0, 256, (3, h, w), generator=g).float(), "instances": inst})
    return batch
