"""ResNeXtTrainer: detectron2's DefaultTrainer with COCO evaluation, the project's
checkpointer and (optionally) the fast inference path for evaluation.

Overridden: ``build_train_loader`` (checked mapper, resumable sampler), ``build_hooks``
(no checkpoint of non-finite weights), ``resume_or_load`` (sampler data position),
``train`` (solver check first, clear errors), ``build_evaluator`` and ``test``; the
training step, writers (ETA and losses on the console, ``metrics.json``, TensorBoard
events) and the other hooks are detectron2's.

Kill safety: checkpoints and ``last_checkpoint`` are written atomically (the project's
checkpointer), the sampler's seed is part of every checkpoint and a resumed run skips the
images the finished iterations consumed, so ``--resume`` continues with the same
iteration, learning rate and data position.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import random
import weakref

import numpy as np
import torch
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.engine import hooks as d2_hooks
from detectron2.evaluation import COCOEvaluator
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from ..config import ResNeXtConfigError
from ..data.coco_json import DatasetError, checked_mapper
from ..data.sampler import PositionSeededDataset, ResumableTrainingSampler
from ..io import atomic_write_json
from ..weights import ResNeXtCheckpointer as Checkpointer
from ..weights import WeightsError
from .checks import TrainingConfigError, validate_solver
from .fast import apply_training_switches, prepare_for_inference
from .fast.auto import parse_switch

__all__ = ["ResNeXtTrainer", "Checkpointer", "make_checkpointer", "load_checkpoint", "EVAL_RESULTS",
           "NonFiniteLossError", "validate_for_workers", "RandomStreams", "preserved_random_streams"]

logger = logging.getLogger(__name__)
# training progress lines go where detectron2's own go (console and log.txt via default_setup)
_train_logger = logging.getLogger("detectron2.engine.train_loop")
EVAL_RESULTS = "eval_results.json"  # in <OUTPUT_DIR>/inference/
TRAINING_LAYOUT = "training_layout.json"  # in <OUTPUT_DIR>: what 'auto' chose for this run


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def apply_recorded_training_switches(model, cfg):
    """``MODEL.RESNEXT.FAST.*_TRAIN`` applied to ``model``; what ``auto`` chose is recorded in
    ``<OUTPUT_DIR>/training_layout.json`` when a run starts and reused by every later start in
    that folder (``--resume``), so a resumed run computes exactly what the run it continues
    computed (``auto`` decides partly by a timing probe, which may differ between starts).
    Explicit ``on``/``off`` values always win over the record."""
    fast = cfg.MODEL.RESNEXT.FAST
    path = os.path.join(cfg.OUTPUT_DIR, TRAINING_LAYOUT)
    recorded = {}
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        if parse_switch(fast.CHANNELS_LAST_TRAIN, "CHANNELS_LAST_TRAIN") is None:
            recorded["channels_last"] = bool(saved["channels_last"])
        if parse_switch(fast.FOLD_FROZEN_BN_TRAIN, "FOLD_FROZEN_BN_TRAIN") is None:
            recorded["fold_frozen_bn"] = bool(saved["fold_frozen_bn"])
        if recorded:
            _train_logger.info("Training layout %s: recorded in %s when this run started", recorded, path)
    model = apply_training_switches(model, cfg, **recorded)
    chosen = getattr(model, "_resnext_fast", {})
    if not os.path.isfile(path) and comm.is_main_process():
        atomic_write_json(path, {"channels_last": bool(chosen.get("channels_last")),
                                 "fold_frozen_bn": bool(chosen.get("folded_on_the_fly")),
                                 "reason": chosen.get("layout_reason", "")}, indent=1)
    return model


class NonFiniteLossError(FloatingPointError):
    """Training diverged: a loss (or, at a checkpoint, a weight) became NaN or infinite."""


_USER_ERRORS = (ResNeXtConfigError, WeightsError, DatasetError, TrainingConfigError)


class RandomStreams:
    """The training process's random streams (torch CPU and CUDA, numpy, Python) as a
    checkpointable: saved in every checkpoint and restored on ``--resume``, so the draws a
    resumed run makes (RPN anchor and RoI sampling, any global-stream augmentation) are the
    ones the uninterrupted run made."""

    # Held as tensors, ints and lists only, so the checkpoint stays loadable by a plain
    # torch.load(weights_only=True) and by stock detectron2 (numpy objects would not be).
    def state_dict(self) -> dict:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        state = {"torch": torch.get_rng_state(),
                 "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                           "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
                 "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next}}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
        py = state["python"]
        random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_random_streams():
    """Run the body without moving the process's random streams (evaluation during training
    must not change what the next training iteration draws)."""
    saved = RandomStreams().state_dict()
    try:
        yield
    finally:
        RandomStreams().load_state_dict(saved)


def validate_for_workers(cfg, world_size: int) -> None:
    """``validate_solver`` for ``cfg`` as it will run on ``world_size`` workers: the values
    as written (split over ``SOLVER.REFERENCE_WORLD_SIZE`` workers when set) and after
    detectron2's linear scaling to ``world_size``.

    Raises:
        TrainingConfigError: naming the key, the value and what would work.
    """
    ref = int(cfg.SOLVER.REFERENCE_WORLD_SIZE)
    validate_solver(cfg, ref if ref > 0 else world_size)
    if ref > 0 and ref != world_size:
        validate_solver(DefaultTrainer.auto_scale_workers(cfg, world_size), world_size)


def make_checkpointer(model, cfg, save_dir=None, **checkpointables):
    """The project's checkpointer for ``model`` saving under ``save_dir`` (default OUTPUT_DIR)."""
    save_dir = cfg.OUTPUT_DIR if save_dir is None else save_dir
    return Checkpointer(model, save_dir, cfg=cfg, **checkpointables)


