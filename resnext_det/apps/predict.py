"""``tools/predict.py`` (= ``tools/demo.py``): a trained detector on a user's pictures, folders,
globs and videos, with detectron2's ``demo/demo.py`` flags (docs/PREDICT.md).

    python tools/predict.py --config-file CFG --input photos/ clip.mp4 --output out/ \\
        [--confidence-threshold 0.5] [--runtime auto|eager|onnxruntime|openvino] \\
        [--precision fp32|bf16] [--ray [ADDRESS]] MODEL.WEIGHTS model.onnx

``MODEL.WEIGHTS``: a checkpoint (detectron2's ``DefaultPredictor``) or an exported ``model.onnx`` /
OpenVINO ``.xml`` (:class:`resnext_det.deploy.DeployedPredictor`). Under ``--output``: ``pictures/`` and
``videos/`` with the detections drawn, ``predictions.json`` (COCO results), ``images.json`` and
``failures.json``, written in shards: a killed run, started again, skips the finished ones.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import logging
import os
import pathlib
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

from ..config import UserInputError, load_config
from ..io import atomic_open, atomic_write_json
from .tool import run_tool

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "WorkItem", "collect_inputs", "plan_shards",
           "build_predictor", "run", "cli", "main", "score_predictions"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm")
RUNTIME_CHOICES = ("auto", "eager", "onnxruntime", "openvino")
SHARD_IMAGES = 64
QUEUE_DEPTH = 4  # decoded pictures waiting for the predictor: bounds memory, keeps it busy
RUN_FILE = "predict_run.json"


class PredictError(UserInputError, ValueError):
    """A bad flag, input or output folder: one line naming it and what would work."""


@dataclass(frozen=True)
class WorkItem:
    """One input file: ``path`` as found, ``name`` its path under ``--output`` (relative to the
    folder or glob it came from), ``kind`` "image" or "video"."""

    path: str
    name: str
    kind: str


def collect_inputs(inputs: Sequence[str]) -> List[WorkItem]:
    """``--input``'s files, folders (recursively: their pictures and videos) and globs, in a stable
    order, each file once; PredictError names an input that is no file or folder and matches nothing."""
    items: List[WorkItem] = []
    seen = set()
    names: Dict[str, int] = {}

    def add(path: str, name: str) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            kind = "video" if path.lower().endswith(VIDEO_EXTENSIONS) else "image"
            name = name.replace(os.sep, "/").lstrip("/")
            n = names.get(name, 0)  # two inputs with one output name (a/x.jpg, b/x.jpg given as files)
            names[name] = n + 1
            items.append(WorkItem(path, name if n == 0 else f"{name}.{n}", kind))

    for given in inputs:
        if os.path.isdir(given):
            base = os.path.basename(os.path.normpath(given)) or "input"
            found = [os.path.join(root, f) for root, _, files in os.walk(given) for f in files
                     if f.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)]
            for path in sorted(found):
                add(path, os.path.join(base, os.path.relpath(path, given)))
        elif os.path.isfile(given):
            add(given, os.path.basename(given))
        elif glob.has_magic(given):
            matches = sorted(p for p in glob.glob(given, recursive=True) if os.path.isfile(p))
            if not matches:
                raise PredictError(f"--input {given!r}: the pattern matches no file")
            root = os.path.dirname(given.split("*")[0].split("?")[0].split("[")[0]) or "."
            for path in matches:
                add(path, os.path.relpath(path, root))
        else:
            raise PredictError(f"--input {given!r}: no such file or folder (give files, folders or "
                               "globs of pictures and videos)")
    if not items:
        raise PredictError(f"--input {' '.join(inputs)}: no pictures or videos found (picture "
                           f"extensions {', '.join(IMAGE_EXTENSIONS)}; video {', '.join(VIDEO_EXTENSIONS)})")
    return items


def plan_shards(items: Sequence[WorkItem], shard_images: int = SHARD_IMAGES) -> List[List[WorkItem]]:
    """Consecutive pictures in shards of ``shard_images``; each video a shard of its own."""
    shards: List[List[WorkItem]] = []
    for item in items:
        if item.kind == "image" and shards and shards[-1][0].kind == "image" and len(shards[-1]) < shard_images:
            shards[-1].append(item)
        else:
            shards.append([item])
    return shards


def _shard_key(shard: Sequence[WorkItem]) -> str:
    return hashlib.sha256(json.dumps([(i.path, i.name) for i in shard]).encode()).hexdigest()[:16]


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


# -- the predictor --------------------------------------------------------------------------
class Predictor:
    """What the command runs: ``predict(bgr image) -> Instances`` in the image's coordinates,
    the class names, and what it is (runtime, precision) for the summary line."""

    def __init__(self, call, class_names: List[str], runtime: str, precision: str):
        self._call = call
        self.class_names = class_names
        self.runtime = runtime
        self.precision = precision
        self.seconds = 0.0  # time spent in the model's own calls: the command's overhead is the rest

    def __call__(self, image_bgr: np.ndarray):
        start = time.perf_counter()
        out = self._call(image_bgr)["instances"].to("cpu")
        self.seconds += time.perf_counter() - start
        return out


def _is_exported(path: str) -> bool:
    return path.lower().endswith((".onnx", ".xml"))


def class_names_of(names: Sequence[str], num_classes: int) -> List[str]:
    """The model's class names, or ``class 0``, ``class 1``, ... when it has none."""
    return list(names) or [f"class {i}" for i in range(num_classes)]


