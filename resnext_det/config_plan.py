"""The ``RESNEXT_PLAN`` config node: how a config is trained, as a plan of stages (docs/TRAINING.md).
``MODE: "joint"`` is detectron2's end-to-end training, ``"two_stage"`` the paper's Appendix B (RPN and
Fast R-CNN share no features; :mod:`resnext_det.engine.plan` makes the stages), whose solver values
(``RPN`` / ``FAST_RCNN``) are for ``SOLVER.REFERENCE_WORLD_SIZE`` workers and scale linearly to others.
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
    n.BATCH_SIZE_PER_IMAGE = batch_size_per_image  # anchors (RPN) or RoIs (Fast R-CNN) per image
    n.WEIGHTS = ""  # "" = MODEL.WEIGHTS
    n.OPTS = []  # "KEY", "VALUE" overrides for this stage only
    return n


def add_plan_config(cfg: CN) -> CN:
    """Add the ``RESNEXT_PLAN`` node (in place; also returned): the paper's Appendix B numbers (for
    8 workers), ``MODE: "joint"``. :func:`resnext_det.add_resnext_config` calls it."""
    p = cfg.RESNEXT_PLAN = CN()
    p.MODE = "joint"  # one of PLAN_MODES
    p.COCO_SPLITS = ""  # "coco_2014" / "coco_2017": trainval35k / minival; "": DATASETS as written
    # Paper, App. B: 8 GPUs x 2 images, 256 anchors/image, lr 0.02 for 120k then 0.002 for 60k.
    p.RPN = _stage_solver(16, 0.02, (120000,), 180000, 256)
    # Paper, App. B: 8 GPUs x 1 image, 64 RoIs/image, lr 0.005 for 120k then 0.0005 for 60k.
    p.FAST_RCNN = _stage_solver(8, 0.005, (120000,), 180000, 64)
    p.PROPOSALS = CN()
    # proposals per image stage 1 keeps and stage 2 uses
    p.PROPOSALS.TOPK_TRAIN = 2000
    p.PROPOSALS.TOPK_TEST = 1000
    p.PROPOSALS.EXPORT_PKL = False  # also detectron2's <dataset>.pkl beside the shards
    s = p.SYNTHETIC = CN()  # resnext_det.data.synthetic, registered as <NAME>_train / <NAME>_val
    s.ENABLED = False
    s.NAME = "synthetic_shapes"
    s.ROOT = ""  # "" = <OUTPUT_DIR>/data
    s.SEED = 0
    s.NUM_TRAIN = 400
    s.NUM_VAL = 100
    s.IMAGE_SIZE = 128
    s.MAX_OBJECTS = 4
    s.OBJECT_SIZE = (0.18, 0.42)  # side as a fraction of the image side: uniform in [min, max]
    # resnext_det.engine.pretrain: the stages start from it while MODEL.WEIGHTS is empty
    t = p.PRETRAIN = CN()
    t.ENABLED = False
    t.OUTPUT = ""  # "" = <OUTPUT_DIR>/pretrain/tiny_resnext_torchvision.pth
    t.EPOCHS = 6
    t.IMS_PER_BATCH = 64
    t.BASE_LR = 0.05
    t.CROP_SIZE = 32
    t.CROPS_PER_OBJECT = 1
    p.ORACLE_EVAL = False  # fast_rcnn's box AP also with ground-truth boxes as proposals
    p.SHUFFLED_EVAL = False  # ... and with each test image given another image's proposals
    return cfg
