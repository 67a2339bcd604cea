"""ResNeXtTrainer composes with detectron2: only DefaultTrainer's documented hooks are
overridden; the one construction detectron2 cannot do (DDP on CPU processes) is kept apart,
and fails here first when detectron2's constructor changes."""
import inspect

import pytest
from detectron2.engine import DefaultTrainer, create_ddp_model

from resnext_det.engine.trainer import ResNeXtTrainer, build_trainer, construct_on_cpu_workers

DOCUMENTED_HOOKS = {"build_model", "build_optimizer", "build_train_loader", "build_evaluator",
                    "build_hooks", "build_test_loader", "test"}


def test_trainer_overrides_only_documented_hooks():
    overridden = {name for name, value in vars(ResNeXtTrainer).items()
                  if not name.startswith("__") and any(name in vars(base) for base in DefaultTrainer.__mro__)}
    assert overridden <= DOCUMENTED_HOOKS, overridden - DOCUMENTED_HOOKS
    assert "__init__" not in vars(ResNeXtTrainer)


@pytest.mark.parametrize("name", sorted(DOCUMENTED_HOOKS))
def test_documented_hooks_exist_in_detectron2(name):
    # the list above is detectron2's: a renamed hook upstream would silently stop being called
    assert callable(getattr(DefaultTrainer, name))


def test_detectron2_constructor_is_the_one_mirrored_for_cpu_workers():
    """construct_on_cpu_workers mirrors DefaultTrainer.__init__(self, cfg) and passes
    create_ddp_model's keyword arguments through to DDP: a change of either upstream fails here."""
    assert list(inspect.signature(DefaultTrainer.__init__).parameters) == ["self", "cfg"]
    params = inspect.signature(create_ddp_model).parameters
    assert list(params) == ["model", "fp16_compression", "kwargs"]
    assert params["kwargs"].kind is inspect.Parameter.VAR_KEYWORD


def _tiny_trainer_cfg(tmp_path, tiny_resnext_cfg, name):
    from resnext_det.data.synthetic import register_synthetic_coco

    train, _ = register_synthetic_coco(name, str(tmp_path / "data"), num_train=2, num_val=1, image_size=32)
    cfg = tiny_resnext_cfg(**{"MODEL.RESNEXT.FAST.CHANNELS_LAST_TRAIN": "off",
                              "MODEL.RESNEXT.FAST.FOLD_FROZEN_BN_TRAIN": "off"})
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train,), ()
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.SOLVER.REFERENCE_WORLD_SIZE = 2, 1, 0
    cfg.SOLVER.STEPS = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.TEST.EVAL_PERIOD = 0
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    return cfg


def test_cpu_workers_construction_equals_detectron2s(tmp_path, tiny_resnext_cfg):
    """In one process the mirrored construction must give what DefaultTrainer.__init__ gives:
    the same attributes, hooks and trainer state (a new step upstream shows up here)."""

    class Mine(ResNeXtTrainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            return "mine"

    cfg = _tiny_trainer_cfg(tmp_path, tiny_resnext_cfg, "cpu_workers_unit")
    stock = Mine(cfg)
    mirrored = construct_on_cpu_workers(Mine, cfg)
    assert type(mirrored) is Mine and mirrored.build_evaluator(None, "x") == "mine"
    assert set(vars(mirrored)) == set(vars(stock))
    assert [type(h) for h in mirrored._hooks] == [type(h) for h in stock._hooks]
    assert set(mirrored.state_dict()) == set(stock.state_dict())
    assert type(mirrored.model) is type(stock.model)
    assert mirrored.max_iter == stock.max_iter and mirrored.start_iter == stock.start_iter
    assert type(build_trainer(Mine, cfg)) is Mine  # one process: detectron2's own construction
