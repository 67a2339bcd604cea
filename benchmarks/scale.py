"""The two-stage plan at COCO size, estimated by simulation: ``python -m benchmarks.scale``
(a development tool of the checkout; docs/SCALE.md).

Makes COCO-shaped data without pixels at a fraction of COCO trainval35k (an annotation JSON
with COCO's image sizes, ~7.3 boxes an image with polygons, empty image files; RPN outputs of
``RESNEXT_PLAN.PROPOSALS.TOPK_TRAIN`` boxes an image), runs the project's real code paths on
it in ``--workers`` GLOO processes (detectron2's ``launch``) and records wall time and peak RSS
per process for each step:

* ``annotations_detectron2``: detectron2's ``load_coco_json`` (the baseline);
* ``annotations_project``: the project's registration + data check
  (``register_coco_checked`` -> ``DatasetCatalog.get``) in a worker: the check already passed
  once on this machine (``annotations_project_first_check``, in the launching process);
* ``stage1b_write``: stage 1b's ``_ProposalCollector`` on this worker's share (detectron2's
  ``InferenceSampler``): shard streamed to disk, manifest by rank 0;
* ``stage2_dataset_and_mapper``: stage 2's dataset list (``get_detection_dataset_dicts``), the
  proposal stores, and ``--mapper-calls`` calls of :class:`~resnext_det.data.proposals.ProposalMapper`
  (around detectron2's ``transform_proposals`` with the test-size resize: no pixels to read);
* ``legacy_pickle_write`` / ``legacy_stage2_load`` (``--legacy``): detectron2's single pickle
  written by one process holding everything, and loaded into the dataset list by every worker.

The record (``benchmarks/schema.json``'s ``scale`` type) goes to
``benchmarks/<cpu kind>/scale-<a>-<b>.json`` with the machine (the benchmark's ``environment``)
and an extrapolation to full trainval35k on 8 workers: per step, a linear fit of each figure
over the fractions recorded for this CPU kind (``u`` = the images a process handles: all of
them for annotations and the legacy paths, its share for the shard paths).
"""
from __future__ import annotations

import argparse
import fractions
import gc
import glob
import json
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from typing import Any, Dict, List, Optional

import numpy as np

from tabulate import tabulate

from resnext_det.apps.benchmark.protocol import environment, write_record

__all__ = ["COCO_TRAINVAL35K_IMAGES", "make_coco_like", "run_scale", "main"]

COCO_TRAINVAL35K_IMAGES = 118287  # coco_2014_train 82783 + coco_2014_valminusminival 35504
COCO_BOXES_PER_IMAGE = 7.3
COCO_JSON_BYTES_PER_ANNOTATION = 521  # instances_train2017.json: ~448 MB for 860001 annotations
FULL_WORKERS = 8
MB = 1 << 20


def _parse_fraction(text: str) -> fractions.Fraction:
    try:
        f = fractions.Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"--fraction {text!r} is not a fraction; use e.g. 1/64, 1/16, 0.25") from None
    if not 0 < f <= 1:
        raise argparse.ArgumentTypeError(f"--fraction {text!r} must be in (0, 1]")
    return f


def _label(f: fractions.Fraction) -> str:
    return f"{f.numerator}-{f.denominator}"


# ---------------------------------------------------------------- data without pixels

