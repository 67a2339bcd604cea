"""The training plan: a config's ``RESNEXT_PLAN`` turned into stages, run with resume-at-stage.

``MODE: "joint"``  -> one stage ``detector`` (train, then COCO AP), in ``OUTPUT_DIR``.
``MODE: "two_stage"`` (the paper, Appendix B; RPN and Fast R-CNN share no features):

1. ``rpn``       train an RPN-only network (``ProposalNetwork``) from ``MODEL.WEIGHTS``
                 -> ``OUTPUT_DIR/stage1_rpn``
2. ``proposals`` compute its proposals on the training and test sets
                 -> ``OUTPUT_DIR/stage1_rpn/proposals/<dataset>.pkl`` (detectron2's format)
3. ``fast_rcnn`` train Fast R-CNN on those proposals (``PrecomputedProposals``), again from
                 ``MODEL.WEIGHTS``, then COCO AP -> ``OUTPUT_DIR/stage2_fast_rcnn``

Which stages are finished is kept in ``OUTPUT_DIR/plan_state.json`` (written atomically);
with ``resume=True`` finished stages are skipped and the unfinished training stage
continues from its last checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
from collections import OrderedDict
from typing import Any, Dict, List, Optional

from detectron2.config import CfgNode

from ..config_plan import PLAN_MODES
from ..data.coco import coco_split_names
from ..io import atomic_open, atomic_write_json

__all__ = [
    "Stage",
    "PlanState",
    "resolve_datasets",
    "build_plan",
    "plan_summary",
    "prepare_datasets",
    "run_plan",
    "compute_proposals",
    "final_stage",
    "check_stage_proposals",
    "STATE_FILE",
]

logger = logging.getLogger(__name__)
STATE_FILE = "plan_state.json"
# plan step -> the paper's stage (Appendix B: 1 = RPN and its proposals, 2 = Fast R-CNN)
_PAPER_STAGE = {"rpn": 1, "proposals": 1, "fast_rcnn": 2}


@dataclasses.dataclass
class Stage:
    """One step of the plan.

    Attributes:
        name: ``detector``, ``rpn``, ``proposals`` or ``fast_rcnn``.
        kind: ``train`` (a DefaultTrainer run) or ``proposals`` (inference writing proposal files).
        cfg: the stage's full detectron2 config, for ``SOLVER.REFERENCE_WORLD_SIZE`` workers.
        evaluate: COCO box AP on ``DATASETS.TEST`` at the end of the stage.
        outputs: files the stage produces (proposal files: dataset name -> path).
    """

    name: str
    kind: str
    cfg: CfgNode
    evaluate: bool = False
    outputs: Dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def output_dir(self) -> str:
        return self.cfg.OUTPUT_DIR


def resolve_datasets(cfg: CfgNode) -> CfgNode:
    """A copy of ``cfg`` with DATASETS.TRAIN/TEST filled from RESNEXT_PLAN.COCO_SPLITS or
    RESNEXT_PLAN.SYNTHETIC (nothing is read or written)."""
    from ..data.synthetic import synthetic_dataset_names

    cfg = cfg.clone()
    cfg.defrost()
    p = cfg.RESNEXT_PLAN
    if p.MODE not in PLAN_MODES:
        raise ValueError(f"RESNEXT_PLAN.MODE={p.MODE!r} is not valid; use one of {PLAN_MODES}")
    if p.SYNTHETIC.ENABLED:
        if p.COCO_SPLITS:
            raise ValueError("RESNEXT_PLAN.SYNTHETIC.ENABLED and RESNEXT_PLAN.COCO_SPLITS="
                             f"{p.COCO_SPLITS!r} contradict each other; set one of them")
        train, val = synthetic_dataset_names(p.SYNTHETIC.NAME)
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train,), (val,)
        if not p.SYNTHETIC.ROOT:
            p.SYNTHETIC.ROOT = os.path.join(cfg.OUTPUT_DIR, "data")
    elif p.COCO_SPLITS:
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = coco_split_names(p.COCO_SPLITS)
    return cfg


def _apply_solver(cfg: CfgNode, node: CfgNode) -> None:
    cfg.SOLVER.IMS_PER_BATCH = node.IMS_PER_BATCH
    cfg.SOLVER.BASE_LR = node.BASE_LR
    cfg.SOLVER.STEPS = tuple(node.STEPS)
    cfg.SOLVER.MAX_ITER = node.MAX_ITER
    if node.WEIGHTS:
        cfg.MODEL.WEIGHTS = node.WEIGHTS
    if node.OPTS:
        cfg.merge_from_list(list(node.OPTS))


def _proposal_file(proposals_dir: str, dataset: str) -> str:
    return os.path.join(proposals_dir, f"{dataset}.pkl")


def build_plan(cfg: CfgNode) -> List[Stage]:
    """The stages of ``cfg``'s plan, each with its full config (see module docstring).

    Args:
        cfg: a config with MODEL.RESNEXT and RESNEXT_PLAN (add_resnext_config, add_plan_config).
    """
    base = resolve_datasets(cfg)
    p = base.RESNEXT_PLAN
    if p.MODE == "joint":
        return [Stage("detector", "train", base, evaluate=True)]

    rpn = base.clone()
    rpn.MODEL.META_ARCHITECTURE = "ProposalNetwork"
    rpn.MODEL.RPN.BATCH_SIZE_PER_IMAGE = p.RPN.BATCH_SIZE_PER_IMAGE
    rpn.OUTPUT_DIR = os.path.join(base.OUTPUT_DIR, "stage1_rpn")
    _apply_solver(rpn, p.RPN)
    rpn.TEST.EVAL_PERIOD = 0  # stage 1 has no box AP; its output is judged through stage 2

    datasets = list(dict.fromkeys(list(base.DATASETS.TRAIN) + list(base.DATASETS.TEST)))
    props = rpn.clone()
    props.OUTPUT_DIR = os.path.join(rpn.OUTPUT_DIR, "proposals")
    props.MODEL.WEIGHTS = os.path.join(rpn.OUTPUT_DIR, "model_final.pth")
    props.MODEL.RPN.POST_NMS_TOPK_TEST = max(p.PROPOSALS.TOPK_TRAIN, p.PROPOSALS.TOPK_TEST)
    props.DATASETS.TEST = tuple(datasets)
    outputs = OrderedDict((d, _proposal_file(props.OUTPUT_DIR, d)) for d in datasets)

    fast = base.clone()
    fast.MODEL.LOAD_PROPOSALS = True
    fast.MODEL.PROPOSAL_GENERATOR.NAME = "PrecomputedProposals"
    fast.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = p.FAST_RCNN.BATCH_SIZE_PER_IMAGE
    fast.DATASETS.PROPOSAL_FILES_TRAIN = tuple(outputs[d] for d in base.DATASETS.TRAIN)
    fast.DATASETS.PROPOSAL_FILES_TEST = tuple(outputs[d] for d in base.DATASETS.TEST)
    fast.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN = p.PROPOSALS.TOPK_TRAIN
    fast.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST = p.PROPOSALS.TOPK_TEST
    fast.OUTPUT_DIR = os.path.join(base.OUTPUT_DIR, "stage2_fast_rcnn")
    _apply_solver(fast, p.FAST_RCNN)
    return [
        Stage("rpn", "train", rpn),
        Stage("proposals", "proposals", props, outputs=dict(outputs)),
        Stage("fast_rcnn", "train", fast, evaluate=True),
    ]


def final_stage(stages: List[Stage]) -> Stage:
    """The stage whose model gives the plan's detections (the last evaluated one)."""
    return [s for s in stages if s.evaluate][-1]


