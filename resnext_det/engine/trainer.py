"""ResNeXtTrainer: detectron2's DefaultTrainer (only its documented hooks overridden) with COCO
evaluation, the project's checkpointer, the fast inference path for evaluation, and checkpoints
that hold every process's data position and random streams, so ``--resume`` continues exactly.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import random
import weakref
from typing import Optional

import numpy as np
import torch
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.engine import hooks as d2_hooks
from detectron2.evaluation import COCOEvaluator
from detectron2.data import (DatasetMapper, build_detection_test_loader, build_detection_train_loader,
                             get_detection_dataset_dicts)
from detectron2.data.build import trivial_batch_collator, worker_init_reset_seed
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from ..config import USER_ERRORS
from ..data.coco_json import checked_mapper
from ..data.proposals import ProposalMapper, stores_for
from ..data.sampler import GroupedBatchSampler, PositionSeededDataset, ResumableTrainingSampler, is_landscape
from ..io import atomic_write_json
from ..weights import load_checkpoint, make_checkpointer
from .checks import TrainingConfigError, validate_solver
from .fast import apply_training_switches_with_report, prepare_for_inference
from .fast.auto import parse_switch
from .machines import is_lost_peer

__all__ = ["ResNeXtTrainer", "make_checkpointer", "load_checkpoint", "EVAL_RESULTS",
           "NonFiniteLossError", "validate_for_workers", "RandomStreams", "preserved_random_streams",
           "DataPosition", "PerProcessState", "build_trainer", "ResNeXtCpuWorkersTrainer", "runs_on_cpu_workers",
           "clear_training_errors", "proposal_stores"]

logger = logging.getLogger(__name__)
# training progress lines go where detectron2's own go (console and log.txt via default_setup)
_train_logger = logging.getLogger("detectron2.engine.train_loop")
EVAL_RESULTS = "eval_results.json"  # in <OUTPUT_DIR>/inference/
TRAINING_LAYOUT = "training_layout.json"  # in <OUTPUT_DIR>: what 'auto' chose for this run


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def apply_recorded_training_switches(model, cfg):
    """``MODEL.RESNEXT.FAST.*_TRAIN`` applied to ``model``; what ``auto`` chose is recorded in
    ``<OUTPUT_DIR>/training_layout.json`` at the first start and reused on ``--resume`` (its
    timing probe may decide otherwise next time). Explicit ``on``/``off`` win over the record."""
    fast = cfg.MODEL.RESNEXT.FAST
    path = os.path.join(cfg.OUTPUT_DIR, TRAINING_LAYOUT)
    recorded = {}
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        for key, name in (("channels_last", "CHANNELS_LAST_TRAIN"), ("fold_frozen_bn", "FOLD_FROZEN_BN_TRAIN")):
            if parse_switch(fast[name], name) is None:
                recorded[key] = bool(saved[key])
        if recorded:
            _train_logger.info("Training layout %s: recorded in %s when this run started", recorded, path)
    model, chosen = apply_training_switches_with_report(model, cfg, **recorded)
    if not os.path.isfile(path) and comm.is_main_process():
        atomic_write_json(path, {"channels_last": chosen.channels_last,
                                 "fold_frozen_bn": bool(chosen.folded_on_the_fly),
                                 "reason": chosen.layout_reason}, indent=1)
    return model


class NonFiniteLossError(FloatingPointError):
    """Training diverged: a loss (or, at a checkpoint, a weight) became NaN or infinite."""


class RandomStreams:
    """The process's random streams (torch CPU and CUDA, numpy, Python) as a checkpointable (the
    local part of a :class:`PerProcessState`): a resumed run draws what the uninterrupted run drew."""

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

    def load_state_dict(self, state: dict, exact: bool = True) -> None:
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
    """Run the body without moving the process's random streams."""
    saved = RandomStreams().state_dict()
    try:
        yield
    finally:
        RandomStreams().load_state_dict(saved)