def make_coco_like(out_dir: str, num_images: int, seed: int = 0) -> Dict[str, Any]:
    """A COCO instances JSON of ``num_images`` images (COCO's sizes: long side 640, short side
    mostly 480 or 427; boxes ~7.3 an image, COCO's small/medium/large mix, 16-point polygons)
    and an empty file per image (the data check looks for them; no pixels are read).

    Args:
        out_dir: gets ``annotations.json`` and ``images/``.
        num_images: how many images.
        seed: the random stream.

    Returns:
        ``{"json_file", "image_root", "images", "annotations", "json_bytes"}``.
    """
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    rng = np.random.default_rng(seed)
    cats = [{"id": c["id"], "name": c["name"], "supercategory": ""} for c in COCO_CATEGORIES if c["isthing"]]
    cat_ids = np.array([c["id"] for c in cats])
    image_root = os.path.join(out_dir, "images")
    os.makedirs(image_root, exist_ok=True)
    ids = rng.choice(np.arange(1, 600000), size=num_images, replace=False)
    short = rng.choice([480, 427, 426, 428, 424, 360], size=num_images, p=[.55, .25, .05, .05, .05, .05])
    short = np.where(rng.random(num_images) < 0.1, rng.integers(200, 640, num_images), short)
    portrait = rng.random(num_images) < 0.25
    counts = rng.negative_binomial(1.3, 1.3 / (1.3 + COCO_BOXES_PER_IMAGE), num_images)
    images, anns, ann_id = [], [], 1
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    for i in range(num_images):
        h, w = (640, int(short[i])) if portrait[i] else (int(short[i]), 640)
        name = f"COCO_train2014_{ids[i]:012d}.jpg"
        images.append({"id": int(ids[i]), "file_name": name, "height": h, "width": w})
        open(os.path.join(image_root, name), "wb").close()
        n = int(counts[i])
        if not n:
            continue
        # sqrt(area): COCO's split is ~41 % small (< 32), 34 % medium, 25 % large (> 96)
        side = np.where(rng.random(n) < .41, rng.uniform(4, 32, n),
                        np.where(rng.random(n) < .58, rng.uniform(32, 96, n), rng.uniform(96, 560, n)))
        ar = np.exp(rng.uniform(np.log(1 / 3), np.log(3), n))
        bw, bh = np.minimum(side * np.sqrt(ar), w - 1), np.minimum(side / np.sqrt(ar), h - 1)
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        for j in range(n):
            cx, cy = x0[j] + bw[j] / 2, y0[j] + bh[j] / 2
            poly = np.stack([cx + bw[j] / 2 * np.cos(angles), cy + bh[j] / 2 * np.sin(angles)], 1)
            anns.append({"id": ann_id, "image_id": int(ids[i]), "category_id": int(rng.choice(cat_ids)),
                         "bbox": [round(float(x0[j]), 2), round(float(y0[j]), 2), round(float(bw[j]), 2),
                                  round(float(bh[j]), 2)],
                         "area": round(float(bw[j] * bh[j] * 0.7), 2), "iscrowd": 0,
                         "segmentation": [np.round(poly.reshape(-1), 2).tolist()]})
            ann_id += 1
    json_file = os.path.join(out_dir, "annotations.json")
    with open(json_file, "w") as f:
        json.dump({"info": {"description": "COCO-shaped, no pixels (benchmarks.scale)"},
                   "images": images, "annotations": anns, "categories": cats}, f)
    return {"json_file": json_file, "image_root": image_root, "images": num_images,
            "annotations": len(anns), "json_bytes": os.path.getsize(json_file)}


# ---------------------------------------------------------------- measuring a process

