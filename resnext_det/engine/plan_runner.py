"""Running the plan of :mod:`.plan`: stages in order, resume at a stage, each stage's quality measured
and kept with it in ``OUTPUT_DIR/plan_state.json`` (docs/DEMOS.md): proposal counts and, on test sets,
``recall`` (``AR@100`` ... as fractions) and detectron2's ``box_proposals`` (percent); the COCO results,
with ``oracle`` and ``shuffled`` evaluations.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators, inference_on_dataset
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from detectron2.utils import comm

from ..data.coco import register_coco_splits
from ..data.proposals import ShardWriter, export_detectron2_pickle, write_detectron2_proposals, write_manifest
from ..data.synthetic import register_synthetic_coco
from ..io import atomic_write_json, file_lock
from .checks import TrainingConfigError, check_proposal_file, load_proposal_file
from .plan import STATE_FILE, Stage, build_plan, exported_proposal_pickle, resolve_datasets
from .pretrain import pretrain_classifier, pretrained_weights_path
from .trainer import EVAL_RESULTS, ResNeXtTrainer, build_trainer, clear_training_errors, load_checkpoint

__all__ = ["PlanState", "prepare_datasets", "register_datasets", "run_plan", "compute_proposals",
           "check_stage_proposals", "ProposalRecall", "write_gt_proposals",
           "evaluate_with_gt_proposals", "stage_figures"]

logger = logging.getLogger(__name__)
RECALL_IOUS = (0.5, 0.7)
RECALL_TOPK = (100, 1000)


class PlanState:
    """``OUTPUT_DIR/plan_state.json`` (written atomically): which stages finished, and their results."""

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


def register_datasets(cfg: CfgNode) -> CfgNode:
    """Register the plan's datasets (making SYNTHETIC ones if missing); returns ``cfg`` with its
    dataset names resolved. Idempotent, run in every worker process; processes sharing
    SYNTHETIC.ROOT take turns under ``<ROOT>/.prepare.lock``."""
    cfg = resolve_datasets(cfg)
    s = cfg.RESNEXT_PLAN.SYNTHETIC
    if s.ENABLED:
        with file_lock(os.path.join(s.ROOT, ".prepare.lock")):
            register_synthetic_coco(s.NAME, s.ROOT, seed=s.SEED, num_train=s.NUM_TRAIN,
                                    num_val=s.NUM_VAL, image_size=s.IMAGE_SIZE,
                                    max_objects=s.MAX_OBJECTS, object_size=tuple(s.OBJECT_SIZE))
    register_coco_splits(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    return cfg


def prepare_datasets(cfg: CfgNode) -> Dict[str, Any]:
    """:func:`register_datasets` and, with ``RESNEXT_PLAN.PRETRAIN.ENABLED``, train (or reuse,
    under ``<file>.lock``) the miniature "ImageNet" model; returns the pretraining's results
    (``{}`` without). Idempotent, run in every worker process and by each machine's launcher."""
    cfg = register_datasets(cfg)
    if (cfg.RESNEXT_PLAN.PRETRAIN.ENABLED and cfg.MODEL.WEIGHTS == pretrained_weights_path(cfg)
            and comm.is_main_process()):  # (explicit MODEL.WEIGHTS: nothing to pretrain)
        with file_lock(cfg.MODEL.WEIGHTS + ".lock"):
            return pretrain_classifier(cfg)
    return {}


