"""ResNeXtTrainer composes with detectron2: only DefaultTrainer's documented hooks are
overridden; the one construction detectron2 cannot do (DDP on CPU processes) is kept apart,
and fails here first when detectron2's constructor changes."""
import inspect

import pytest
from detectron2.engine import DefaultTrainer, create_ddp_model

from resnext_det.engine.checks import TrainingConfigError
from resnext_det.engine.trainer import ResNeXtCpuWorkersTrainer, ResNeXtTrainer, build_trainer

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
    """ResNeXtCpuWorkersTrainer mirrors DefaultTrainer.__init__(self, cfg) and passes
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
    the same attributes (the step trainer where detectron2 keeps it), hooks, trainer state and
    first step (a new step upstream shows up here)."""
    import torch

    class Mine(ResNeXtCpuWorkersTrainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            return "mine"

    cfg = _tiny_trainer_cfg(tmp_path, tiny_resnext_cfg, "cpu_workers_unit")
    cfg.SEED = 3  # both models and both data streams from the same seed
    stock = ResNeXtTrainer(cfg)
    mirrored = Mine(cfg)
    assert mirrored.build_evaluator(None, "x") == "mine"
    assert set(vars(mirrored)) == set(vars(stock))
    assert type(mirrored._trainer) is type(stock._trainer)
    assert [type(h) for h in mirrored._hooks] == [type(h) for h in stock._hooks]
    assert set(mirrored.state_dict()) == set(stock.state_dict())
    assert set(mirrored.state_dict()["_trainer"]) == set(stock.state_dict()["_trainer"])
    assert type(mirrored.model) is type(stock.model) and mirrored.model is mirrored._trainer.model
    assert mirrored.optimizer is mirrored._trainer.optimizer
    assert mirrored.data_loader is mirrored._trainer.data_loader
    assert mirrored.max_iter == stock.max_iter and mirrored.start_iter == stock.start_iter
    # one step each from the same seed: the same weights (run_step reaches the step trainer)
    from detectron2.utils.events import EventStorage

    def state(t):
        return {k: v.detach().clone() for k, v in t.model.state_dict().items()}

    before, after = [], []
    for t in (stock, mirrored):
        before.append(state(t))
        t.iter = 0
        torch.manual_seed(0)  # the RPN / RoI samplers draw from the global stream
        with EventStorage(0) as t.storage:
            t.run_step()
        after.append(state(t))
    assert all(torch.equal(before[0][k], before[1][k]) for k in before[0])
    assert not all(torch.equal(before[1][k], after[1][k]) for k in before[1])  # the step ran
    assert all(torch.equal(after[0][k], after[1][k]) for k in after[0])
    # one process: detectron2's own construction, whatever the class
    assert type(build_trainer(ResNeXtTrainer, cfg)) is ResNeXtTrainer
    assert type(build_trainer(Mine, cfg)) is Mine


def test_cpu_workers_refuse_a_defaulttrainer_subclass_by_name(monkeypatch, tmp_path, tiny_resnext_cfg):
    """On several CPU processes ResNeXtTrainer becomes ResNeXtCpuWorkersTrainer; another
    DefaultTrainer-built subclass is an error naming the class to derive from."""
    from resnext_det.engine import trainer as trainer_module

    class Theirs(ResNeXtTrainer):
        pass

    cfg = _tiny_trainer_cfg(tmp_path, tiny_resnext_cfg, "cpu_workers_refuse")
    monkeypatch.setattr(trainer_module, "runs_on_cpu_workers", lambda cfg: True)
    with pytest.raises(TrainingConfigError, match="Theirs cannot train on .*ResNeXtCpuWorkersTrainer"):
        build_trainer(Theirs, cfg)