def validate_for_workers(cfg, world_size: int) -> None:
    """``validate_solver`` for ``cfg`` as written (over ``SOLVER.REFERENCE_WORLD_SIZE`` workers
    when set) and after detectron2's linear scaling to ``world_size``."""
    ref = int(cfg.SOLVER.REFERENCE_WORLD_SIZE)
    validate_solver(cfg, ref if ref > 0 else world_size)
    if ref > 0 and ref != world_size:
        validate_solver(DefaultTrainer.auto_scale_workers(cfg, world_size), world_size)


class _QuietExpectedErrors(logging.Filter):
    """Drops detectron2's "Exception during training:" traceback for errors reported as one
    line elsewhere (non-finite losses, input errors, a lost peer)."""

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and (isinstance(exc, (FloatingPointError,) + USER_ERRORS)
                                         or is_lost_peer(exc)))


class PerProcessState:
    """A checkpointable holding one state per training process: before each save every process
    calls :meth:`gather` (a collective); process 0 saves its ``local`` state at the top level plus
    ``"processes"`` (all, by rank). On load each process takes its own entry, or, from another
    number of processes, the top-level one (``exact=False``)."""

    def __init__(self, local):
        self.local = local
        self._gathered: Optional[list] = None

    def gather(self) -> None:
        states = comm.gather(self.local.state_dict(), dst=0)
        self._gathered = states if comm.is_main_process() else None

    def state_dict(self) -> dict:
        states, self._gathered = self._gathered, None
        if states is None:  # one process, or a save outside the periodic checkpointer
            states = [self.local.state_dict()]
        return {**states[0], "processes": states}

    def load_state_dict(self, state: dict) -> None:
        states = state.get("processes")
        world, rank = comm.get_world_size(), comm.get_rank()
        if states is not None and len(states) == world:
            self.local.load_state_dict(states[rank], exact=True)
            return
        top = {k: v for k, v in state.items() if k != "processes"}
        if rank == 0:
            saved = "an unknown number of" if states is None else str(len(states))
            _train_logger.warning(
                "The checkpoint holds the state of %s process(es); resuming on %d: every process "
                "continues from process 0's (not bit-identical to an uninterrupted run)", saved, world)
        self.local.load_state_dict(top, exact=False)