class _ProposalCollector(DatasetEvaluator):
    """Writes ProposalNetwork outputs as proposal shards (one per worker, memory constant), then
    rank 0 the manifest ``path`` and, with ``export_pkl``, detectron2's proposal pickle."""

    def __init__(self, dataset_name: str, path: str, export_pkl: str = ""):
        self.dataset_name, self.path, self.export_pkl = dataset_name, path, export_pkl
        self._writer = None

    def reset(self):
        if self._writer is not None:  # an unfinished pass: its temporary file goes
            self._writer.abort()
        self._writer = None

    def _open(self) -> ShardWriter:
        if self._writer is None:
            self._writer = ShardWriter(os.path.dirname(self.path), comm.get_rank(), comm.get_world_size())
        return self._writer

    def process(self, inputs, outputs):
        writer = self._open()
        for inp, out in zip(inputs, outputs):
            p = out["proposals"].to("cpu")
            writer.add(inp["image_id"], p.proposal_boxes.tensor.numpy(), p.objectness_logits.numpy())

    def evaluate(self):
        entry = self._open().close()  # this worker's shard, complete or absent
        self._writer = None
        entries = comm.gather(entry, dst=0)  # names and counts only
        if not comm.is_main_process():
            return {}
        write_manifest(os.path.dirname(self.path), entries, dataset=self.dataset_name)
        images, n = sum(e["images"] for e in entries), sum(e["rows"] for e in entries)
        logger.info("Wrote %d proposals for %d images of %s: %d shard(s), %.1f MB, manifest %s", n,
                    images, self.dataset_name, len(entries), sum(e["bytes"] for e in entries) / 1e6, self.path)
        if self.export_pkl:
            export_detectron2_pickle(self.path, self.export_pkl)
            logger.info("Exported them as detectron2's proposal pickle %s", self.export_pkl)
        return {"images": images, "proposals_per_image": n / max(images, 1)}


def _gt_boxes(dataset_dict: dict) -> np.ndarray:
    """Non-crowd ground-truth boxes of one image, XYXY_ABS (N, 4)."""
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
             for a in dataset_dict.get("annotations", []) if not a.get("iscrowd", 0)]
    return np.asarray(boxes, np.float32).reshape(-1, 4)


class ProposalRecall(DatasetEvaluator):
    """The fraction of non-crowd ground-truth boxes that some proposal among the top ``k`` (by
    objectness) covers at IoU >= t, for k in ``topk`` and t in ``ious`` (both in original
    image coordinates)."""

    def __init__(self, dataset_name: str, topk=RECALL_TOPK, ious=RECALL_IOUS):
        self._gt = {d["image_id"]: _gt_boxes(d) for d in DatasetCatalog.get(dataset_name)}
        self._topk, self._ious = tuple(topk), tuple(ious)
        self.reset()

    def reset(self):
        self._best = []  # per image: (num gt, top-k) best IoU per gt box

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            gt = self._gt[inp["image_id"]]
            p = out["proposals"].to("cpu")
            order = torch.argsort(p.objectness_logits, descending=True)
            boxes = p.proposal_boxes[order]
            best = np.zeros((len(gt), len(self._topk)), np.float32)
            if len(gt) and len(boxes):
                iou = pairwise_iou(Boxes(torch.from_numpy(gt)), boxes).numpy()
                for j, k in enumerate(self._topk):
                    best[:, j] = iou[:, :k].max(axis=1)
            self._best.append(best)

    def evaluate(self):
        parts = comm.gather(self._best, dst=0)
        if not comm.is_main_process():
            return {}
        best = np.concatenate([b for part in parts for b in part] or [np.zeros((0, len(self._topk)))])
        out = {f"recall@{k}_IoU{t}": float((best[:, j] >= t).mean()) if len(best) else float("nan")
               for j, k in enumerate(self._topk) for t in self._ious}
        out["num_gt_boxes"] = int(len(best))
        return {"proposal_recall": out}