def plan_summary(cfg: CfgNode, world_size: int = 1) -> Dict[str, Any]:
    """The resolved plan as plain data (what ``train_net.py --dry-run`` prints as YAML).

    Solver values are those used on ``world_size`` workers: detectron2's
    ``auto_scale_workers`` scales batch, LR and schedule from ``SOLVER.REFERENCE_WORLD_SIZE``.
    """
    from detectron2.engine import DefaultTrainer

    from ..config import resolve_resnext_spec

    stages = build_plan(cfg)
    out: Dict[str, Any] = {
        "config": {"mode": cfg.RESNEXT_PLAN.MODE, "output_dir": cfg.OUTPUT_DIR,
                   "world_size": world_size,
                   "reference_world_size": int(cfg.SOLVER.REFERENCE_WORLD_SIZE)},
        "stages": [],
    }
    for i, st in enumerate(stages, 1):
        c = DefaultTrainer.auto_scale_workers(st.cfg, world_size) if st.kind == "train" else st.cfg
        m = c.MODEL
        spec = resolve_resnext_spec(c)
        d: Dict[str, Any] = {
            "step": i, "paper_stage": _PAPER_STAGE.get(st.name), "name": st.name,
            "kind": st.kind,
            "meta_architecture": m.META_ARCHITECTURE,
            "proposal_generator": m.PROPOSAL_GENERATOR.NAME,
            "load_proposals": bool(m.LOAD_PROPOSALS),
            "backbone": m.BACKBONE.NAME, "roi_heads": m.ROI_HEADS.NAME,
            "resnext": {"preset": spec.preset, "depth": spec.depth, "cardinality": spec.cardinality,
                        "bottleneck_width": spec.bottleneck_width, "norm": spec.norm},
            "weights": m.WEIGHTS,
            "output_dir": c.OUTPUT_DIR,
        }
        if st.kind == "train":
            d["datasets"] = {"train": list(c.DATASETS.TRAIN), "test": list(c.DATASETS.TEST)}
            if m.LOAD_PROPOSALS:
                d["datasets"]["proposal_files_train"] = list(c.DATASETS.PROPOSAL_FILES_TRAIN)
                d["datasets"]["proposal_files_test"] = list(c.DATASETS.PROPOSAL_FILES_TEST)
            s = c.SOLVER
            d["solver"] = {
                "IMS_PER_BATCH": s.IMS_PER_BATCH,
                "ims_per_worker": s.IMS_PER_BATCH // max(world_size, 1),
                "BASE_LR": s.BASE_LR, "STEPS": list(s.STEPS), "GAMMA": s.GAMMA,
                "MAX_ITER": s.MAX_ITER, "WARMUP_ITERS": s.WARMUP_ITERS,
                "MOMENTUM": s.MOMENTUM, "WEIGHT_DECAY": s.WEIGHT_DECAY,
                "CHECKPOINT_PERIOD": s.CHECKPOINT_PERIOD,
            }
            if m.META_ARCHITECTURE == "ProposalNetwork":
                d["rpn_batch_size_per_image"] = m.RPN.BATCH_SIZE_PER_IMAGE
            else:
                if m.PROPOSAL_GENERATOR.NAME == "RPN":
                    d["rpn_batch_size_per_image"] = m.RPN.BATCH_SIZE_PER_IMAGE
                d["roi_batch_size_per_image"] = m.ROI_HEADS.BATCH_SIZE_PER_IMAGE
            d["evaluate"] = "COCO box AP on " + ", ".join(c.DATASETS.TEST) if st.evaluate else None
        else:
            d["datasets"] = list(c.DATASETS.TEST)
            d["proposals_per_image"] = m.RPN.POST_NMS_TOPK_TEST
            d["writes"] = dict(st.outputs)
        out["stages"].append(d)
    return out


