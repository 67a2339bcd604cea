"""The training plan as data: a config's ``RESNEXT_PLAN`` turned into stages, without side effects (run
by :mod:`.plan_runner`). ``MODE: "joint"``: one stage ``detector``; ``"two_stage"`` (the paper's Appendix
B): ``rpn``, ``proposals``, ``fast_rcnn`` (docs/TRAINING.md, "The paper's schedule on COCO"). With
``RESNEXT_PLAN.PRETRAIN.ENABLED`` the stages start from :mod:`.pretrain`'s model.
"""
from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from typing import Any, Dict, List, Tuple

from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer

from ..config import ResNeXtConfigError, resolve_resnext_spec
from ..config_plan import PLAN_MODES
from ..data.coco import coco_split_names
from ..data.synthetic import synthetic_dataset_names
from .pretrain import pretrained_weights_path

__all__ = ["Stage", "resolve_datasets", "build_plan", "exported_proposal_pickle", "plan_summary",
           "final_stage", "STATE_FILE"]

STATE_FILE = "plan_state.json"
# plan step -> the paper's stage (Appendix B: 1 = RPN and its proposals, 2 = Fast R-CNN)
_PAPER_STAGE = {"rpn": 1, "proposals": 1, "fast_rcnn": 2}


@dataclasses.dataclass
class Stage:
    """One step of the plan: ``kind`` ``train`` or ``proposals``; ``cfg`` for
    ``SOLVER.REFERENCE_WORLD_SIZE`` workers; ``outputs``: proposal files by dataset."""

    name: str
    kind: str
    cfg: CfgNode
    evaluate: bool = False
    outputs: Dict[str, str] = dataclasses.field(default_factory=dict)
    recall_datasets: Tuple[str, ...] = ()
    oracle_eval: bool = False
    shuffled_eval: bool = False

    @property
    def output_dir(self) -> str:
        return self.cfg.OUTPUT_DIR


def resolve_datasets(cfg: CfgNode) -> CfgNode:
    """A copy of ``cfg`` with DATASETS.TRAIN/TEST from RESNEXT_PLAN.COCO_SPLITS or SYNTHETIC and,
    with PRETRAIN and no MODEL.WEIGHTS, the pretraining's file as MODEL.WEIGHTS (no I/O)."""
    cfg = cfg.clone()
    cfg.defrost()
    p = cfg.RESNEXT_PLAN
    if p.MODE not in PLAN_MODES:
        raise ResNeXtConfigError(f"RESNEXT_PLAN.MODE={p.MODE!r} is not valid; use one of {PLAN_MODES}")
    if p.SYNTHETIC.ENABLED:
        if p.COCO_SPLITS:
            raise ResNeXtConfigError("RESNEXT_PLAN.SYNTHETIC.ENABLED and RESNEXT_PLAN.COCO_SPLITS="
                                     f"{p.COCO_SPLITS!r} contradict each other; set one of them")
        train, val = synthetic_dataset_names(p.SYNTHETIC.NAME)
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train,), (val,)
        if not p.SYNTHETIC.ROOT:
            p.SYNTHETIC.ROOT = os.path.join(cfg.OUTPUT_DIR, "data")
    elif p.COCO_SPLITS:
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = coco_split_names(p.COCO_SPLITS)
    if p.PRETRAIN.ENABLED and not cfg.MODEL.WEIGHTS:
        cfg.MODEL.WEIGHTS = pretrained_weights_path(cfg)
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


def exported_proposal_pickle(proposals_dir: str, dataset: str) -> str:
    """Where ``RESNEXT_PLAN.PROPOSALS.EXPORT_PKL`` puts detectron2's proposal pickle of ``dataset``."""
    return os.path.join(proposals_dir, f"{dataset}.pkl")