def compute_proposals(stage: Stage, trainer_cls) -> Dict[str, Any]:
    """Run the stage-1 RPN on each dataset of ``stage``, write its proposal shards and manifest
    (and detectron2's pickle with ``RESNEXT_PLAN.PROPOSALS.EXPORT_PKL``), and measure recall on
    ``stage.recall_datasets``. Returns ``{dataset: {"images", "proposals_per_image"[, "recall",
    "box_proposals", "proposal_recall"]}}``."""
    cfg = stage.cfg
    model = trainer_cls.build_model(cfg)
    load_checkpoint(model, cfg, cfg.MODEL.WEIGHTS)
    model.eval()
    results = {}
    for dataset, path in stage.outputs.items():
        logger.info("Computing proposals for %s ...", dataset)
        export = (exported_proposal_pickle(cfg.OUTPUT_DIR, dataset)
                  if cfg.RESNEXT_PLAN.PROPOSALS.EXPORT_PKL else "")
        evaluators = [_ProposalCollector(dataset, path, export)]
        if dataset in stage.recall_datasets:
            evaluators += [COCOEvaluator(dataset, tasks=("bbox",), distributed=True,
                                         output_dir=None, use_fast_impl=False),
                           ProposalRecall(dataset)]
        loader = trainer_cls.build_test_loader(cfg, dataset)
        with torch.no_grad():
            res = inference_on_dataset(model, loader, DatasetEvaluators(evaluators))
        if "box_proposals" in res:
            ar = res["box_proposals"]
            r = res["recall"] = {"AR@100": ar["AR@100"] / 100, "AR@1000": ar["AR@1000"] / 100,
                                 **{k: v for k, v in res["proposal_recall"].items()
                                    if k.startswith("recall@")}}
            logger.info("Stage 1 (RPN) on %s: AR@100 %.3f, AR@1000 %.3f, recall@100 at IoU 0.5 %.3f, "
                        "at IoU 0.7 %.3f", dataset, r["AR@100"], r["AR@1000"], r["recall@100_IoU0.5"],
                        r["recall@100_IoU0.7"])
        results[dataset] = res
    return results


def check_stage_proposals(cfg: CfgNode) -> None:
    """With ``MODEL.LOAD_PROPOSALS``: every train and test proposal file exists and covers its
    dataset's images (:class:`TrainingConfigError` naming the file, dataset and fix)."""
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


def write_gt_proposals(dataset_name: str, path: str) -> str:
    """Write (atomically) a detectron2 proposal file ``path`` of the dataset's ground-truth boxes
    (objectness 1): what a perfect stage 1 would give."""
    dicts = DatasetCatalog.get(dataset_name)
    boxes = [_gt_boxes(d) for d in dicts]
    data = {"ids": [d["image_id"] for d in dicts], "boxes": boxes,
            "objectness_logits": [np.ones(len(b), np.float32) for b in boxes],
            "bbox_mode": int(BoxMode.XYXY_ABS)}
    return write_detectron2_proposals(data, path)


def write_shuffled_proposals(proposal_file: str, path: str) -> str:
    """Write ``proposal_file`` to ``path`` with each image given the next image's proposals
    (the last the first's): proposals that say nothing about their image."""
    data = load_proposal_file(proposal_file)
    n = len(data["ids"])
    if n < 2:
        raise TrainingConfigError(f"{proposal_file}: {n} image(s); shuffling proposals needs two or more")
    nxt = [(i + 1) % n for i in range(n)]
    out = dict(data, boxes=[data["boxes"][j] for j in nxt],
               objectness_logits=[data["objectness_logits"][j] for j in nxt])
    return write_detectron2_proposals(out, path)


def _evaluate_with_proposals(cfg: CfgNode, model, trainer_cls, name: str, kind: str, write) -> Dict[str, Any]:
    """``trainer_cls.test`` of ``model`` with each test set's proposals replaced by what
    ``write(dataset, source file, path)`` writes under ``<OUTPUT_DIR>/<name>/``."""
    ocfg = cfg.clone()
    ocfg.defrost()
    ocfg.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, name)
    files = []
    for dataset, source in zip(cfg.DATASETS.TEST, cfg.DATASETS.PROPOSAL_FILES_TEST):
        path = os.path.join(ocfg.OUTPUT_DIR, f"{dataset}_{kind}_proposals.pkl")
        if comm.is_main_process():
            write(dataset, source, path)
        files.append(path)
    comm.synchronize()
    ocfg.DATASETS.PROPOSAL_FILES_TEST = tuple(files)
    ocfg.freeze()
    return trainer_cls.test(ocfg, model)


def evaluate_with_gt_proposals(cfg: CfgNode, model, trainer_cls) -> Dict[str, Any]:
    """COCO results of a Fast R-CNN ``model`` given the ground-truth boxes as proposals (the
    ceiling of stage 2); files go to ``<OUTPUT_DIR>/oracle/``."""
    return _evaluate_with_proposals(cfg, model, trainer_cls, "oracle", "gt",
                                    lambda dataset, _, path: write_gt_proposals(dataset, path))