def _status() -> Dict[str, float]:
    """This process's memory from /proc/self/status, MB (VmHWM: peak RSS since the last reset)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[key] = int(rest.split()[0]) / 1024
    except OSError:  # not Linux: peak RSS from getrusage (never reset)
        import resource

        out["VmHWM"] = out["VmRSS"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _reset_peak() -> bool:
    # Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS, so each step's
    # peak is its own (not the process's whole-life peak)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Step:
    """Times one step and measures its peak RSS (``with _Step(record, name): ...``)."""

    def __init__(self, record: Dict[str, Any], name: str, traced: bool = False):
        self.record, self.name, self.traced = record, name, traced

    def __enter__(self):
        gc.collect()
        if self.traced:  # Python's and numpy's own allocations: what the step holds, without noise
            tracemalloc.start()
        self.reset = _reset_peak()
        self.before = _status()
        self.t0 = time.perf_counter()
        self.extra: Dict[str, Any] = {}
        return self

    def __exit__(self, exc_type, exc, tb):
        wall = time.perf_counter() - self.t0
        after = _status()
        if self.traced:
            self.extra["traced_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / MB, 2)
            tracemalloc.stop()
        self.record[self.name] = {
            "wall_s": round(wall, 4), "rss_before_mb": round(self.before.get("VmRSS", 0), 1),
            "peak_rss_mb": round(after.get("VmHWM", 0), 1),
            "extra_peak_mb": round(after.get("VmHWM", 0) - self.before.get("VmRSS", 0), 1),
            "rss_after_mb": round(after.get("VmRSS", 0), 1), "rss_anon_after_mb": round(after.get("RssAnon", 0), 1),
            "rss_file_after_mb": round(after.get("RssFile", 0), 1), "peak_is_per_step": self.reset, **self.extra}


# ---------------------------------------------------------------- one worker

def _proposal_only_mapper(min_size: int, max_size: int, topk: int):
    """What DatasetMapper does with proposals, without reading pixels: detectron2's test-size
    resize of the image's (known) shape, then detectron2's ``transform_proposals``."""
    from detectron2.data import detection_utils
    from detectron2.data import transforms as T

    resize = T.ResizeShortestEdge(min_size, max_size)

    def mapper(d):
        image = np.broadcast_to(np.zeros(1, np.uint8), (d["height"], d["width"], 3))  # no memory
        resized = resize.get_transform(image)  # a ResizeTransform: only the shapes are used
        tfm = T.TransformList([resized])
        detection_utils.transform_proposals(d, (resized.new_h, resized.new_w), tfm, proposal_topk=topk)
        return d

    return mapper


def _worker(opts: Dict[str, Any]) -> None:
    import torch
    from detectron2.data import DatasetCatalog, get_detection_dataset_dicts
    from detectron2.data.datasets.coco import load_coco_json
    from detectron2.data.samplers import InferenceSampler
    from detectron2.structures import Boxes, Instances
    from detectron2.utils import comm

    from resnext_det.data.coco_json import register_coco_checked
    from resnext_det.data.proposals import stores_for
    from resnext_det.engine.plan_runner import _ProposalCollector

    rank, steps = comm.get_rank(), {}
    name, json_file, image_root = "scale_coco_like", opts["json_file"], opts["image_root"]
    comm.synchronize()
    with _Step(steps, "annotations_detectron2"):
        dicts = load_coco_json(json_file, image_root)
    del dicts
    comm.synchronize()
    with _Step(steps, "annotations_project"):
        register_coco_checked(name, json_file, image_root)
        dicts = DatasetCatalog.get(name)
    # stage 1b: this worker's share, as detectron2's test loader splits a dataset
    share = [dicts[i] for i in InferenceSampler(len(dicts))]
    rng = np.random.default_rng(rank)
    pool = []  # a few RPN outputs reused: generating 2000 boxes an image is not the step measured
    for _ in range(8):
        inst = Instances((640, 640))
        xy = rng.uniform(0, 600, (opts["topk"], 2)).astype(np.float32)
        inst.proposal_boxes = Boxes(torch.from_numpy(np.concatenate([xy, xy + rng.uniform(4, 200, xy.shape).astype(np.float32)], 1)))
        inst.objectness_logits = torch.from_numpy(np.sort(rng.normal(size=opts["topk"]).astype(np.float32))[::-1].copy())
        pool.append({"proposals": inst})
    manifest = os.path.join(opts["work_dir"], "proposals", name, "manifest.json")
    comm.synchronize()
    with _Step(steps, "stage1b_write", traced=True) as s:
        collector = _ProposalCollector(name, manifest)
        collector.reset()
        for i, d in enumerate(share):
            collector.process([{"image_id": d["image_id"]}], [pool[i % len(pool)]])
        collector.evaluate()
        s.extra["images"] = len(share)
    del share, collector
    comm.synchronize()
    legacy_pkl = os.path.join(opts["work_dir"], "proposals", name + ".pkl")
    if opts["legacy"] and rank == 0:
        from resnext_det.data.proposals import export_detectron2_pickle

        with _Step(steps, "legacy_pickle_write"):
            export_detectron2_pickle(manifest, legacy_pkl)
    del dicts
    comm.synchronize()
    # stage 2: the training set's list (no proposals in it), the stores, a few mapped images
    with _Step(steps, "stage2_dataset_and_mapper") as s:
        t0 = time.perf_counter()
        train = get_detection_dataset_dicts([name], filter_empty=True)
        before_stores = _status().get("VmRSS", 0)
        from resnext_det.data.proposals import ProposalMapper

        tracemalloc.start()  # the proposals' share of the step: stores, index, mapped images
        stores = stores_for([manifest], [name])
        mapper = ProposalMapper(_proposal_only_mapper(800, 1333, opts["topk"]), stores)
        mine = list(InferenceSampler(len(train)))
        picks = rng.choice(mine, size=min(opts["mapper_calls"], len(mine)), replace=False)
        first = None
        for k in picks:
            out = mapper(train[int(k)])
            assert len(out["proposals"]) > 0
            first = first or time.perf_counter() - t0
        s.extra["proposal_traced_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / MB, 2)
        tracemalloc.stop()
        s.extra.update({"first_item_s": round(first or 0, 4), "mapper_calls": len(picks),
                        "proposal_index_mb": round(sum(st.index_nbytes for st in stores) / MB, 3),
                        "proposal_extra_mb": round(_status().get("VmRSS", 0) - before_stores, 1),
                        "images": len(train)})
    del train, stores, mapper
    comm.synchronize()
    if opts["legacy"]:
        with _Step(steps, "legacy_stage2_load") as s:
            t0 = time.perf_counter()
            train = get_detection_dataset_dicts([name], filter_empty=True, proposal_files=[legacy_pkl])
            s.extra["first_item_s"] = round(time.perf_counter() - t0, 4)
        del train
    comm.synchronize()
    with open(os.path.join(opts["work_dir"], f"rank{rank}.json"), "w") as f:
        json.dump(steps, f)


# ---------------------------------------------------------------- record and extrapolation

# what a process handles per step: "all" images (whole dataset) or its "share" (1/workers)
_UNITS = {"annotations_detectron2": "all", "annotations_project": "all",
          "annotations_project_first_check": "all", "stage1b_write": "share",
          "stage2_dataset_and_mapper": "all", "legacy_pickle_write": "all", "legacy_stage2_load": "all"}


def _fit(points: List[tuple], at: float) -> Optional[float]:
    """Least-squares line through (u, y) evaluated at ``at``; through the origin with one point."""
    if not points:
        return None
    u = np.array([p[0] for p in points], float)
    y = np.array([p[1] for p in points], float)
    if len(set(u.tolist())) < 2:
        return float(y.mean() / u.mean() * at)
    b, a = np.polyfit(u, y, 1)
    return float(a + b * at)


def extrapolate(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Full trainval35k on :data:`FULL_WORKERS` workers from ``records`` (same CPU kind):
    per step, ``wall_s`` and ``extra_peak_mb`` (worst process) fitted over ``u``.

    Args:
        records: scale records' ``results`` (each with ``fraction_value``, ``workers`` and ``steps``).
    """
    out: Dict[str, Any] = {}
    names = sorted({n for r in records for n in r["steps"]})
    for name in names:
        unit = _UNITS.get(name, "all")
        pts = {"wall_s": [], "extra_peak_mb": [], "peak_rss_mb": []}
        for r in records:
            per = r["steps"].get(name)
            if not per:
                continue
            u = r["fraction_value"] / (r["workers"] if unit == "share" else 1)
            for key in pts:
                pts[key].append((u, max(p[key] for p in per.values())))
        at = 1.0 / FULL_WORKERS if unit == "share" else 1.0
        out[name] = {"u_at_full": at, "per_process": unit,
                     **{k: (round(v, 2) if v is not None else None) for k, v in
                        ((k, _fit(p, at)) for k, p in pts.items())}}
    disk = [(r["fraction_value"], r["data"]["proposal_bytes"]) for r in records]
    out["proposal_files_gb"] = round(_fit(disk, 1.0) / 1e9, 3)
    return out