def build_plan(cfg: CfgNode) -> List[Stage]:
    """The stages of ``cfg``'s plan, each with its full config."""
    base = resolve_datasets(cfg)
    p = base.RESNEXT_PLAN
    if p.MODE == "joint":
        return [Stage("detector", "train", base, evaluate=True, oracle_eval=False)]

    rpn = base.clone()
    rpn.MODEL.META_ARCHITECTURE = "ProposalNetwork"
    rpn.MODEL.RPN.BATCH_SIZE_PER_IMAGE = p.RPN.BATCH_SIZE_PER_IMAGE
    rpn.OUTPUT_DIR = os.path.join(base.OUTPUT_DIR, "stage1_rpn")
    _apply_solver(rpn, p.RPN)
    rpn.TEST.EVAL_PERIOD = 0
    # stage 1 is measured once, by the proposals step, on the very proposals stage 2 uses
    rpn.DATASETS.TEST = ()

    datasets = list(dict.fromkeys(list(base.DATASETS.TRAIN) + list(base.DATASETS.TEST)))
    props = rpn.clone()
    props.OUTPUT_DIR = os.path.join(rpn.OUTPUT_DIR, "proposals")
    props.MODEL.WEIGHTS = os.path.join(rpn.OUTPUT_DIR, "model_final.pth")
    props.MODEL.RPN.POST_NMS_TOPK_TEST = max(p.PROPOSALS.TOPK_TRAIN, p.PROPOSALS.TOPK_TEST)
    props.DATASETS.TEST = tuple(datasets)
    outputs = OrderedDict((d, os.path.join(props.OUTPUT_DIR, d, "manifest.json")) for d in datasets)

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
        Stage("proposals", "proposals", props, outputs=dict(outputs),
              recall_datasets=tuple(base.DATASETS.TEST)),
        Stage("fast_rcnn", "train", fast, evaluate=True, oracle_eval=bool(p.ORACLE_EVAL),
              shuffled_eval=bool(p.SHUFFLED_EVAL)),
    ]


def final_stage(stages: List[Stage]) -> Stage:
    """The stage whose model gives the plan's detections (the last evaluated one)."""
    return [s for s in stages if s.evaluate][-1]


def plan_summary(cfg: CfgNode, world_size: int = 1) -> Dict[str, Any]:
    """The resolved plan as plain data (``train_net.py --dry-run``), with the solver values
    detectron2's ``auto_scale_workers`` gives ``world_size`` workers."""
    stages = build_plan(cfg)
    out: Dict[str, Any] = {
        "config": {"mode": cfg.RESNEXT_PLAN.MODE, "output_dir": cfg.OUTPUT_DIR,
                   "world_size": world_size,
                   "reference_world_size": int(cfg.SOLVER.REFERENCE_WORLD_SIZE)},
        "stages": [],
    }
    pre = cfg.RESNEXT_PLAN.PRETRAIN
    if pre.ENABLED:
        out["config"]["pretrain"] = {
            "writes": pretrained_weights_path(cfg), "format": "torchvision",
            "data": "crops of " + ", ".join(stages[0].cfg.DATASETS.TRAIN),
            "epochs": int(pre.EPOCHS), "ims_per_batch": int(pre.IMS_PER_BATCH),
            "base_lr": float(pre.BASE_LR), "crop_size": int(pre.CROP_SIZE)}
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
            if m.META_ARCHITECTURE == "ProposalNetwork" or m.PROPOSAL_GENERATOR.NAME == "RPN":
                d["rpn_batch_size_per_image"] = m.RPN.BATCH_SIZE_PER_IMAGE
            if m.META_ARCHITECTURE != "ProposalNetwork":
                d["roi_batch_size_per_image"] = m.ROI_HEADS.BATCH_SIZE_PER_IMAGE
            d["evaluate"] = "COCO box AP on " + ", ".join(c.DATASETS.TEST) if st.evaluate else None
            if st.oracle_eval:
                d["evaluate"] += " (and with ground-truth boxes as proposals: oracle)"
            if st.shuffled_eval:
                d["evaluate"] += " (and with another image's proposals: control)"
        else:
            d["datasets"] = list(c.DATASETS.TEST)
            d["proposals_per_image"] = m.RPN.POST_NMS_TOPK_TEST
            d["writes"] = dict(st.outputs)
            d["evaluate"] = ("proposal recall (AR@100, AR@1000, recall at IoU 0.5/0.7) on "
                             + ", ".join(st.recall_datasets))
        out["stages"].append(d)
    return out
