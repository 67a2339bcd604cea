"""Checks run before training starts; each error names the key or file, the value, and what would work."""
from __future__ import annotations

import os
from typing import Iterable, Optional

from detectron2.structures import BoxMode

from ..config import UserInputError
from ..data.proposals import ProposalStore, is_proposal_manifest
from ..weights.safe_io import RestrictedUnpickler, load_restricted_pickle

__all__ = ["TrainingConfigError", "validate_solver", "check_proposal_file", "load_proposal_file"]


class TrainingConfigError(UserInputError, ValueError):
    """A training setting that cannot work."""


def validate_solver(cfg, world_size: int = 1) -> None:
    """Validate ``SOLVER.*`` for a run on ``world_size`` worker processes."""
    s = cfg.SOLVER
    if not (isinstance(s.IMS_PER_BATCH, int) and s.IMS_PER_BATCH > 0):
        raise TrainingConfigError(f"SOLVER.IMS_PER_BATCH={s.IMS_PER_BATCH!r} must be a positive integer")
    if s.IMS_PER_BATCH % max(world_size, 1):
        lower = s.IMS_PER_BATCH - s.IMS_PER_BATCH % world_size
        raise TrainingConfigError(
            f"SOLVER.IMS_PER_BATCH={s.IMS_PER_BATCH} is not divisible by the number of workers "
            f"({world_size} = --num-gpus x --num-machines); use a multiple of {world_size}, "
            f"e.g. {max(lower, world_size)} or {lower + world_size}")
    if not s.BASE_LR > 0:
        raise TrainingConfigError(f"SOLVER.BASE_LR={s.BASE_LR!r} must be > 0 (the paper: 0.02 for the "
                                  "RPN stage, 0.005 for Fast R-CNN, at 16 / 8 images per batch)")
    if not (isinstance(s.MAX_ITER, int) and s.MAX_ITER > 0):
        raise TrainingConfigError(f"SOLVER.MAX_ITER={s.MAX_ITER!r} must be a positive integer")
    if not all(0 < x for x in s.STEPS):
        raise TrainingConfigError(f"SOLVER.STEPS={tuple(s.STEPS)} must hold positive iterations")
    if s.REFERENCE_WORLD_SIZE < 0:
        raise TrainingConfigError(f"SOLVER.REFERENCE_WORLD_SIZE={s.REFERENCE_WORLD_SIZE} must be >= 0 "
                                  "(0 disables linear scaling)")


class _ProposalUnpickler(RestrictedUnpickler):
    """The project's restricted unpickler, also admitting detectron2's ``BoxMode`` (``bbox_mode``)."""

    def find_class(self, module, name):
        if (module, name) == ("detectron2.structures.boxes", "BoxMode"):
            return BoxMode
        return super().find_class(module, name)


def load_proposal_file(path: str):
    """A proposal file as detectron2's proposal dict (``ids``, ``boxes``, ``objectness_logits``,
    ``bbox_mode``): a shard manifest's shards read whole, or a pickle read with
    :class:`_ProposalUnpickler` (:class:`WeightsError` when it is refused or damaged)."""
    if is_proposal_manifest(path):
        return ProposalStore(path).to_detectron2_dict()
    return load_restricted_pickle(path, _ProposalUnpickler,
                                  remedy="run the RPN stage's proposal computation again")


def check_proposal_file(proposal_file: str, image_ids: Iterable, dataset: Optional[str] = None) -> None:
    """Verify that a proposal file (shard manifest: indexes only; or detectron2 pickle) covers every
    image id of ``dataset`` (:class:`TrainingConfigError` otherwise)."""
    where = f" (DATASETS.PROPOSAL_FILES for {dataset})" if dataset else ""
    if not os.path.isfile(proposal_file):
        raise TrainingConfigError(f"proposal file {proposal_file!r}{where} does not exist; run the RPN "
                                  "stage (or its proposal computation) first")
    try:
        if is_proposal_manifest(proposal_file):
            store = ProposalStore(proposal_file)
            store.verify()  # every shard there, of the manifest's shape (headers only)
            data = {"ids": store.ids, "boxes": None}
        else:
            data = load_proposal_file(proposal_file)
    except Exception as e:  # WeightsError and friends: re-label for the context
        raise TrainingConfigError(f"cannot read proposal file {proposal_file!r}{where}: {e}") from None
    if not isinstance(data, dict) or not {"ids", "boxes"} <= set(data):
        raise TrainingConfigError(f"{proposal_file!r}{where} is not a proposal file: expected a dict with "
                                  "'ids', 'boxes' and 'objectness_logits'")
    have = {str(i) for i in data["ids"]}
    want = list(image_ids)
    missing = [i for i in want if str(i) not in have]
    if missing:
        raise TrainingConfigError(
            f"proposal file {proposal_file!r}{where} does not match the dataset: {len(missing)} of "
            f"{len(want)} images have no proposals (e.g. image ids {missing[:5]}); recompute the "
            "proposals for this dataset")