def _goals(record: Dict[str, Any]) -> Dict[str, Any]:
    ex, steps = record["extrapolation"]["full_coco_8_workers"], record["steps"]
    d2 = max(p["wall_s"] for p in steps["annotations_detectron2"].values())
    ours = max(p["wall_s"] for p in steps["annotations_project"].values())
    s2 = steps["stage2_dataset_and_mapper"]
    prop_mb = record["data"]["proposal_bytes"] / MB
    return {
        "annotation_time_ratio_per_worker": round(ours / d2, 3),
        "annotation_time_ratio_first_check": round(  # both measured in the launching process
            record["parent"]["annotations_project_first_check"]["wall_s"]
            / record["parent"]["annotations_detectron2"]["wall_s"], 3),
        "stage1b_extra_peak_mb_per_worker_full": ex.get("stage1b_write", {}).get("extra_peak_mb"),
        "stage2_proposal_mb_per_worker_measured": max(p["proposal_extra_mb"] for p in s2.values()),
        "stage2_proposal_index_mb_per_worker_full": round(
            max(p["proposal_index_mb"] for p in s2.values()) / record["fraction_value"], 2),
        "stage2_first_item_s_full": ex.get("stage2_dataset_and_mapper", {}).get("wall_s"),
        "proposal_files_gb_full": ex["proposal_files_gb"],
        "all_proposals_mb_this_fraction": round(prop_mb, 1),
        # allocations traced in the shard steps (mapped file pages are the kernel's page cache)
        "stage1b_traced_peak_mb_per_worker": max(p["traced_peak_mb"] for p in steps["stage1b_write"].values()),
        "stage2_proposal_traced_peak_mb_per_worker": max(p["proposal_traced_peak_mb"] for p in s2.values()),
        "some_worker_holds_all_proposals": any(
            p.get(k, 0) >= 0.5 * prop_mb for n, k in (("stage1b_write", "traced_peak_mb"),
                                                     ("stage2_dataset_and_mapper", "proposal_traced_peak_mb"))
            for p in steps[n].values()),
        "targets": {"stage1b_extra_peak_mb": 1024, "stage2_proposal_mb": 512, "first_item_s": 60,
                    "proposal_files_gb": 5, "annotation_time_ratio": 1.2},
    }


