"""Demo pictures: detections drawn on val images, and losses / AP over iterations, from what any
finished training run leaves behind (``model_final.pth``, ``metrics.json``)."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.visualizer import Visualizer
# matplotlib's object-oriented API, not pyplot: no process-wide backend to select, no figure registry
from matplotlib.figure import Figure

from ..weights import load_checkpoint
from ..engine.trainer import ResNeXtTrainer

__all__ = ["draw_detections", "plot_metrics", "read_metrics"]


def draw_detections(cfg, dataset_name: str, out_dir: str, *, num_images: int = 6,
                    score_thresh: float = 0.5, model=None) -> List[str]:
    """Draw the detections scoring ``score_thresh`` or more (and the ground-truth boxes, dashed) on the
    first ``num_images`` of ``dataset_name`` into ``out_dir/detections_<i>.png`` and a grid
    ``detections.png``; returns the paths, the grid first. ``model``: built and loaded (else
    ``cfg.MODEL.WEIGHTS`` is)."""
    if model is None:
        model = ResNeXtTrainer.build_model(cfg)
        load_checkpoint(model, cfg, cfg.MODEL.WEIGHTS)
    model.eval()
    meta = MetadataCatalog.get(dataset_name)
    dicts = DatasetCatalog.get(dataset_name)[:num_images]
    # the test loader applies the config's test-time resize (and precomputed proposals)
    loader = ResNeXtTrainer.build_test_loader(cfg, dataset_name)
    os.makedirs(out_dir, exist_ok=True)
    paths, tiles = [], []
    with torch.no_grad():
        for i, inputs in enumerate(loader):
            if i >= len(dicts):
                break
            inst = model(inputs)[0]["instances"].to("cpu")
            inst = inst[inst.scores >= score_thresh]
            rgb = cv2.imread(inputs[0]["file_name"])[:, :, ::-1]
            scale = max(1, 256 // max(rgb.shape[:2]))  # small images: enlarge for legibility
            vis = Visualizer(rgb, metadata=meta, scale=scale)
            for ann in dicts[i].get("annotations", []):
                box = BoxMode.convert(ann["bbox"], ann["bbox_mode"], BoxMode.XYXY_ABS)
                vis.draw_box(box, edge_color="white", line_style="--")
            img = vis.draw_instance_predictions(inst).get_image()
            path = os.path.join(out_dir, f"detections_{i}.png")
            cv2.imwrite(path, img[:, :, ::-1])
            paths.append(path)
            tiles.append(img)
    if not tiles:
        return paths
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    cols = min(3, len(tiles))
    rows = -(-len(tiles) // cols)
    grid = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        grid[r * h: r * h + t.shape[0], c * w: c * w + t.shape[1]] = t
    grid_path = os.path.join(out_dir, "detections.png")
    cv2.imwrite(grid_path, grid[:, :, ::-1])
    return [grid_path] + paths


def read_metrics(metrics_json: str) -> List[Dict]:
    """The records of a detectron2 ``metrics.json`` (one JSON object per line)."""
    with open(metrics_json) as f:
        return [json.loads(line) for line in f if line.strip()]


_LOSSES = ("total_loss", "loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc")


def plot_metrics(metrics_files: Dict[str, str], out_png: str,
                 ap_keys: Sequence[str] = ("bbox/AP", "bbox/AP50"),
                 figures: Optional[Dict[str, float]] = None) -> str:
    """Plot losses (one panel per stage of ``metrics_files``: name -> ``metrics.json``) and, in the
    last panel, each stage's ``ap_keys`` over iterations and ``figures`` (percent) as labelled
    horizontal lines, into one PNG."""
    stages = {name: read_metrics(p) for name, p in metrics_files.items() if os.path.isfile(p)}
    fig = Figure(figsize=(5.5 * (len(stages) + 1), 4))
    axes = fig.subplots(1, len(stages) + 1, squeeze=False)[0]
    ap_ax = axes[-1]
    for ax, (name, recs) in zip(axes, stages.items()):
        for key in _LOSSES:
            pts = [(r["iteration"], r[key]) for r in recs if key in r]
            if pts:
                ax.plot(*zip(*pts), label=key, lw=1.2)
        ax.set_title(f"{name}: training losses")
        ax.set_xlabel("iteration")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        for key in ap_keys:
            pts = [(r["iteration"], r[key]) for r in recs if key in r]
            if pts:
                ap_ax.plot(*zip(*pts), marker="o", label=f"{name} {key}")
    styles = ("--", ":", "-.")
    for k, (label, value) in enumerate((figures or {}).items()):
        ap_ax.axhline(value, ls=styles[k % len(styles)], color=f"C{k + 3}", lw=1.2,
                      label=f"{label} = {value:.1f}")
    ap_ax.set_title("each stage's quality on val (COCO)")
    ap_ax.set_xlabel("iteration")
    ap_ax.set_ylim(0, 100)
    ap_ax.grid(alpha=0.3)
    if ap_ax.lines:
        ap_ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(out_png) or ".", exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png