def load_checkpoint(model, cfg, path, *, resume=False):
    """Load ``path`` (or the last checkpoint in OUTPUT_DIR when ``resume``) into ``model``."""
    return make_checkpointer(model, cfg).resume_or_load(path, resume=resume)


class _QuietExpectedErrors(logging.Filter):
    """Drops detectron2's "Exception during training:" traceback for errors this trainer
    reports itself as one clear line (non-finite losses, the project's input errors)."""

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and isinstance(exc, (FloatingPointError,) + _USER_ERRORS))


class ResNeXtTrainer(DefaultTrainer):
    """DefaultTrainer + COCO box AP (pycocotools, no C++ extension needed) + results JSON."""

    def __init__(self, cfg):
        # DefaultTrainer's construction order, with two changes: DDP without device_ids on
        # CPU (detectron2 passes [local_rank], which DDP refuses for CPU modules, so GLOO
        # training on CPU processes would fail), and the project's checkpointer.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        validate_for_workers(cfg, comm.get_world_size())  # fail in seconds, not mid-run
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        if cfg.SEED >= 0:
            # each trainer (each stage of a plan) starts from the same random state whatever
            # ran before it in this process (a resumed plan skips finished stages)
            seed_all_rng(cfg.SEED + comm.get_rank())
        model = self.build_model(cfg)
        # MODEL.RESNEXT.FAST.{CHANNELS_LAST_TRAIN, AUTOCAST_TRAIN, FOLD_FROZEN_BN_TRAIN}; before
        # the optimizer is built, so its state follows the parameters' memory format
        model = apply_recorded_training_switches(model, cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        self.sampler = getattr(data_loader, "resnext_sampler", None)
        ddp_kwargs = {"broadcast_buffers": False}
        if cfg.MODEL.DEVICE == "cpu":
            ddp_kwargs["device_ids"] = None
        model = create_ddp_model(model, **ddp_kwargs)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = make_checkpointer(model, cfg, trainer=weakref.proxy(self))
        if self.sampler is not None:  # its seed goes into every checkpoint
            self.checkpointer.add_checkpointable("sampler", self.sampler)
        self.checkpointer.add_checkpointable("rng", RandomStreams())  # so do the random streams
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_train_loader(cls, cfg):
        """detectron2's ``build_detection_train_loader`` with the checked mapper (errors name
        the image file), a keyed :class:`ResumableTrainingSampler` (seed ``cfg.SEED`` when
        >= 0, else a random one shared by all workers) and a :class:`PositionSeededDataset`
        (each image's augmentation seeded from its place in the stream), so a resumed run
        draws exactly the images and augmentations the uninterrupted run drew. The sampler
        is attached as ``loader.resnext_sampler``."""
        mapper = checked_mapper(cfg, True)
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":  # other samplers: detectron2's own
            return build_detection_train_loader(cfg, mapper=mapper)
        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
            if cfg.MODEL.KEYPOINT_ON else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        sampler = ResumableTrainingSampler(len(dicts), seed=cfg.SEED if cfg.SEED >= 0 else None, keyed=True)
        loader = build_detection_train_loader(
            PositionSeededDataset(dicts, mapper, sampler), mapper=None, sampler=sampler,
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            # the loader's own seed: creating its iterator must not draw from the process's
            # torch stream (a resumed run creates it at another point of that stream)
            seed=sampler.seed)
        loader.resnext_sampler = sampler
        return loader

    def build_hooks(self):
        """detectron2's hooks; the periodic checkpointer refuses to save non-finite weights."""
        ret = super().build_hooks()
        return [_FiniteCheckpointer(h.checkpointer, h.period, max_to_keep=h.max_to_keep)
                if isinstance(h, d2_hooks.PeriodicCheckpointer) else h for h in ret]

    def resume_or_load(self, resume=True):
        """detectron2's, then the sampler starts after the images the finished iterations used
        (the data loader iterator is created lazily at the first step, after this)."""
        super().resume_or_load(resume=resume)
        if self.sampler is not None:
            self.sampler.set_start_iter(self.start_iter, self.cfg.SOLVER.IMS_PER_BATCH)
            if self.start_iter:
                _train_logger.info("Resuming at iteration %d: data stream seed %s, skipping %d images",
                            self.start_iter, self.sampler._seed, self.sampler.start)

    def train(self):
        """detectron2's ``DefaultTrainer.train`` with clear errors: a non-finite loss raises
        :class:`NonFiniteLossError` naming the iteration, the loss terms and the last
        checkpoint (nothing is saved on that path); the project's input errors are logged
        as one line."""
        quiet = _QuietExpectedErrors()  # these get one clear line below, not a traceback
        _train_logger.addFilter(quiet)
        try:
            return super().train()
        except NonFiniteLossError:
            raise
        except FloatingPointError as e:
            msg = str(e)
            if "iteration" not in msg:  # e.g. the box head's "Predicted boxes ... Inf/NaN"
                msg = f"Non-finite values at iteration={self.iter}: {msg}"
            if "loss_dict" not in msg:
                msg += f"\n{self._last_losses()}"
            raise NonFiniteLossError(f"{msg}\n{self._recovery_hint()}") from None
        except _USER_ERRORS as e:
            _train_logger.error("Training stopped at iteration %d: %s", self.iter, e)
            raise
        finally:
            _train_logger.removeFilter(quiet)

    def _last_losses(self) -> str:
        try:
            latest = self.storage.latest()
        except Exception:  # no storage yet
            return "No loss was recorded before."
        losses = {k: v for k, v in latest.items() if k.startswith("loss") or k == "total_loss"}
        if not losses:
            return "No loss was recorded before."
        it = max(i for _, i in losses.values())
        terms = ", ".join(f"{k}={v:.4g}" for k, (v, _) in sorted(losses.items()))
        return f"Loss terms at the last finite iteration {it}: {terms}"

    def _recovery_hint(self) -> str:
        last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else None
        where = (f"The last good checkpoint {last} is unchanged (no checkpoint is written after a "
                 "non-finite loss)" if last else "No checkpoint was written yet")
        return (f"{where}. Lower SOLVER.BASE_LR (now {self.cfg.SOLVER.BASE_LR}) or "
                f"lengthen SOLVER.WARMUP_ITERS (now {self.cfg.SOLVER.WARMUP_ITERS}), or enable "
                "SOLVER.CLIP_GRADIENTS, then rerun (with --resume to continue from that checkpoint).")

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
            # a copy: the training model (and its checkpoints) stay as they are
            eval_model = copy.deepcopy(_unwrap(model))
            prepared = prepare_for_inference(eval_model, precision=fast.PRECISION)
            model = prepared if prepared is not None else eval_model
        with preserved_random_streams():  # evaluation mid-training leaves training's draws alone
            results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and results:
            path = os.path.join(cfg.OUTPUT_DIR, "inference", EVAL_RESULTS)
            atomic_write_json(path, {"datasets": list(cfg.DATASETS.TEST), "weights": cfg.MODEL.WEIGHTS,
                                     "results": results}, indent=2, default=float)
            logger.info("Evaluation results written to %s", path)
        return results


class _FiniteCheckpointer(d2_hooks.PeriodicCheckpointer):
    """detectron2's periodic checkpointer hook that never saves NaN/inf weights: a diverged
    step must not replace the last good checkpoint."""

    def after_step(self):
        it = int(self.trainer.iter)
        due = (it + 1) % self.period == 0 or (self.max_iter is not None and it >= self.max_iter - 1)
        if due:
            bad = [n for n, p in _unwrap(self.checkpointer.model).state_dict().items()
                   if p.is_floating_point() and not bool(torch.isfinite(p).all())]
            if bad:
                more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
                raise NonFiniteLossError(
                    f"Weights became infinite or NaN at iteration={it}: {', '.join(bad[:5])}{more}; "
                    f"checkpoint not saved.\n{self.trainer._recovery_hint()}")
        super().after_step()