def run_scale(fraction: fractions.Fraction, *, workers: int = 2, topk: int = 2000, mapper_calls: int = 8,
              legacy: bool = True, out_root: str = "benchmarks", work_dir: Optional[str] = None,
              keep: bool = False, seed: int = 0, argv: Optional[List[str]] = None) -> tuple:
    """Measure one fraction and write its record; returns (the record, its path).

    Args:
        fraction: of COCO trainval35k (118287 images).
        workers: GLOO processes (detectron2 ``launch``, ``dist_url="auto"``).
        topk: proposals an image (stage 1b keeps 2000 for training images).
        mapper_calls: stage-2 mapper calls per worker.
        legacy: also measure detectron2's single pickle (written by one process, loaded by all).
        out_root: the record goes to ``<out_root>/<cpu kind>/scale-<a>-<b>.json``.
        work_dir: where the data and shards go (default: a temporary folder, removed after).
        keep: keep ``work_dir``.
        seed: the data's random stream.
        argv: the command line, written into the record.
    """
    from detectron2.data.datasets.coco import load_coco_json
    from detectron2.engine import launch

    from resnext_det.data.coco_json import load_coco_json_checked

    env = environment()
    try:
        import psutil

        env["mem_total_mb"] = round(psutil.virtual_memory().total / MB)
    except ImportError:
        env["mem_total_mb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MB)
    own = work_dir is None
    work_dir = work_dir or tempfile.mkdtemp(prefix="resnext_scale_")
    os.makedirs(work_dir, exist_ok=True)
    # the data-check records of this run (the first check below fills it; workers read it)
    os.environ["RESNEXT_DET_CACHE_DIR"] = os.path.join(work_dir, "cache")
    try:
        n = max(workers, round(COCO_TRAINVAL35K_IMAGES * fraction))
        t0 = time.perf_counter()
        data = make_coco_like(os.path.join(work_dir, "coco"), n, seed=seed)
        data["make_s"] = round(time.perf_counter() - t0, 2)
        parent: Dict[str, Any] = {}
        with _Step(parent, "annotations_detectron2"):  # the baseline, in the same conditions
            load_coco_json(data["json_file"], data["image_root"])
        with _Step(parent, "annotations_project_first_check"):  # once per machine, before launch
            load_coco_json_checked(data["json_file"], data["image_root"])
        opts = {"json_file": data["json_file"], "image_root": data["image_root"], "work_dir": work_dir,
                "topk": topk, "mapper_calls": mapper_calls, "legacy": legacy}
        t0 = time.perf_counter()
        launch(_worker, workers, dist_url="auto", args=(opts,))
        wall = time.perf_counter() - t0
        steps: Dict[str, Dict[str, Any]] = {}
        for r in range(workers):
            with open(os.path.join(work_dir, f"rank{r}.json")) as f:
                for name, m in json.load(f).items():
                    steps.setdefault(name, {})[f"rank{r}"] = m
        manifest = os.path.join(work_dir, "proposals", "scale_coco_like", "manifest.json")
        with open(manifest) as f:
            man = json.load(f)
        data.update({"proposals_per_image": topk, "proposal_rows": man["rows"], "proposal_bytes": man["bytes"],
                     "shards": len(man["shards"]), "json_bytes_per_annotation": round(
                         data["json_bytes"] / max(data["annotations"], 1)),
                     "coco_json_bytes_per_annotation": COCO_JSON_BYTES_PER_ANNOTATION,
                     "float16_instead": _float16_note(topk)})
    finally:
        if own and not keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    record = {"fraction": f"{fraction.numerator}/{fraction.denominator}",
              "fraction_value": float(fraction), "workers": workers, "data": data,
              "launch_wall_s": round(wall, 2), "parent": parent, "steps": steps}
    kind = env["cpu_kind"]
    out_dir = os.path.join(out_root, kind)
    path = os.path.join(out_dir, f"scale-{_label(fraction)}.json")
    others = []
    for p in sorted(glob.glob(os.path.join(out_dir, "scale-*.json"))):
        if p == path:
            continue
        with open(p) as f:
            r = json.load(f)["results"]
        if r["workers"] == workers and r["data"]["proposals_per_image"] == topk:
            others.append(r)
    used = others + [record]
    record["extrapolation"] = {
        "note": ("EXTRAPOLATED, not measured: full COCO trainval35k (118287 images) on 8 worker "
                 "processes, from linear fits y = a + b*u over the fractions "
                 f"{sorted(r['fraction'] for r in used)} recorded for CPU kind {kind} "
                 f"with {workers} workers (u = the fraction of the images a process handles: all "
                 "for annotations and stage 2's list, its share for stage 1b; one fraction: "
                 "proportional through 0). Annotations' per-step RSS includes the dataset list."),
        "full_coco_8_workers": extrapolate(used),
    }
    record["parent"]["annotations_project_first_check"]["peak_is_per_step"] = True
    record["goals"] = _goals(record)
    rec = write_record(path, "scale", record, env, command=" ".join(["python -m benchmarks.scale"] + (argv or [])),
                       what="the two-stage plan's data side at a fraction of COCO trainval35k, by simulation "
                            f"(COCO-shaped data without pixels, {workers} GLOO workers)")
    return rec, path


def _float16_note(topk: int) -> Dict[str, Any]:
    """What storing the rows as float16 would save and cost (COCO coordinates: 0..640)."""
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 640, (100000, 4)).astype(np.float32)
    err = np.abs(boxes.astype(np.float16).astype(np.float32) - boxes)
    return {"bytes_saved_fraction": 0.5, "max_abs_error_px": float(err.max()),
            "mean_abs_error_px": round(float(err.mean()), 4),
            "decision": "float32: float16 moves boxes by up to this much, which changes IoUs at "
                        "stage 2's 0.5 threshold and so its sampling (results would differ from "
                        "the pickle path's); float32 already meets the 5 GB disk goal"}


