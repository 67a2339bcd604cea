"""A checked COCO-format reader: clear errors instead of tracebacks deep inside detectron2
(:func:`load_coco_json_checked`: structure, references, image files; degenerate boxes dropped).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
from typing import Any, Dict, List, Optional

from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data.datasets.coco import load_coco_json

from ..config import UserInputError
from ..io import atomic_write_json

__all__ = ["DatasetError", "validate_coco_dict", "load_coco_json_checked", "check_cache_dir", "register_coco_checked",
           "CheckedDatasetMapper", "checked_mapper"]

logger = logging.getLogger(__name__)


class DatasetError(UserInputError, ValueError):
    """A dataset file that cannot be used; the message names the file, the entry and a fix."""


def _read_json(json_file: str) -> Any:
    if not os.path.isfile(json_file):
        root = os.environ.get("DETECTRON2_DATASETS", "datasets")
        raise DatasetError(
            f"COCO annotation file {json_file!r} does not exist. Put it there, or point "
            f"DETECTRON2_DATASETS (now {root!r}) at the folder that holds coco/annotations/."
        )
    try:
        with open(json_file, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DatasetError(f"cannot read COCO annotation file {json_file!r}: {e}") from None
    if not raw.strip():
        raise DatasetError(f"COCO annotation file {json_file!r} is empty; expected a JSON object "
                           "with 'images', 'annotations' and 'categories'")
    try:
        return json.loads(raw)
    except UnicodeDecodeError as e:
        raise DatasetError(f"{json_file!r} is not UTF-8 text ({e.reason} at byte {e.start}); "
                           "expected a COCO JSON file") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{json_file!r} is not valid JSON (line {e.lineno}, column {e.colno}: "
                           f"{e.msg}); expected a COCO instances JSON file") from None
    except RecursionError:
        raise DatasetError(f"{json_file!r} is nested too deeply to be a COCO JSON file") from None


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _examples(items, n=5) -> str:
    items = list(items)
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return ", ".join(repr(i) for i in items[:n]) + more


def validate_coco_dict(data: Any, source: str = "<dict>") -> Dict[str, Any]:
    """Check a parsed COCO instances dict (``source`` names it in messages); return a copy without
    degenerate boxes. :class:`DatasetError` for missing keys, malformed entries, unknown
    references or duplicate ids."""
    if not isinstance(data, dict):
        raise DatasetError(f"{source}: top level is a {type(data).__name__}; a COCO file is a JSON "
                           "object with 'images', 'annotations' and 'categories'")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise DatasetError(f"{source}: missing top-level key(s) {missing}; a COCO instances file has "
                           "'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise DatasetError(f"{source}: '{key}' must be a list, got {type(data[key]).__name__}")

    def check_entry(kind, i, entry, required):
        if not isinstance(entry, dict):
            raise DatasetError(f"{source}: {kind}[{i}] is a {type(entry).__name__}, expected an object")
        lacking = [k for k, _ in required if k not in entry]
        if lacking:
            raise DatasetError(f"{source}: {kind}[{i}] (id {entry.get('id')!r}) lacks {lacking}")
        for k, typ in required:
            v = entry[k]
            if not isinstance(v, typ) or isinstance(v, bool):
                raise DatasetError(f"{source}: {kind}[{i}].{k} = {v!r} has the wrong type "
                                   f"(expected {typ.__name__})")

    image_ids = set()
    for i, img in enumerate(data["images"]):
        check_entry("images", i, img, [("id", int), ("file_name", str), ("height", int), ("width", int)])
        if img["height"] <= 0 or img["width"] <= 0:
            raise DatasetError(f"{source}: images[{i}] ({img['file_name']!r}) has size "
                               f"{img['height']}x{img['width']}; height and width must be positive")
        if img["id"] in image_ids:
            raise DatasetError(f"{source}: duplicate image id {img['id']} (images[{i}])")
        image_ids.add(img["id"])
    cat_ids = set()
    for i, cat in enumerate(data["categories"]):
        check_entry("categories", i, cat, [("id", int), ("name", str)])
        if cat["id"] in cat_ids:
            raise DatasetError(f"{source}: duplicate category id {cat['id']} (categories[{i}])")
        cat_ids.add(cat["id"])
    if not cat_ids:
        raise DatasetError(f"{source}: 'categories' is empty; at least one category is needed")

    kept, bad_images, bad_cats, ann_ids = [], {}, {}, set()
    for i, ann in enumerate(data["annotations"]):
        check_entry("annotations", i, ann, [("id", int), ("image_id", int), ("category_id", int),
                                            ("bbox", list)])
        if ann["id"] in ann_ids:
            raise DatasetError(f"{source}: duplicate annotation id {ann['id']} (annotations[{i}])")
        ann_ids.add(ann["id"])
        box = ann["bbox"]
        if len(box) != 4 or not all(_is_number(v) for v in box):
            raise DatasetError(f"{source}: annotations[{i}] (id {ann['id']}) bbox {box!r} is not "
                               "[x, y, width, height] numbers")
        if ann["image_id"] not in image_ids:
            bad_images.setdefault(ann["image_id"], ann["id"])
        if ann["category_id"] not in cat_ids:
            bad_cats.setdefault(ann["category_id"], ann["id"])
        if box[2] > 0 and box[3] > 0:
            kept.append(ann)
    degenerate = len(data["annotations"]) - len(kept)
    if bad_images:
        raise DatasetError(
            f"{source}: annotations point at image ids that are not in 'images': "
            f"{_examples(sorted(bad_images))} (e.g. annotation id {next(iter(bad_images.values()))})")
    if bad_cats:
        raise DatasetError(
            f"{source}: annotations use category ids that are not in 'categories' "
            f"{sorted(cat_ids)}: {_examples(sorted(bad_cats))} "
            f"(e.g. annotation id {next(iter(bad_cats.values()))})")
    if degenerate:
        logger.warning("%s: dropped %d degenerate box(es) with zero or negative width/height",
                       source, degenerate)
    return dict(data, annotations=kept, _dropped_degenerate_boxes=degenerate)


def check_cache_dir() -> str:
    """Where passed data checks are remembered: ``dataset_checks`` in ``$RESNEXT_DET_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/resnext_det`` (``~/.cache/resnext_det``)."""
    root = os.environ.get("RESNEXT_DET_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "resnext_det")
    return os.path.join(root, "dataset_checks")


def _check_record(json_file: str, image_root: str, check_image_files: bool):
    """``(key, record path)`` of a check of the file as it is now; ``(None, "")`` when it is missing."""
    try:
        st = os.stat(json_file)
    except OSError:
        return None, ""
    key = {"json_file": os.path.abspath(json_file), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
           "image_root": os.path.abspath(image_root), "image_files": bool(check_image_files)}
    name = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return key, os.path.join(check_cache_dir(), name + ".json")


def _checked_before(key: Optional[Dict[str, Any]], record: str) -> bool:
    try:
        with open(record) as f:
            return key is not None and json.load(f).get("key") == key
    except (OSError, ValueError):
        return False


def load_coco_json_checked(json_file: str, image_root: str, dataset_name: Optional[str] = None,
                           *, check_image_files: bool = True, use_cache: bool = True) -> List[Dict[str, Any]]:
    """Validate a COCO instances file (with ``check_image_files``, that every image exists), then
    load it with detectron2's ``load_coco_json``; returns its dicts, degenerate boxes removed. With
    ``use_cache``, a file that passed on this machine (same size, mtime and image root: a record in
    :func:`check_cache_dir`) is not validated again, so workers skip the check."""
    key, record = _check_record(json_file, image_root, check_image_files) if use_cache else (None, "")
    if _checked_before(key, record):
        return load_coco_json(json_file, image_root, dataset_name)
    data = validate_coco_dict(_read_json(json_file), source=json_file)
    if check_image_files:
        absent = [img["file_name"] for img in data["images"]
                  if not os.path.isfile(os.path.join(image_root, img["file_name"]))]
        if absent:
            raise DatasetError(
                f"{len(absent)} of {len(data['images'])} image file(s) listed in {json_file!r} are "
                f"missing under image root {image_root!r}: {_examples(absent)}")
    if not data.pop("_dropped_degenerate_boxes"):
        del data  # (the parsed JSON: detectron2's loader parses the file again)
        if key is not None:
            try:
                atomic_write_json(record, {"key": key, "result": "passed"})
            except OSError:  # a read-only home: the check simply runs again next time
                logger.debug("cannot remember the data check of %s in %s", json_file, check_cache_dir())
        return load_coco_json(json_file, image_root, dataset_name)
    # detectron2's loader reads a file: give it the cleaned annotations.
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(data, f)
        tmp = f.name
    try:
        dicts = load_coco_json(tmp, image_root, dataset_name)
    finally:
        os.unlink(tmp)
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(json_file=json_file)
    return dicts


class _CachedCocoLoader:
    """``DatasetCatalog`` entry: reads and validates the file once per process (re-read when it
    changes) and hands out a fresh copy each time (detectron2 changes the dicts in place), kept
    pickled: ``pickle.loads`` is faster than ``copy.deepcopy`` and the bytes smaller than the dicts."""

    def __init__(self, json_file: str, image_root: str, name: str):
        self.json_file, self.image_root, self.name = json_file, image_root, name
        self._key = None
        self._blob: Optional[bytes] = None

    def __call__(self) -> List[Dict[str, Any]]:
        try:
            st = os.stat(self.json_file)
            key = (st.st_mtime_ns, st.st_size)
        except OSError:  # missing: the checked loader says so
            key = None
        if self._blob is None or key is None or key != self._key:
            dicts = load_coco_json_checked(self.json_file, self.image_root, self.name)
            self._blob = pickle.dumps(dicts, pickle.HIGHEST_PROTOCOL)
            self._key = key
            return dicts  # the first caller gets the loaded list itself
        return pickle.loads(self._blob)


def register_coco_checked(name: str, json_file: str, image_root: str, metadata: Optional[dict] = None):
    """detectron2's ``register_coco_instances`` through :func:`load_coco_json_checked`, once per process."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, _CachedCocoLoader(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco",
                                  **(metadata or {}))


class CheckedDatasetMapper(DatasetMapper):
    """detectron2's ``DatasetMapper`` whose read errors are a :class:`DatasetError` naming the file."""

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except (OSError, ValueError, SyntaxError) as e:
            if isinstance(e, DatasetError):
                raise
            name = dataset_dict.get("file_name", "<no file_name>")
            raise DatasetError(
                f"cannot read image {name!r} (image id {dataset_dict.get('image_id')}): "
                f"{type(e).__name__}: {e}. Replace the file or remove it from the JSON."
            ) from e


def checked_mapper(cfg, is_train: bool = True) -> CheckedDatasetMapper:
    """A :class:`CheckedDatasetMapper` built from ``cfg`` (as ``DatasetMapper(cfg, is_train)``)."""
    return CheckedDatasetMapper(cfg, is_train)