class DataPosition:
    """This process's place in the training data (local part of a :class:`PerProcessState`):
    the sampler's seed, the images all processes consumed and this process's
    :class:`GroupedBatchSampler` state after the batches the model took (not what the loader
    read ahead)."""

    def __init__(self, batches: GroupedBatchSampler, trainer, ims_per_batch: int):
        self._batches, self._loop, self._ims_per_batch = batches, trainer, int(ims_per_batch)
        self._sampler: ResumableTrainingSampler = batches.sampler

    def state_dict(self) -> dict:
        done = int(self._loop.iter) + 1
        return {**self._sampler.state_dict(), "images": done * self._ims_per_batch,
                "batch_size": self._batches.batch_size,
                **self._batches.state_after(done - int(self._loop.start_iter))}

    def load_state_dict(self, state: dict, exact: bool = True) -> None:
        if not self._sampler.load_state_dict(state) or "images" not in state:
            return
        images, world = int(state["images"]), comm.get_world_size()
        if exact and "drawn" in state and int(state.get("batch_size", -1)) == self._batches.batch_size:
            position = {"drawn": state["drawn"], "buckets": state["buckets"]}
        else:  # where an ungrouped run would be: no image waits in a bucket
            position = {"drawn": images // world, "buckets": [[], []]}
        self._batches.restore(position)
        self._sampler.start = position["drawn"] * world
        waiting = sum(len(b) for b in position["buckets"])
        _train_logger.info("Resuming at iteration %d: data stream seed %s, skipping %d images "
                           "(this process: %d of its images drawn, %d waiting in aspect-ratio buckets)",
                           images // self._ims_per_batch, self._sampler.seed, images,
                           position["drawn"], waiting)


class _GatherPerProcessState(d2_hooks.HookBase):
    """:meth:`PerProcessState.gather` on every process in each iteration that is saved."""

    def __init__(self, checkpointer, period: int):
        self._checkpointer, self._period = checkpointer, int(period)

    def after_step(self):
        it = int(self.trainer.iter)
        if (it + 1) % self._period == 0 or it >= self.trainer.max_iter - 1:
            for obj in self._checkpointer.checkpointables.values():
                if isinstance(obj, PerProcessState):
                    obj.gather()


class ResNeXtTrainer(DefaultTrainer):
    """DefaultTrainer + COCO box AP (pycocotools) + results JSON, exactly resumable."""

    @property
    def sampler(self) -> Optional[ResumableTrainingSampler]:
        """The training data's sampler (None with a sampler of detectron2's)."""
        return getattr(self.data_loader, "resnext_sampler", None)

    @classmethod
    def build_model(cls, cfg):
        """detectron2's, after seeding the random streams from ``SEED`` (when >= 0), so each
        stage of a plan starts alike whatever ran before it."""
        if cfg.SEED >= 0:
            seed_all_rng(cfg.SEED + comm.get_rank())
        return super().build_model(cfg)

    @classmethod
    def build_optimizer(cls, cfg, model):
        """detectron2's, after checking SOLVER and applying the training switches in place
        (so the optimizer's state follows the parameters' memory format)."""
        validate_for_workers(cfg, comm.get_world_size())
        apply_recorded_training_switches(model, cfg)
        return super().build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        """detectron2's train loader with the checked mapper, a keyed
        :class:`ResumableTrainingSampler`, a :class:`PositionSeededDataset` and a
        :class:`GroupedBatchSampler`, so a resumed run draws the same images and augmentations.
        Attaches ``loader.resnext_sampler`` and ``loader.resnext_batches``."""
        mapper = checked_mapper(cfg, True)
        stores = proposal_stores(cfg, cfg.DATASETS.TRAIN, cfg.DATASETS.PROPOSAL_FILES_TRAIN)
        if stores is not None:  # shards: each image's proposals read when it is mapped
            mapper = ProposalMapper(mapper, stores)
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":  # other samplers: detectron2's own
            return build_detection_train_loader(_without_proposal_loading(cfg, stores), mapper=mapper)
        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
            if cfg.MODEL.KEYPOINT_ON else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN
            if cfg.MODEL.LOAD_PROPOSALS and stores is None else None,
        )
        sampler = ResumableTrainingSampler(len(dicts), seed=cfg.SEED if cfg.SEED >= 0 else None, keyed=True)
        grouping = bool(cfg.DATALOADER.ASPECT_RATIO_GROUPING)
        if grouping and not all("width" in d and "height" in d for d in dicts):
            _train_logger.warning("DATALOADER.ASPECT_RATIO_GROUPING: the dataset gives no image sizes, "
                                  "so images are grouped after mapping (detectron2's way): a resumed "
                                  "run skips the images that waited in a partly filled bucket")
            loader = build_detection_train_loader(
                PositionSeededDataset(dicts, mapper, sampler), mapper=None, sampler=sampler,
                total_batch_size=cfg.SOLVER.IMS_PER_BATCH, aspect_ratio_grouping=True,
                num_workers=cfg.DATALOADER.NUM_WORKERS, seed=sampler.seed)
            loader.resnext_sampler = sampler
            return loader
        batches = GroupedBatchSampler(sampler, cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size(),
                                      [is_landscape(d) for d in dicts] if grouping else None)
        # the loader's own generator: creating its iterator draws nothing from the torch stream
        loader = torch.utils.data.DataLoader(
            PositionSeededDataset(dicts, mapper, sampler), batch_sampler=batches,
            num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=trivial_batch_collator,
            worker_init_fn=worker_init_reset_seed, generator=torch.Generator().manual_seed(sampler.seed))
        loader.resnext_sampler, loader.resnext_batches = sampler, batches
        return loader

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """detectron2's; with proposal shard manifests a ``ProposalMapper`` reads each image's."""
        stores = None
        if cfg.MODEL.LOAD_PROPOSALS and dataset_name in cfg.DATASETS.TEST:
            file = cfg.DATASETS.PROPOSAL_FILES_TEST[list(cfg.DATASETS.TEST).index(dataset_name)]
            stores = proposal_stores(cfg, [dataset_name], [file])
        if stores is None:
            return super().build_test_loader(cfg, dataset_name)
        return build_detection_test_loader(_without_proposal_loading(cfg, stores), dataset_name,
                                           mapper=ProposalMapper(DatasetMapper(cfg, False), stores))

    def build_hooks(self):
        """detectron2's hooks with the project's checkpointer (set before the hooks that use it),
        per-process data position and random streams, and no save of non-finite weights."""
        self.checkpointer = make_checkpointer(self.model, self.cfg, trainer=weakref.proxy(self))
        batches = getattr(self.data_loader, "resnext_batches", None)
        if batches is not None:
            self.checkpointer.add_checkpointable("sampler", PerProcessState(
                DataPosition(batches, weakref.proxy(self), self.cfg.SOLVER.IMS_PER_BATCH)))
        self.checkpointer.add_checkpointable("rng", PerProcessState(RandomStreams()))
        hooks = [_FiniteCheckpointer(h.checkpointer, h.period, max_to_keep=h.max_to_keep)
                 if isinstance(h, d2_hooks.PeriodicCheckpointer) else h for h in super().build_hooks()]
        # gather just before the checkpointer hook (which exists on process 0 only)
        at = next((i for i, h in enumerate(hooks) if isinstance(h, (d2_hooks.PeriodicCheckpointer,
                                                                    d2_hooks.EvalHook))), len(hooks))
        hooks.insert(at, _GatherPerProcessState(self.checkpointer, self.cfg.SOLVER.CHECKPOINT_PERIOD))
        return hooks

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """COCOEvaluator with the pure-Python COCOeval; detections go to
        ``<OUTPUT_DIR>/inference/<dataset>/coco_instances_results.json``."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, tasks=("bbox",), distributed=True,
                             output_dir=output_folder, use_fast_impl=False)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's test loop (fast path when ``MODEL.RESNEXT.FAST.INFERENCE``); metrics go to
        ``<OUTPUT_DIR>/inference/eval_results.json``."""
        fast = cfg.MODEL.RESNEXT.FAST
        if fast.INFERENCE:
            # a copy: the training model (and its checkpoints) stay as they are
            model = prepare_for_inference(copy.deepcopy(_unwrap(model)), precision=fast.PRECISION)
        with preserved_random_streams():  # evaluation mid-training leaves training's draws alone
            results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and results:
            path = os.path.join(cfg.OUTPUT_DIR, "inference", EVAL_RESULTS)
            atomic_write_json(path, {"datasets": list(cfg.DATASETS.TEST), "weights": cfg.MODEL.WEIGHTS,
                                     "results": results}, indent=2, default=float)
            logger.info("Evaluation results written to %s", path)
        return results