def build_predictor(cfg, runtime: str = "auto", precision: str = "fp32",
                    num_threads: Optional[int] = None) -> Predictor:
    """The predictor for ``cfg.MODEL.WEIGHTS``: an exported model through its runtime (``auto``: the
    one measured fastest on this CPU kind), a checkpoint through detectron2's ``DefaultPredictor``
    (``eager``). PredictError: no weights (with how to get a model), a runtime that cannot run them."""
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        raise PredictError("no model: give MODEL.WEIGHTS (a checkpoint, or an exported model.onnx / .xml). "
                           "To get one: python tools/train_net.py --demo (it prints the path to use), "
                           "then python tools/predict.py --config-file CFG --input PATH --output DIR "
                           "MODEL.WEIGHTS output/demo_fpn/model_final.pth")
    if not os.path.isfile(weights):
        raise PredictError(f"MODEL.WEIGHTS {weights!r}: no such file")
    if runtime not in RUNTIME_CHOICES:
        raise PredictError(f"--runtime {runtime!r} is not valid; use one of {', '.join(RUNTIME_CHOICES)}")
    if _is_exported(weights):
        if runtime == "eager":
            raise PredictError(f"--runtime eager runs checkpoints; {weights} is an exported model: use "
                               "--runtime auto, onnxruntime or openvino")
        from ..deploy import DeployedPredictor

        p = DeployedPredictor(weights, runtime=None if runtime == "auto" else runtime, num_threads=num_threads,
                              precision=precision)
        names = class_names_of(p.contract.class_names, p.contract.num_classes)
        return Predictor(p, names, p.runtime, p.precision_used)
    if runtime not in ("auto", "eager"):
        raise PredictError(f"--runtime {runtime}: {weights} is a checkpoint; export it first "
                           f"(python tools/export.py --config-file CFG --output DIR MODEL.WEIGHTS {weights}) "
                           "and give DIR/model.onnx, or use --runtime eager")
    if precision != "fp32":
        raise PredictError(f"--precision {precision}: eager inference runs fp32; export the model for bf16 "
                           "(python tools/export.py), or use --precision fp32")
    import torch
    from detectron2.data import MetadataCatalog
    from detectron2.engine import DefaultPredictor

    if num_threads:
        torch.set_num_threads(int(num_threads))  # a command line: its own process
    eager = DefaultPredictor(cfg)
    try:  # the class names live in the test set's metadata (a synthetic set is made if missing)
        from ..engine.plan_runner import register_datasets

        cfg = register_datasets(cfg.clone())
    except Exception as e:  # noqa: BLE001 - names are for display; say why they are missing
        logger.warning("class names unknown (registering %s failed: %s); using class indices",
                       list(cfg.DATASETS.TEST), _reason(e))
    found = (MetadataCatalog.get(name).get("thing_classes") for name in cfg.DATASETS.TEST)
    names = class_names_of(next((n for n in found if n), []), cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    return Predictor(eager, names, "eager", "fp32")


# -- reading ----------------------------------------------------------------------------------
def read_picture(path: str) -> np.ndarray:
    """An HxWx3 uint8 BGR picture, read by detectron2's ``read_image`` (EXIF orientation applied,
    grayscale / RGBA / 16-bit converted by PIL)."""
    from detectron2.data.detection_utils import read_image

    img = read_image(path, format="BGR")
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or min(img.shape[:2]) < 1:
        raise ValueError(f"not an 8-bit colour picture after conversion (shape {img.shape}, {img.dtype})")
    return np.ascontiguousarray(img)


def _frames(path: str) -> Iterator[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise ValueError("OpenCV cannot open it as a video")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield frame
    finally:
        cap.release()


_END = object()


def _loader(shards, out: "queue.Queue") -> None:
    """Decode every picture and video frame of ``shards`` in order, into ``out``:
    (shard index, item, frame index or None, image or the exception that stopped it)."""
    for index, shard in shards:
        for item in shard:
            if item.kind == "image":
                try:
                    out.put((index, item, None, read_picture(item.path)))
                except Exception as e:  # any unreadable file is a failure entry, never a stop
                    out.put((index, item, None, e))
                continue
            frame_index = -1
            try:
                for frame_index, frame in enumerate(_frames(item.path)):
                    out.put((index, item, frame_index, frame))
                if frame_index < 0:
                    raise ValueError("no frame could be read")
            except Exception as e:
                out.put((index, item, frame_index + 1, e))
        out.put((index, None, None, None))  # the shard is complete
    out.put(_END)


# -- writing ----------------------------------------------------------------------------------
def _detections(instances) -> List[Dict]:
    """Detections as rows: class index, [x, y, w, h] (COCO boxes), score."""
    boxes = instances.pred_boxes.tensor.numpy().astype(np.float64)
    scores = instances.scores.numpy().astype(np.float64)
    classes = instances.pred_classes.numpy()
    # full precision: rounded scores could tie and reorder, and shift COCO AP
    return [{"class": int(c), "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
             "score": float(s)} for b, s, c in zip(boxes, scores, classes)]


class Drawer:
    """detectron2's ``Visualizer`` on a picture with the detections at or above a threshold."""

    def __init__(self, class_names: List[str], threshold: float):
        from detectron2.data.catalog import Metadata

        self.metadata = Metadata(name="resnext_det.predict", thing_classes=list(class_names))
        self.threshold = threshold

    def __call__(self, image_bgr: np.ndarray, instances) -> np.ndarray:
        from detectron2.utils.visualizer import Visualizer

        shown = instances[instances.scores >= self.threshold]
        vis = Visualizer(image_bgr[:, :, ::-1], self.metadata)
        return vis.draw_instance_predictions(shown).get_image()[:, :, ::-1]


def predict_picture(predict, drawer: Drawer, image_bgr: np.ndarray, item: WorkItem, output: str) -> Dict:
    """One picture's detections drawn into ``output/pictures/<name>.jpg``; returns its shard entry."""
    import cv2

    instances = predict(image_bgr)
    path = os.path.join(output, "pictures", os.path.splitext(item.name)[0] + ".jpg")
    ok, data = cv2.imencode(".jpg", drawer(image_bgr, instances), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise ValueError(f"cannot encode {path}")
    with atomic_open(path, "wb") as f:
        f.write(data.tobytes())
    return _entry(item, image_bgr, instances)


def _entry(item: WorkItem, image: np.ndarray, instances) -> Dict:
    return {"path": item.path, "file_name": item.name, "height": int(image.shape[0]),
            "width": int(image.shape[1]), "detections": _detections(instances)}


def _failure(item: WorkItem, e: BaseException) -> Dict:
    return {"path": item.path, "file_name": item.name, "reason": _reason(e)}


class _VideoOut:
    """Video ``source`` being re-encoded at its frame rate: written under a temporary name, renamed when complete."""

    def __init__(self, path: str, source: str):
        self.path, self.source, self.writer = path, source, None
        self.tmp = path + ".tmp.mp4"

    def write(self, frame: np.ndarray) -> None:
        import cv2

        if self.writer is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            cap = cv2.VideoCapture(self.source)
            fps = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0.0
            cap.release()
            h, w = frame.shape[:2]
            self.writer = cv2.VideoWriter(self.tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps if fps > 0 else 25.0, (w, h))
        self.writer.write(frame)

    def close(self, keep: bool) -> None:
        if self.writer is not None:
            self.writer.release()
            if keep:
                os.replace(self.tmp, self.path)
            elif os.path.exists(self.tmp):
                os.remove(self.tmp)


# -- the run ------------------------------------------------------------------------------------
def _settings(cfg, config_file: str, runtime: str, precision: str) -> Dict:
    """What decides the results of a run (checked against a folder's earlier run)."""
    weights = cfg.MODEL.WEIGHTS
    return {"weights": os.path.abspath(weights), "weights_bytes": os.path.getsize(weights),
            "config": os.path.abspath(config_file) if os.path.isfile(config_file) else config_file,
            "runtime": runtime, "precision": precision}


def _check_output(output: str, now: Dict) -> None:
    """Make ``output``; refuse one holding results of another model or precision."""
    path = os.path.join(output, RUN_FILE)
    if os.path.exists(output) and not os.path.isdir(output):
        raise PredictError(f"--output {output!r} is a file; give a folder")
    if os.path.isfile(path):
        before = json.loads(pathlib.Path(path).read_text())
        differ = [k for k in ("weights", "weights_bytes", "config", "precision") if before.get(k) != now[k]]
        if differ:
            raise PredictError(f"--output {output!r} holds results of another run ({', '.join(differ)}: "
                               f"{', '.join(f'{before.get(k)!r} there, {now[k]!r} now' for k in differ)}); "
                               "give another --output, or empty this one")
    os.makedirs(os.path.join(output, "shards"), exist_ok=True)
    atomic_write_json(path, now, indent=2)


def _shard_path(output: str, index: int) -> str:
    return os.path.join(output, "shards", f"{index:06d}.json")


def _done_shards(output: str, shards) -> Dict[int, Dict]:
    done = {}
    for index, shard in enumerate(shards):
        path = _shard_path(output, index)
        if os.path.isfile(path):
            try:
                data = json.loads(pathlib.Path(path).read_text())
            except (OSError, ValueError):
                continue  # unreadable: done again
            if data.get("key") == _shard_key(shard):
                done[index] = data
    return done


class ShardCollector:
    """Collects each image's result of a shard; writes the shard once all its items are in."""

    def __init__(self, output: str, shards):
        self.output, self.shards = output, shards
        self.pending: Dict[int, Dict] = {}

    def add(self, index: int, entry: Dict) -> None:
        key = "failures" if "reason" in entry else "images"
        self.pending.setdefault(index, {"images": [], "failures": []})[key].append(entry)

    def finish(self, index: int) -> None:
        data = self.pending.pop(index, {"images": [], "failures": []})
        order = {item.path: k for k, item in enumerate(self.shards[index])}
        for key in ("images", "failures"):  # the shard's order, whatever order results came in
            data[key].sort(key=lambda e: (order[e["path"]], e.get("frame", -1)))
        data["key"] = _shard_key(self.shards[index])
        atomic_write_json(_shard_path(self.output, index), data)


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", dynamic_ncols=True, file=sys.stderr,
                disable=None, smoothing=0.1, desc="predict")


def run_local(predictor: Predictor, shards, todo, output: str, threshold: float) -> int:
    """Predict the pictures and frames of shards ``todo`` in this process; returns how many were predicted."""
    drawer = Drawer(predictor.class_names, threshold)
    collector = ShardCollector(output, shards)
    q: "queue.Queue" = queue.Queue(maxsize=QUEUE_DEPTH)
    thread = threading.Thread(target=_loader, args=([(i, shards[i]) for i in todo], q), daemon=True,
                              name="predict-loader")
    thread.start()
    images = sum(1 for i in todo for it in shards[i] if it.kind == "image")
    bar = _progress(images)
    count = 0
    video: Optional[_VideoOut] = None
    while True:
        got = q.get()
        if got is _END:
            break
        index, item, frame, image = got
        if item is None:  # a shard is complete (a video is a shard of its own)
            if video is not None:
                video.close(keep=True)
                video = None
            collector.finish(index)
            continue
        if isinstance(image, BaseException):
            entry = _failure(item, image)
            if item.kind == "video":
                entry["frames_done"] = frame
                if video is not None:
                    video.close(keep=False)
                    video = None
            collector.add(index, entry)
            bar.update(item.kind == "image")
            continue
        if item.kind == "image":
            entry = predict_picture(predictor, drawer, image, item, output)
            bar.update(1)
        else:
            if frame == 0:
                video = _VideoOut(os.path.join(output, "videos", os.path.splitext(item.name)[0] + ".mp4"), item.path)
            instances = predictor(image)
            video.write(drawer(image, instances))
            entry = {**_entry(item, image, instances), "video": item.name, "frame": frame}
            bar.set_postfix_str(f"{item.name} frame {frame}")
        collector.add(index, entry)
        count += 1
    bar.close()
    thread.join()
    return count


def merge(output: str, shards, class_names: List[str]) -> Dict:
    """``predictions.json``, ``images.json`` and ``failures.json`` from every shard, ids in the inputs'
    order (the same whether the run was interrupted or not)."""
    images, results, failures = [], [], []
    for index in range(len(shards)):
        data = json.loads(pathlib.Path(_shard_path(output, index)).read_text())
        for entry in data["images"]:
            image_id = len(images) + 1
            record = {"id": image_id, "file_name": entry["file_name"], "height": entry["height"],
                      "width": entry["width"]}
            if "frame" in entry:
                record.update(video=entry["video"], frame=entry["frame"])
            images.append(record)
            results += [{"image_id": image_id, "category_id": d["class"] + 1, "bbox": d["bbox"],
                         "score": d["score"]} for d in entry["detections"]]
        failures += data["failures"]
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]
    atomic_write_json(os.path.join(output, "predictions.json"), results)
    atomic_write_json(os.path.join(output, "images.json"), {"images": images, "categories": categories}, indent=1)
    atomic_write_json(os.path.join(output, "failures.json"), failures, indent=1)
    return {"images": images, "results": results, "failures": failures}


def score_predictions(output: str, ground_truth: str) -> Dict[str, float]:
    """COCO box AP of ``output``'s predictions against a COCO ground-truth file (images matched by
    base file name, categories by name): pycocotools' 12 summary figures by name, in percent."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ours = json.loads(pathlib.Path(output, "images.json").read_text())
    results = json.loads(pathlib.Path(output, "predictions.json").read_text())
    gt = COCO(ground_truth)
    by_name = {}
    for im in gt.dataset["images"]:
        by_name.setdefault(os.path.basename(im["file_name"]), im["id"])
    cat_by_name = {c["name"]: c["id"] for c in gt.dataset["categories"]}
    image_map = {im["id"]: by_name.get(os.path.basename(im["file_name"])) for im in ours["images"]}
    cat_map = {c["id"]: cat_by_name.get(c["name"]) for c in ours["categories"]}
    if not any(cat_map.values()):
        raise PredictError(f"{output}/images.json: no category name ({', '.join(c['name'] for c in ours['categories'])}) "
                           f"is one of {ground_truth}'s ({', '.join(cat_by_name)}); categories are matched by name")
    mapped = [{**r, "image_id": image_map[r["image_id"]], "category_id": cat_map[r["category_id"]]}
              for r in results if image_map.get(r["image_id"]) and cat_map.get(r["category_id"])]
    ev = COCOeval(gt, gt.loadRes(mapped) if mapped else COCO(), "bbox")
    ev.params.imgIds = sorted({i for i in image_map.values() if i})
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    return {n: float(v) * 100 for n, v in zip(names, ev.stats)}


# -- the command line ---------------------------------------------------------------------------
def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predict.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", "--config", dest="config_file", required=True, metavar="FILE",
                   help="the detector's config (a path or a shipped config's name)")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="pictures, folders (searched recursively), globs and videos")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="folder for the drawn pictures and videos, predictions.json, images.json, "
                        "failures.json; run again with the same folder to finish a killed run")
    p.add_argument("--confidence-threshold", type=float, default=0.5, metavar="S",
                   help="draw detections scoring at least S (default 0.5); predictions.json keeps "
                        "every detection the model returns")
    p.add_argument("--runtime", default="auto", choices=RUNTIME_CHOICES,
                   help="auto (default): an exported model through the runtime measured fastest "
                        "on this CPU kind, a checkpoint eagerly; or name one")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="fp32 (default) or bf16 (an exported model through OpenVINO, CPUs with "
                        "native bf16)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="inference threads (default: the physical cores available; with --ray, "
                        "each actor's CPUs)")
    p.add_argument("--shard-size", type=int, default=SHARD_IMAGES, metavar="N",
                   help=f"pictures per shard, the unit written at once and skipped when a run is "
                        f"started again (default {SHARD_IMAGES}); each video is a shard")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="spread the pictures over Ray actors (pip install -e .[ray]): no address "
                        "or 'local' starts Ray on this machine, 'auto' joins the cluster started "
                        "with 'ray start', or give ray://HOST:PORT")
    p.add_argument("--ray-actors", type=int, default=None, metavar="N",
                   help="with --ray: actors, one model each (default: CPUs // --ray-cpus-per-actor)")
    p.add_argument("--ray-cpus-per-actor", type=int, default=2, metavar="N",
                   help="with --ray: CPUs (and runtime threads) per actor (default 2)")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config overrides; MODEL.WEIGHTS the checkpoint or exported model")
    return p


def _check_args(args) -> None:
    if not 0.0 <= args.confidence_threshold <= 1.0:
        raise PredictError(f"--confidence-threshold {args.confidence_threshold} is not valid; give a "
                           "score in [0, 1], e.g. 0.5")
    for flag in ("threads", "ray_actors", "ray_cpus_per_actor", "shard_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise PredictError(f"--{flag.replace('_', '-')} {value} is not valid; give a positive number")


def run(args) -> Dict:
    """The command as ``args`` say; returns the summary (also printed as one line)."""
    _check_args(args)
    start = time.perf_counter()
    cfg = load_config(args.config_file, args.opts)
    items = collect_inputs(args.input)
    shards = plan_shards(items, args.shard_size)
    if args.ray is not None:
        from .predict_ray import RayPlan

        loading = 0.0  # each actor loads its own model
        plan = RayPlan(args, cfg)  # checks the model and ray before anything is written
        has_videos = any(i.kind == "video" for i in items)  # videos run in this process
        predictor = build_predictor(cfg, args.runtime, args.precision, args.threads) if has_videos else None
        settings = _settings(cfg, args.config_file, plan.runtime, args.precision)
        class_names = plan.class_names
    else:
        loading = time.perf_counter()
        predictor = build_predictor(cfg, args.runtime, args.precision, args.threads)
        loading = time.perf_counter() - loading
        settings = _settings(cfg, args.config_file, predictor.runtime, predictor.precision)
        class_names = predictor.class_names
    _check_output(args.output, settings)
    done = _done_shards(args.output, shards)
    todo = [i for i in range(len(shards)) if i not in done]
    skipped = sum(len(shards[i]) for i in done)
    if done:
        print(f"predict.py: {len(done)} of {len(shards)} shards already done in {args.output} "
              f"({skipped} inputs skipped)", file=sys.stderr)
    if args.ray is not None:
        pictures = [i for i in todo if shards[i][0].kind == "image"]
        count = plan.run(shards, pictures, args.output, args.confidence_threshold)
        videos = [i for i in todo if shards[i][0].kind == "video"]
        if videos:
            count += run_local(predictor, shards, videos, args.output, args.confidence_threshold)
    else:
        count = run_local(predictor, shards, todo, args.output, args.confidence_threshold)
    merged = merge(args.output, shards, class_names)
    seconds = time.perf_counter() - start
    frames = sum(1 for im in merged["images"] if "frame" in im)
    summary = {"inputs": len(items), "pictures": len(merged["images"]) - frames, "video_frames": frames,
               "failures": len(merged["failures"]), "predicted_now": count, "skipped": skipped,
               "seconds": round(seconds, 2), "per_second": round(count / seconds, 3) if seconds else 0.0,
               "predictor_seconds": round(predictor.seconds, 2) if predictor is not None else None,
               "model_load_seconds": round(loading, 2),
               "runtime": settings["runtime"], "precision": settings["precision"], "output": args.output}
    print(f"predict.py: {summary['pictures']} pictures, {frames} video frames, {summary['failures']} failed "
          f"({count} predicted now, {skipped} inputs done before) in {seconds:.1f} s, "
          f"{summary['per_second']:.2f} images/s; runtime {summary['runtime']}, "
          f"precision {summary['precision']}; "
          f"{os.path.join(args.output, 'predictions.json')} (+ images.json, failures.json), "
          f"pictures in {os.path.join(args.output, 'pictures')}"
          + (f", videos in {os.path.join(args.output, 'videos')}" if frames else ""))
    if merged["failures"]:
        print(f"predict.py: {len(merged['failures'])} inputs could not be read; reasons in "
              f"{os.path.join(args.output, 'failures.json')}", file=sys.stderr)
    return summary


def main(argv=None) -> int:
    """The command line's work: 0 when every input was predicted, 1 when some could not be read."""
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return 1 if run(args)["failures"] else 0


def cli(argv=None) -> int:
    """The command line: :func:`main`'s exit status, or 2 after a one-line error."""
    return run_tool("predict.py", main, argv)