class PlanState:
    """``OUTPUT_DIR/plan_state.json``: which stages finished, and their results.

    Written with a temporary file and ``os.replace``, so a kill never leaves half a file.
    """

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, STATE_FILE)
        self.data: Dict[str, Any] = {"finished": [], "results": {}}

    def load(self) -> "PlanState":
        if os.path.isfile(self.path):
            with open(self.path) as f:
                self.data = json.load(f)
        return self

    def is_finished(self, name: str) -> bool:
        return name in self.data["finished"]

    def mark_finished(self, name: str, results: Optional[dict] = None) -> None:
        if name not in self.data["finished"]:
            self.data["finished"].append(name)
        if results:
            self.data["results"][name] = results
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data, indent=2, default=float)


def prepare_datasets(cfg: CfgNode) -> None:
    """Register (and for SYNTHETIC, make if missing) the datasets of ``cfg``.

    Idempotent; run in every worker process (registrations do not cross process spawns).
    """
    from ..data.coco import register_coco_splits
    from ..data.synthetic import register_synthetic_coco

    cfg = resolve_datasets(cfg)
    s = cfg.RESNEXT_PLAN.SYNTHETIC
    if s.ENABLED:
        register_synthetic_coco(s.NAME, s.ROOT, seed=s.SEED, num_train=s.NUM_TRAIN,
                                num_val=s.NUM_VAL, image_size=s.IMAGE_SIZE,
                                max_objects=s.MAX_OBJECTS)
    register_coco_splits(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))


class _ProposalCollector:
    """A DatasetEvaluator that gathers ProposalNetwork outputs into detectron2's proposal file."""

    def __init__(self, dataset_name: str, path: str):
        self.dataset_name, self.path = dataset_name, path
        self.reset()

    def reset(self):
        self._ids, self._boxes, self._logits = [], [], []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            p = out["proposals"].to("cpu")
            self._ids.append(inp["image_id"])
            self._boxes.append(p.proposal_boxes.tensor.numpy())
            self._logits.append(p.objectness_logits.numpy())

    def evaluate(self):
        from detectron2.structures import BoxMode
        from detectron2.utils import comm

        parts = comm.gather((self._ids, self._boxes, self._logits), dst=0)
        if not comm.is_main_process():
            return {}
        data = {"ids": [], "boxes": [], "objectness_logits": [], "bbox_mode": int(BoxMode.XYXY_ABS)}
        for ids, boxes, logits in parts:
            data["ids"] += ids
            data["boxes"] += boxes
            data["objectness_logits"] += logits
        with atomic_open(self.path, "wb") as f:  # a kill leaves no half-written proposal file
            pickle.dump(data, f, pickle.HIGHEST_PROTOCOL)
        n = sum(len(b) for b in data["boxes"])
        logger.info("Wrote %d proposals for %d images of %s to %s", n, len(data["ids"]),
                    self.dataset_name, self.path)
        return {"images": len(data["ids"]), "proposals_per_image": n / max(len(data["ids"]), 1)}