def evaluate_with_shuffled_proposals(cfg: CfgNode, model, trainer_cls) -> Dict[str, Any]:
    """COCO results of a Fast R-CNN ``model`` given each test image another image's proposals
    (the control); files go to ``<OUTPUT_DIR>/shuffled/``."""
    return _evaluate_with_proposals(cfg, model, trainer_cls, "shuffled", "shuffled",
                                    lambda _, source, path: write_shuffled_proposals(source, path))


def stage_figures(results: Dict[str, Any]) -> Dict[str, float]:
    """The headline figures of ``PlanState.data["results"]``, flat: ``rpn_AR@100`` ... (fractions),
    ``box_AP``, ``oracle_box_AP``, ``shuffled_box_AP`` (percent)."""
    out: Dict[str, float] = {}
    for res in results.get("proposals", {}).values():
        if isinstance(res, dict) and "recall" in res:
            out.update({f"rpn_{k}": v for k, v in res["recall"].items()})
            break
    final = results.get("fast_rcnn", results.get("detector", {}))
    if "bbox" in final:
        out["box_AP"] = final["bbox"]["AP"]
        out["box_AP50"] = final["bbox"]["AP50"]
    for control in ("oracle", "shuffled"):
        if "bbox" in final.get(control, {}):
            out[f"{control}_box_AP"] = final[control]["bbox"]["AP"]
    return out


def run_plan(cfg: CfgNode, *, resume: bool = False, trainer_cls=None) -> Dict[str, Any]:
    """Run every stage of ``cfg``'s plan (datasets registered by :func:`prepare_datasets`);
    returns ``{stage name: results}``. ``resume`` skips finished stages and continues the
    unfinished one from its last checkpoint; ``trainer_cls`` defaults to ``ResNeXtTrainer``."""
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
        res = (_train(stage, trainer_cls, resume) if stage.kind == "train"
               else _plain(compute_proposals(stage, trainer_cls)))
        results[stage.name] = res
        if comm.is_main_process():
            state.mark_finished(stage.name, res)
        comm.synchronize()
    figures = stage_figures(results)
    if figures:
        logger.info("Plan figures: %s", ", ".join(f"{k} {v:.3f}" if k.startswith("rpn_")
                                                   else f"{k} {v:.1f}" for k, v in figures.items()))
    return results


def _train(stage: Stage, trainer_cls, resume: bool) -> Dict[str, Any]:
    check_stage_proposals(stage.cfg)
    results_file = os.path.join(stage.output_dir, "inference", EVAL_RESULTS)
    if stage.evaluate and comm.is_main_process() and os.path.isfile(results_file):
        os.unlink(results_file)  # a stale result must not pass for this run's
    trainer = build_trainer(trainer_cls, stage.cfg)
    trainer.resume_or_load(resume=resume)
    with clear_training_errors(trainer):  # a diverged run: one clear error, not a traceback
        trainer.train()
    res = {}
    if stage.evaluate and os.path.isfile(results_file):
        with open(results_file) as f:
            res = _plain(json.load(f).get("results", {}))
    if stage.evaluate and "bbox" in res:
        logger.info("Stage '%s' box AP on %s: %.1f (AP50 %.1f)", stage.name,
                    ", ".join(stage.cfg.DATASETS.TEST), res["bbox"]["AP"], res["bbox"]["AP50"])
    controls = (("oracle", stage.oracle_eval, evaluate_with_gt_proposals,
                 "ground-truth boxes as proposals (oracle)"),
                ("shuffled", stage.shuffled_eval, evaluate_with_shuffled_proposals,
                 "each image given another image's proposals (control)"))
    for key, wanted, evaluate, what in controls:
        out = _plain(evaluate(stage.cfg, trainer.model, trainer_cls)) if wanted else {}
        if "bbox" in out:
            res[key] = out
            logger.info("Stage '%s' box AP with %s: %.1f", stage.name, what, out["bbox"]["AP"])
    return res


def _plain(x):
    """Results as JSON-able nested dicts of floats."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)