def main(argv=None) -> int:
    """``python -m benchmarks.scale``: measure each ``--fraction`` and print a table of its steps."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fraction", type=_parse_fraction, action="append",
                    help="of COCO trainval35k, e.g. 1/64 (repeatable; default 1/64)")
    ap.add_argument("--workers", type=int, default=2, help="GLOO worker processes (default 2)")
    ap.add_argument("--topk", type=int, default=2000, help="proposals an image (default 2000)")
    ap.add_argument("--mapper-calls", type=int, default=8, help="stage-2 mapper calls per worker")
    ap.add_argument("--no-legacy", action="store_true", help="skip detectron2's single-pickle path")
    ap.add_argument("--out", default="benchmarks", help="record root (default benchmarks/)")
    ap.add_argument("--work-dir", default=None, help="data and shards (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep --work-dir's files")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error(f"--workers {args.workers}: give 1 or more")
    for f in args.fraction or [fractions.Fraction(1, 64)]:
        t0 = time.perf_counter()
        rec, path = run_scale(f, workers=args.workers, topk=args.topk, mapper_calls=args.mapper_calls,
                              legacy=not args.no_legacy, out_root=args.out, work_dir=args.work_dir, keep=args.keep,
                              argv=list(sys.argv[1:] if argv is None else argv))
        res = rec["results"]
        print(f"fraction {res['fraction']}: {res['data']['images']} images, {res['data']['annotations']} "
              f"boxes, {res['data']['proposal_bytes'] / 1e6:.1f} MB of proposals; {time.perf_counter() - t0:.1f} s")
        rows = []
        for name, per in res["steps"].items():
            worst = max(per.values(), key=lambda p: p["extra_peak_mb"])
            rows.append([name, f"{max(p['wall_s'] for p in per.values()):.2f}", f"{worst['peak_rss_mb']:.1f}",
                         f"+{worst['extra_peak_mb']:.1f}"])
        print(tabulate(rows, ["step (worst process)", "wall s", "peak RSS MB", "in the step MB"], tablefmt="github"))
        print(f"goals: {json.dumps(res['goals'])}")
        print(f"record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
