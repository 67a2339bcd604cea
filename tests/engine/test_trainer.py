"""ResNeXtTrainer composes with detectron2: only DefaultTrainer's documented hooks are
overridden; the one construction detectron2 cannot do (DDP on CPU processes) is kept apart."""
import inspect

import pytest
from detectron2.engine import DefaultTrainer

from resnext_det.engine.trainer import ResNeXtTrainer, for_cpu_workers

DOCUMENTED_HOOKS = {"build_model", "build_optimizer", "build_train_loader", "build_evaluator",
                    "build_hooks", "test"}


def test_trainer_overrides_only_documented_hooks():
    overridden = {name for name, value in vars(ResNeXtTrainer).items()
                  if not name.startswith("__") and any(name in vars(base) for base in DefaultTrainer.__mro__)}
    assert overridden <= DOCUMENTED_HOOKS, overridden - DOCUMENTED_HOOKS
    assert "__init__" not in vars(ResNeXtTrainer)
    # and it reads no private detectron2 state
    src = inspect.getsource(ResNeXtTrainer)
    assert "._trainer" not in src and "_last_eval_results" not in src


def test_cpu_workers_form_keeps_the_subclass_and_its_hooks():
    class Mine(ResNeXtTrainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            return "mine"

    cpu = for_cpu_workers(Mine)
    assert issubclass(cpu, Mine) and cpu.build_evaluator(None, "x") == "mine"
    assert for_cpu_workers(cpu) is cpu  # applied once
    assert cpu.__name__ == "MineOnCpuWorkers"


@pytest.mark.parametrize("name", sorted(DOCUMENTED_HOOKS))
def test_documented_hooks_exist_in_detectron2(name):
    # the list above is detectron2's: a renamed hook upstream would silently stop being called
    assert callable(getattr(DefaultTrainer, name))