def proposal_stores(cfg, datasets, files):
    """The proposal stores of ``datasets`` (one file each) when ``cfg`` loads proposals from shard
    manifests; None with detectron2 pickles or without ``MODEL.LOAD_PROPOSALS``."""
    if not cfg.MODEL.LOAD_PROPOSALS:
        return None
    if len(files) != len(datasets):
        raise TrainingConfigError(f"{len(files)} proposal file(s) {list(files)} for {len(datasets)} "
                                  f"dataset(s) {list(datasets)}; give one proposal file per dataset")
    return stores_for(list(files), list(datasets))


def _without_proposal_loading(cfg, stores):
    """``cfg`` without proposal loading when a mapper attaches the proposals."""
    if stores is None:
        return cfg
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.LOAD_PROPOSALS = False
    return cfg


def runs_on_cpu_workers(cfg) -> bool:
    """Whether this process is one of several CPU (GLOO) training processes."""
    return comm.get_world_size() > 1 and cfg.MODEL.DEVICE == "cpu"


def build_trainer(trainer_cls, cfg):
    """``trainer_cls(cfg)``; on several CPU processes ``ResNeXtTrainer`` becomes
    :class:`ResNeXtCpuWorkersTrainer`, and other classes must derive from it
    (:class:`TrainingConfigError` otherwise)."""
    if not runs_on_cpu_workers(cfg):
        return trainer_cls(cfg)
    if trainer_cls is ResNeXtTrainer:
        return ResNeXtCpuWorkersTrainer(cfg)
    if not issubclass(trainer_cls, ResNeXtCpuWorkersTrainer):
        raise TrainingConfigError(
            f"{trainer_cls.__name__} cannot train on {comm.get_world_size()} CPU processes: "
            "detectron2's DefaultTrainer gives DistributedDataParallel device_ids, which a CPU "
            "model refuses; derive it from resnext_det.engine.trainer.ResNeXtCpuWorkersTrainer "
            "(a ResNeXtTrainer that builds DDP without device_ids), or train in one process")
    return trainer_cls(cfg)


