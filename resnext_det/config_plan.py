"""The ``RESNEXT_PLAN`` config node: how a config is trained, as a plan of stages.

``MODE: "joint"`` is detectron2's usual end-to-end training (one stage, then COCO AP).
``MODE: "two_stage"`` is the paper's Appendix B: RPN and Fast R-CNN do not share
features. Stage 1 trains an RPN-only network (``ProposalNetwork``), its proposals are
computed for the training and test sets, stage 2 trains Fast R-CNN on those
precomputed proposals (``PrecomputedProposals``), then COCO box AP on the test set.
Each training stage starts from ``MODEL.WEIGHTS`` (ImageNet), as in the paper.

The solver values of the two stages live in ``RESNEXT_PLAN.RPN`` and
``RESNEXT_PLAN.FAST_RCNN`` and are given for ``SOLVER.REFERENCE_WORLD_SIZE`` workers;
other world sizes scale them linearly (detectron2's ``auto_scale_workers``).
:mod:`resnext_det.engine.plan` turns this node into stages.

This node is separate from ``MODEL.RESNEXT`` (the backbone); it is added by
:func:`add_plan_config`, which :func:`resnext_det.add_resnext_config` calls.
"""
from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ["add_plan_config", "PLAN_MODES", "COCO_SPLITS"]

PLAN_MODES = ("joint", "two_stage")
# RESNEXT_PLAN.COCO_SPLITS -> (DATASETS.TRAIN, DATASETS.TEST), detectron2 builtin names.
# trainval35k = train2014 + valminusminival2014 (= train2017); minival2014 (= val2017).
COCO_SPLITS = {
    "coco_2014": (("coco_2014_train", "coco_2014_valminusminival"), ("coco_2014_minival",)),
    "coco_2017": (("coco_2017_train",), ("coco_2017_val",)),
}


def _stage_solver(ims_per_batch, base_lr, steps, max_iter, batch_size_per_image):
    n = CN()
    n.IMS_PER_BATCH = ims_per_batch
    n.BASE_LR = base_lr
    n.STEPS = steps
    n.MAX_ITER = max_iter
    # RPN stage: anchors sampled per image (MODEL.RPN.BATCH_SIZE_PER_IMAGE);
    # Fast R-CNN stage: RoIs sampled per image (MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE).
    n.BATCH_SIZE_PER_IMAGE = batch_size_per_image
    # Initial weights of this stage; "" = MODEL.WEIGHTS (ImageNet, as the paper).
    n.WEIGHTS = ""
    # Any further "KEY", "VALUE" overrides applied to this stage only.
    n.OPTS = []
    return n


def add_plan_config(cfg: CN) -> CN:
    """Add the ``RESNEXT_PLAN`` node (in place; also returned).

    :func:`resnext_det.add_resnext_config` calls it; there is no need to call it yourself.
    Defaults are the paper's Appendix B numbers (for 8 workers) with ``MODE: "joint"``,
    so a config only opts in with ``RESNEXT_PLAN.MODE: "two_stage"``.

    Args:
        cfg: a detectron2 ``CfgNode``.
    """
    p = cfg.RESNEXT_PLAN = CN()
    p.MODE = "joint"  # one of PLAN_MODES
    # "coco_2014" / "coco_2017": set DATASETS.TRAIN/TEST to the COCO trainval35k / minival
    # builtins of that year. "": use DATASETS.TRAIN/TEST as written.
    p.COCO_SPLITS = ""
    # Paper, App. B: 8 GPUs x 2 images, 256 anchors/image, lr 0.02 for 120k then 0.002 for 60k.
    p.RPN = _stage_solver(16, 0.02, (120000,), 180000, 256)
    # Paper, App. B: 8 GPUs x 1 image, 64 RoIs/image, lr 0.005 for 120k then 0.0005 for 60k.
    p.FAST_RCNN = _stage_solver(8, 0.005, (120000,), 180000, 64)
    p.PROPOSALS = CN()
    # Proposals kept per image when stage 1 computes them (MODEL.RPN.POST_NMS_TOPK_TEST),
    # and used per image by stage 2 (DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN/TEST).
    p.PROPOSALS.TOPK_TRAIN = 2000
    p.PROPOSALS.TOPK_TEST = 1000
    # Stage 1 writes proposals as shards read by offset (resnext_det.data.proposals:
    # <dataset>/manifest.json); True also writes detectron2's classic <dataset>.pkl beside them
    # (it holds every proposal in memory: ~4.7 GB for COCO trainval35k at 2000 an image).
    p.PROPOSALS.EXPORT_PKL = False
    # A synthetic COCO-format dataset made (from SEED) and registered before training,
    # as "<NAME>_train" / "<NAME>_val" (resnext_det.data.synthetic). Used by the demo.
    s = p.SYNTHETIC = CN()
    s.ENABLED = False
    s.NAME = "synthetic_shapes"
    s.ROOT = ""  # "" = <OUTPUT_DIR>/data
    s.SEED = 0
    s.NUM_TRAIN = 400
    s.NUM_VAL = 100
    s.IMAGE_SIZE = 128
    s.MAX_OBJECTS = 4
    # Object side as a fraction of the image side: uniform in [min, max].
    s.OBJECT_SIZE = (0.18, 0.42)
    # A miniature "ImageNet" (resnext_det.engine.pretrain): before the plan runs, the
    # MODEL.RESNEXT network is trained as a classifier on crops of DATASETS.TRAIN's objects
    # (and background) and saved in torchvision's format; every stage then starts from it
    # through MODEL.WEIGHTS, as a COCO user starts from torchvision's resnext101_32x4d.
    # Reused when an identical one exists. Applies only while MODEL.WEIGHTS is empty (weights
    # given explicitly, e.g. for --eval-only, win).
    t = p.PRETRAIN = CN()
    t.ENABLED = False
    t.OUTPUT = ""  # "" = <OUTPUT_DIR>/pretrain/tiny_resnext_torchvision.pth
    t.EPOCHS = 6
    t.IMS_PER_BATCH = 64
    t.BASE_LR = 0.05
    t.CROP_SIZE = 32
    t.CROPS_PER_OBJECT = 1
    # After the fast_rcnn stage: also its box AP with the ground-truth boxes as proposals
    # (the ceiling a perfect RPN would give); results under plan_state.json "fast_rcnn".
    p.ORACLE_EVAL = False
    # After the fast_rcnn stage: also its box AP with each test image given the stage-1
    # proposals of another image (the control: it shows stage 2 depends on its proposals);
    # results under plan_state.json "fast_rcnn" -> "shuffled".
    p.SHUFFLED_EVAL = False
    return cfg