def compute_proposals(stage: Stage, trainer_cls) -> Dict[str, Any]:
    """Run the stage-1 RPN on each dataset of ``stage`` and write detectron2 proposal files.

    Progress (images done, ETA) is logged by detectron2's ``inference_on_dataset``.
    """
    import torch
    from detectron2.evaluation import inference_on_dataset

    from .trainer import load_checkpoint

    cfg = stage.cfg
    model = trainer_cls.build_model(cfg)
    load_checkpoint(model, cfg, cfg.MODEL.WEIGHTS)
    model.eval()
    results = {}
    for dataset, path in stage.outputs.items():
        logger.info("Computing proposals for %s ...", dataset)
        loader = trainer_cls.build_test_loader(cfg, dataset)
        with torch.no_grad():
            results[dataset] = inference_on_dataset(model, loader, _ProposalCollector(dataset, path))
    return results


def check_stage_proposals(cfg: CfgNode) -> None:
    """For a stage trained on precomputed proposals (``MODEL.LOAD_PROPOSALS``): every train
    and test proposal file exists and covers its dataset's images.

    Raises:
        TrainingConfigError: naming the file, the dataset and the fix.
    """
    from detectron2.data import DatasetCatalog

    from .checks import TrainingConfigError, check_proposal_file

    if not cfg.MODEL.LOAD_PROPOSALS:
        return
    for kind in ("TRAIN", "TEST"):
        datasets = list(cfg.DATASETS[kind])
        files = list(cfg.DATASETS[f"PROPOSAL_FILES_{kind}"])
        if len(files) != len(datasets):
            raise TrainingConfigError(
                f"DATASETS.PROPOSAL_FILES_{kind} has {len(files)} file(s) for {len(datasets)} "
                f"dataset(s) {datasets}; give one proposal file per dataset")
        for dataset, path in zip(datasets, files):
            ids = [d["image_id"] for d in DatasetCatalog.get(dataset)]
            check_proposal_file(path, ids, dataset)


def run_plan(cfg: CfgNode, *, resume: bool = False, trainer_cls=None) -> Dict[str, Any]:
    """Run every stage of ``cfg``'s plan; returns ``{stage name: results}``.

    Args:
        cfg: the full config (datasets must already be registered: :func:`prepare_datasets`).
        resume: skip stages that ``plan_state.json`` marks finished and continue the
            unfinished training stage from its last checkpoint. Without it, everything reruns.
        trainer_cls: the trainer (default :class:`resnext_det.engine.trainer.ResNeXtTrainer`).
    """
    from detectron2.utils import comm

    from .trainer import ResNeXtTrainer

    trainer_cls = trainer_cls or ResNeXtTrainer
    stages = build_plan(cfg)
    state = PlanState(cfg.OUTPUT_DIR)
    if resume:
        state.load()
    elif comm.is_main_process():
        state.save()  # a fresh run forgets earlier progress
    comm.synchronize()
    results: Dict[str, Any] = {}
    for i, stage in enumerate(stages, 1):
        if resume and state.is_finished(stage.name):
            logger.info("Plan stage %d/%d '%s' already finished: skipped (resume)", i, len(stages),
                        stage.name)
            results[stage.name] = state.data["results"].get(stage.name, {})
            continue
        logger.info("Plan stage %d/%d '%s' (%s) -> %s", i, len(stages), stage.name, stage.kind,
                    stage.output_dir)
        if comm.is_main_process():
            os.makedirs(stage.output_dir, exist_ok=True)
            with open(os.path.join(stage.output_dir, "config.yaml"), "w") as f:
                f.write(stage.cfg.dump())
        if stage.kind == "train":
            check_stage_proposals(stage.cfg)
            trainer = trainer_cls(stage.cfg)
            trainer.resume_or_load(resume=resume)
            trainer.train()
            res = getattr(trainer, "_last_eval_results", None) if stage.evaluate else None
            res = _plain(res) if res else {}
            del trainer
        else:
            res = _plain(compute_proposals(stage, trainer_cls))
        results[stage.name] = res
        if comm.is_main_process():
            state.mark_finished(stage.name, res)
        comm.synchronize()
    return results


def _plain(x):
    """Results as JSON-able nested dicts of floats."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)
