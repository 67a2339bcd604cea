"""ResNeXtTrainer: detectron2's DefaultTrainer with COCO evaluation, the project's
checkpointer and (optionally) the fast inference path for evaluation.

Only ``build_evaluator``, ``build_hooks`` (to swap in the checkpointer) and ``test``
are overridden; training, writers (ETA and losses on the console, ``metrics.json``,
TensorBoard events) and hooks are detectron2's.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import weakref

from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

# Single import site of the checkpointer: the project's (issue 3) when available.
try:
    from ..weights import ResNeXtCheckpointer as Checkpointer

    _CHECKPOINTER_TAKES_CFG = True
except ImportError:
    from detectron2.checkpoint import DetectionCheckpointer as Checkpointer

    _CHECKPOINTER_TAKES_CFG = False

__all__ = ["ResNeXtTrainer", "Checkpointer", "make_checkpointer", "load_checkpoint", "EVAL_RESULTS"]

logger = logging.getLogger(__name__)
EVAL_RESULTS = "eval_results.json"  # in <OUTPUT_DIR>/inference/


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def make_checkpointer(model, cfg, save_dir=None, **checkpointables):
    """The project's checkpointer for ``model`` saving under ``save_dir`` (default OUTPUT_DIR)."""
    save_dir = cfg.OUTPUT_DIR if save_dir is None else save_dir
    if _CHECKPOINTER_TAKES_CFG:
        return Checkpointer(model, save_dir, cfg=cfg, **checkpointables)
    return Checkpointer(model, save_dir, **checkpointables)


def load_checkpoint(model, cfg, path, *, resume=False):
    """Load ``path`` (or the last checkpoint in OUTPUT_DIR when ``resume``) into ``model``."""
    return make_checkpointer(model, cfg).resume_or_load(path, resume=resume)


class ResNeXtTrainer(DefaultTrainer):
    """DefaultTrainer + COCO box AP (pycocotools, no C++ extension needed) + results JSON."""

    def __init__(self, cfg):
        # DefaultTrainer's construction order, with two changes: DDP without device_ids on
        # CPU (detectron2 passes [local_rank], which DDP refuses for CPU modules, so GLOO
        # training on CPU processes would fail), and the project's checkpointer.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        ddp_kwargs = {"broadcast_buffers": False}
        if cfg.MODEL.DEVICE == "cpu":
            ddp_kwargs["device_ids"] = None
        model = create_ddp_model(model, **ddp_kwargs)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = make_checkpointer(model, cfg, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """COCOEvaluator with the pure-Python COCOeval; detections go to
        ``<OUTPUT_DIR>/inference/<dataset>/coco_instances_results.json``."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, tasks=("bbox",), distributed=True,
                             output_dir=output_folder, use_fast_impl=False)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's test loop; uses the fast inference path when
        ``MODEL.RESNEXT.FAST.INFERENCE`` and writes the metrics to
        ``<OUTPUT_DIR>/inference/eval_results.json``."""
        fast = cfg.MODEL.RESNEXT.FAST
        if fast.INFERENCE:
            from .fast import prepare_for_inference  # issue 5; imported only when asked for

            # a copy: the training model (and its checkpoints) stay as they are
            eval_model = copy.deepcopy(_unwrap(model))
            prepared = prepare_for_inference(eval_model, precision=fast.PRECISION)
            model = prepared if prepared is not None else eval_model
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and results:
            path = os.path.join(cfg.OUTPUT_DIR, "inference", EVAL_RESULTS)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"datasets": list(cfg.DATASETS.TEST), "weights": cfg.MODEL.WEIGHTS,
                           "results": results}, f, indent=2, default=float)
            os.replace(tmp, path)
            logger.info("Evaluation results written to %s", path)
        return results
