"""Pre-training checks: solver values and proposal files."""
import pickle

import numpy as np
import pytest
from detectron2.config import get_cfg

from resnext_det.engine.checks import TrainingConfigError, check_proposal_file, validate_solver


def _cfg(**solver):
    cfg = get_cfg()
    for k, v in solver.items():
        cfg.SOLVER[k] = v
    return cfg


def test_good_solver_passes():
    validate_solver(_cfg(IMS_PER_BATCH=16), world_size=8)


@pytest.mark.parametrize("solver,world,fragments", [
    ({"IMS_PER_BATCH": 6}, 4, ["SOLVER.IMS_PER_BATCH=6", "not divisible", "4", "multiple of 4"]),
    ({"BASE_LR": 0.0}, 1, ["SOLVER.BASE_LR=0.0", "> 0"]),
    ({"BASE_LR": -0.02}, 1, ["SOLVER.BASE_LR=-0.02"]),
    ({"MAX_ITER": 0}, 1, ["SOLVER.MAX_ITER=0", "positive"]),
    ({"MAX_ITER": -5}, 1, ["SOLVER.MAX_ITER=-5"]),
    ({"IMS_PER_BATCH": 0}, 1, ["SOLVER.IMS_PER_BATCH=0"]),
])
def test_bad_solver_values(solver, world, fragments):
    with pytest.raises(TrainingConfigError) as e:
        validate_solver(_cfg(**solver), world_size=world)
    for f in fragments:
        assert f in str(e.value), (f, str(e.value))


def _proposals(path, ids):
    with open(path, "wb") as f:
        pickle.dump({"ids": list(ids), "boxes": [np.zeros((2, 4), np.float32) for _ in ids],
                     "objectness_logits": [np.zeros(2, np.float32) for _ in ids], "bbox_mode": 0}, f)


def test_matching_proposal_file_passes(tmp_path):
    _proposals(tmp_path / "p.pkl", [1, 2, 3])
    check_proposal_file(str(tmp_path / "p.pkl"), [1, 2, 3], "train")


def test_proposal_file_for_another_dataset(tmp_path):
    _proposals(tmp_path / "p.pkl", [1, 2, 3])
    with pytest.raises(TrainingConfigError, match=r"does not match the dataset: 2 of 4 images.*\[4, 5\]"):
        check_proposal_file(str(tmp_path / "p.pkl"), [1, 2, 4, 5], "val")


def test_missing_and_non_proposal_files(tmp_path):
    with pytest.raises(TrainingConfigError, match="does not exist"):
        check_proposal_file(str(tmp_path / "none.pkl"), [1])
    with open(tmp_path / "x.pkl", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(TrainingConfigError, match="not a proposal file"):
        check_proposal_file(str(tmp_path / "x.pkl"), [1])