class ResNeXtCpuWorkersTrainer(ResNeXtTrainer):
    """ResNeXtTrainer for several CPU (GLOO) processes. DefaultTrainer's ``__init__`` gives DDP
    ``device_ids=[local_rank]``, which a CPU module refuses, with no hook in between; this one builds
    the same, in its order and with the same hooks, without ``device_ids`` (tests/engine/test_trainer.py
    notices when detectron2's constructor changes shape)."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False, device_ids=None)  # the one difference
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.start_iter, self.max_iter, self.cfg = 0, cfg.SOLVER.MAX_ITER, cfg
        self.register_hooks(self.build_hooks())  # ResNeXtTrainer's build_hooks sets the checkpointer


def last_losses(trainer) -> str:
    try:
        latest = trainer.storage.latest()
    except Exception:  # no storage yet
        latest = {}
    losses = {k: v for k, v in latest.items() if k.startswith("loss") or k == "total_loss"}
    if not losses:
        return "No loss was recorded before."
    it = max(i for _, i in losses.values())
    terms = ", ".join(f"{k}={v:.4g}" for k, (v, _) in sorted(losses.items()))
    return f"Loss terms at the last finite iteration {it}: {terms}"


def recovery_hint(trainer) -> str:
    ckpt = trainer.checkpointer
    last = ckpt.get_checkpoint_file() if ckpt.has_checkpoint() else None
    where = (f"The last good checkpoint {last} is unchanged (no checkpoint is written after a "
             "non-finite loss)" if last else "No checkpoint was written yet")
    return (f"{where}. Lower SOLVER.BASE_LR (now {trainer.cfg.SOLVER.BASE_LR}) or "
            f"lengthen SOLVER.WARMUP_ITERS (now {trainer.cfg.SOLVER.WARMUP_ITERS}), or enable "
            "SOLVER.CLIP_GRADIENTS, then rerun (with --resume to continue from that checkpoint).")


@contextlib.contextmanager
def clear_training_errors(trainer):
    """Around ``trainer.train()``: a non-finite loss raises :class:`NonFiniteLossError` naming the
    iteration, loss terms and last checkpoint; input errors are logged as one line; neither
    gets detectron2's traceback."""
    quiet = _QuietExpectedErrors()
    _train_logger.addFilter(quiet)
    try:
        yield
    except NonFiniteLossError:
        raise
    except FloatingPointError as e:
        msg = str(e)
        if "iteration" not in msg:  # e.g. the box head's "Predicted boxes ... Inf/NaN"
            msg = f"Non-finite values at iteration={trainer.iter}: {msg}"
        if "loss_dict" not in msg:
            msg += f"\n{last_losses(trainer)}"
        raise NonFiniteLossError(f"{msg}\n{recovery_hint(trainer)}") from None
    except USER_ERRORS as e:
        _train_logger.error("Training stopped at iteration %d: %s", trainer.iter, e)
        raise
    finally:
        _train_logger.removeFilter(quiet)


class _FiniteCheckpointer(d2_hooks.PeriodicCheckpointer):
    """detectron2's periodic checkpointer that never saves NaN/inf weights."""

    def after_step(self):
        it = int(self.trainer.iter)
        if (it + 1) % self.period == 0 or (self.max_iter is not None and it >= self.max_iter - 1):
            bad = [n for n, p in _unwrap(self.checkpointer.model).state_dict().items()
                   if p.is_floating_point() and not bool(torch.isfinite(p).all())]
            if bad:
                more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
                raise NonFiniteLossError(
                    f"Weights became infinite or NaN at iteration={it}: {', '.join(bad[:5])}{more}; "
                    f"checkpoint not saved.\n{recovery_hint(self.trainer)}")
        super().after_step()
