"""COCO 2014/2017 splits on detectron2's builtin datasets, and the pre-training file check. detectron2
registers its splits under ``$DETECTRON2_DATASETS`` as it was *at import time*: :func:`register_coco_splits`
re-points them at the current root; :func:`check_dataset_files` lists every file a config needs not on disk.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterable, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.datasets.builtin import _PREDEFINED_SPLITS_COCO
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

from ..config import ResNeXtConfigError, UserInputError
from ..config_plan import COCO_SPLITS

__all__ = ["COCO_SPLITS", "MissingDatasetFiles", "MissingFile", "check_dataset_files",
           "coco_split_names", "datasets_root", "register_coco_splits", "verify_dataset_files"]


def datasets_root() -> str:
    """detectron2's dataset root: ``$DETECTRON2_DATASETS`` or ``./datasets``."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def coco_split_names(version: str) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(train names, test names) for the paper's trainval35k / minival in ``"coco_2014"`` or
    ``"coco_2017"`` (the same images)."""
    if version not in COCO_SPLITS:
        raise ResNeXtConfigError(f"RESNEXT_PLAN.COCO_SPLITS={version!r} is not valid; use one of "
                                 f"{sorted(COCO_SPLITS)} or '' (DATASETS.TRAIN/TEST as written)")
    return COCO_SPLITS[version]


def register_coco_splits(names: Iterable[str], root: Optional[str] = None) -> None:
    """Make the builtin COCO datasets among ``names`` point at ``root`` (default: the current root)."""
    root = root or datasets_root()
    table = _PREDEFINED_SPLITS_COCO["coco"]  # detectron2's: name -> (image dir, json) under root
    for name in names:
        if name not in table:
            continue
        image_root, json_file = (os.path.join(root, p) for p in table[name])
        if MetadataCatalog.get(name).get("json_file") == json_file and name in DatasetCatalog.list():
            continue
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
        register_coco_instances(name, _get_builtin_metadata("coco"), json_file, image_root)


@dataclasses.dataclass(frozen=True)
class MissingFile:
    """One needed file or folder that is not there."""

    dataset: str  # dataset name, or the config key that needs it
    kind: str  # "annotation file", "image folder", "proposal file", "weights"
    path: str


class MissingDatasetFiles(UserInputError, RuntimeError):
    """Files needed for training/evaluation are missing; ``str()`` says what and where."""

    def __init__(self, missing: Sequence[MissingFile], root: str):
        self.missing = list(missing)
        self.root = root
        super().__init__(format_missing(self.missing, root))


def format_missing(missing: Sequence[MissingFile], root: Optional[str] = None) -> str:
    """The human message for :class:`MissingDatasetFiles`."""
    root = root or datasets_root()
    lines = [f"{len(missing)} file(s) needed by this config are missing:"]
    for m in missing:
        path = os.path.abspath(m.path) if m.kind != "registration" else m.path
        lines.append(f"  - {m.kind} of {m.dataset}: {path}")
    if any(m.kind in ("annotation file", "image folder") for m in missing):
        env = os.environ.get("DETECTRON2_DATASETS")
        lines += [
            f"Dataset root: {os.path.abspath(root)} "
            + (f"(from DETECTRON2_DATASETS={env})" if env else "(DETECTRON2_DATASETS is not set; "
               "default ./datasets)"),
            "Expected layout under it (detectron2 builtin COCO):",
            "  coco/annotations/instances_{train,val}2014.json, instances_minival2014.json,",
            "    instances_valminusminival2014.json, instances_{train,val}2017.json",
            "  coco/train2014/  coco/val2014/  coco/train2017/  coco/val2017/   (the images)",
            "Download COCO from https://cocodataset.org (minival/valminusminival 2014 json: "
            "detectron2's datasets/prepare_for_tests.sh / Detectron's dataset docs), put it there "
            "or set DETECTRON2_DATASETS to the folder that holds coco/.",
        ]
    return "\n".join(lines)


def check_dataset_files(cfg, *, train: bool = True, test: bool = True) -> List[MissingFile]:
    """Every file ``cfg`` needs for its ``train`` / ``test`` datasets (annotation JSONs, image
    folders, proposal files, local weights) that is not on disk; reads nothing."""
    names = (list(cfg.DATASETS.TRAIN) if train else []) + (list(cfg.DATASETS.TEST) if test else [])
    register_coco_splits(names)
    missing: List[MissingFile] = []
    for name in dict.fromkeys(names):
        if name not in DatasetCatalog.list():
            missing.append(MissingFile(name, "registration", f"dataset {name!r} is not registered "
                                       "(known COCO names: coco_2014_train, coco_2014_minival, ...)"))
            continue
        meta = MetadataCatalog.get(name)
        json_file, image_root = meta.get("json_file"), meta.get("image_root")
        if json_file and not os.path.isfile(json_file):
            missing.append(MissingFile(name, "annotation file", json_file))
        if image_root and not os.path.isdir(image_root):
            missing.append(MissingFile(name, "image folder", image_root))
    if cfg.MODEL.LOAD_PROPOSALS:
        files = (list(cfg.DATASETS.PROPOSAL_FILES_TRAIN) if train else []) + (
            list(cfg.DATASETS.PROPOSAL_FILES_TEST) if test else [])
        missing += [MissingFile("DATASETS.PROPOSAL_FILES_*", "proposal file", f)
                    for f in files if not os.path.isfile(f)]
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        missing.append(MissingFile("MODEL.WEIGHTS", "weights", weights))
    return missing


def verify_dataset_files(cfg, **kwargs) -> None:
    """Raise :class:`MissingDatasetFiles` listing what :func:`check_dataset_files` found."""
    missing = check_dataset_files(cfg, **kwargs)
    if missing:
        raise MissingDatasetFiles(missing, datasets_root())
