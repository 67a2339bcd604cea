"""COCO evaluation verified on hand-made ground truth with known answers.

The project's evaluation (detectron2's COCOEvaluator on a dataset registered through
resnext_det's checked reader, pure-Python pycocotools path) must equal pycocotools run
directly, and hit the known values.
"""
import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from resnext_det.data.coco_json import register_coco_checked

CAT_IDS = [1, 3, 7, 90]  # non-contiguous on purpose


def _write_dataset(tmp_path, name):
    images, anns = [], []
    boxes = {  # image id -> list of (category id, [x, y, w, h])
        1: [(1, [10, 10, 100, 100]), (3, [150, 40, 80, 120])],
        2: [(7, [20, 30, 120, 90]), (90, [200, 150, 60, 60])],
        3: [(90, [40, 40, 150, 100])],
        4: [],  # an image without annotations
    }
    aid = 1
    from PIL import Image

    for img_id, objs in boxes.items():
        Image.new("RGB", (300, 300)).save(tmp_path / f"{img_id}.png")
        images.append({"id": img_id, "file_name": f"{img_id}.png", "height": 300, "width": 300})
        for cat, box in objs:
            anns.append({"id": aid, "image_id": img_id, "category_id": cat, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
            aid += 1
    # a crowd region on image 3: detections inside it are ignored, not false positives
    anns.append({"id": aid, "image_id": 3, "category_id": 1, "bbox": [200, 200, 90, 90],
                 "area": 8100, "iscrowd": 1,
                 "segmentation": {"counts": [0, 300 * 300], "size": [300, 300]}})
    data = {"images": images, "annotations": anns,
            "categories": [{"id": c, "name": f"class{c}"} for c in CAT_IDS]}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    register_coco_checked(name, str(path), str(tmp_path))
    return path, data


def _run_project_eval(name, tmp_path, detections):
    """detections: image id -> list of (category id, [x, y, w, h], score)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, Instances

    dicts = DatasetCatalog.get(name)  # also fills the id mapping in the metadata
    meta = MetadataCatalog.get(name)
    to_contiguous = meta.thing_dataset_id_to_contiguous_id
    evaluator = COCOEvaluator(name, output_dir=str(tmp_path / "eval"), use_fast_impl=False)
    evaluator.reset()
    for d in dicts:
        dets = detections.get(d["image_id"], [])
        inst = Instances((d["height"], d["width"]))
        xywh = torch.tensor([b for _, b, _ in dets], dtype=torch.float32).reshape(-1, 4)
        xywh[:, 2:] += xywh[:, :2]
        inst.pred_boxes = Boxes(xywh)
        inst.scores = torch.tensor([s for _, _, s in dets], dtype=torch.float32)
        inst.pred_classes = torch.tensor([to_contiguous[c] for c, _, _ in dets], dtype=torch.int64)
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    with contextlib.redirect_stdout(io.StringIO()):
        return evaluator.evaluate()["bbox"]


def _pycocotools_direct(json_path, detections):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(json_path))
        results = [{"image_id": i, "category_id": c, "bbox": b, "score": s}
                   for i, dets in detections.items() for c, b, s in dets]
        dt = gt.loadRes(results) if results else COCO()
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def _compare(project, stats):
    keys = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    for k, v in zip(keys, stats[:6]):
        expected = float(v * 100) if v >= 0 else float("nan")
        got = project[k]
        if np.isnan(expected):
            assert np.isnan(got), k
        else:
            assert got == pytest.approx(expected, abs=1e-6), k


def test_perfect_detections_give_100(tmp_path):
    path, data = _write_dataset(tmp_path, "eval_perfect")
    dets = {}
    for a in data["annotations"]:
        if not a["iscrowd"]:
            dets.setdefault(a["image_id"], []).append((a["category_id"], a["bbox"], 0.9))
    project = _run_project_eval("eval_perfect", tmp_path, dets)
    assert project["AP"] == pytest.approx(100.0)
    assert project["AP50"] == pytest.approx(100.0)
    _compare(project, _pycocotools_direct(path, dets))
    # results are also written as JSON
    assert os.path.isfile(tmp_path / "eval" / "coco_instances_results.json")


def test_known_iou_gives_known_ap(tmp_path):
    """Every detection has IoU 0.72 with its object: matched at IoU 0.50..0.70 (5 of 10)."""
    path, data = _write_dataset(tmp_path, "eval_shift")
    dets = {}
    for a in data["annotations"]:
        if not a["iscrowd"]:
            x, y, w, h = a["bbox"]
            dets.setdefault(a["image_id"], []).append((a["category_id"], [x, y, w, h * 0.72], 0.8))
    project = _run_project_eval("eval_shift", tmp_path, dets)
    assert project["AP50"] == pytest.approx(100.0)
    assert project["AP75"] == pytest.approx(0.0)
    assert project["AP"] == pytest.approx(50.0)
    _compare(project, _pycocotools_direct(path, dets))


def test_crowd_and_false_positives_match_pycocotools(tmp_path):
    path, data = _write_dataset(tmp_path, "eval_crowd")
    dets = {
        1: [(1, [10, 10, 100, 100], 0.9), (3, [0, 0, 30, 30], 0.95)],   # one hit, one false positive
        2: [(7, [25, 30, 120, 90], 0.7)],                                 # a near hit; 90 missed
        3: [(90, [40, 40, 150, 100], 0.6), (1, [210, 210, 50, 50], 0.99)],  # inside the crowd region
        4: [(3, [5, 5, 40, 40], 0.5)],                                   # on the empty image
    }
    project = _run_project_eval("eval_crowd", tmp_path, dets)
    stats = _pycocotools_direct(path, dets)
    _compare(project, stats)
    assert 0 < project["AP"] < 100


def test_no_detections_gives_zero_not_crash(tmp_path):
    path, _ = _write_dataset(tmp_path, "eval_empty")
    project = _run_project_eval("eval_empty", tmp_path, {})
    assert project["AP"] == 0 or np.isnan(project["AP"])
