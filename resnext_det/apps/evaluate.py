"""COCO evaluation of an exported model (``train_net.py --eval-only MODEL.WEIGHTS out/model.onnx``, or
``model_int8.xml``): detectron2's ``inference_on_dataset`` with the runtime in place of the eager model."""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Dict, Optional

from detectron2.data import build_detection_test_loader
from detectron2.evaluation import inference_on_dataset, print_csv_format

from ..engine.trainer import EVAL_RESULTS, ResNeXtTrainer
from ..io import atomic_write_json
from ..deploy.contract import MODEL_FORMATS, DeployError, read_contract
from ..deploy.export import export_onnx
from ..deploy.predictor import DeployedPredictor
from .export import plan_export_target

__all__ = ["evaluate_exported", "export_and_evaluate", "is_exported_model", "check_exported_model"]

logger = logging.getLogger(__name__)


def is_exported_model(path: str) -> bool:
    """True when MODEL.WEIGHTS names an exported model (``.onnx`` or OpenVINO ``.xml``), not a checkpoint."""
    return os.path.splitext(str(path))[1].lower() in MODEL_FORMATS


def check_exported_model(cfg, path: str) -> None:
    """Refuse (DeployError naming the keys) a file whose contract does not match ``cfg``."""
    contract = read_contract(path)
    bad = contract.mismatches(cfg)
    if bad:
        raise DeployError(f"{path} was exported with other settings than this config: "
                          f"{'; '.join(bad)}. Evaluate it with the config it was exported with")


def evaluate_exported(cfg, path: Optional[str] = None, runtime: Optional[str] = None,
                      num_threads: Optional[int] = None, precision: str = "fp32", **runtime_options) -> Dict:
    """COCO box AP of the exported model ``path`` (default ``cfg.MODEL.WEIGHTS``) on each of
    ``cfg.DATASETS.TEST``, run as :class:`DeployedPredictor` takes the other arguments. Returns
    ``{dataset: {"bbox": {...}}}`` as detectron2's test loop does; also written to
    ``<OUTPUT_DIR>/inference/eval_results.json`` with the runtime and precision."""
    path = path or cfg.MODEL.WEIGHTS
    check_exported_model(cfg, path)
    predictor = DeployedPredictor(path, runtime=runtime, num_threads=num_threads, precision=precision,
                                  **runtime_options)
    runtime = predictor.runtime
    print(f"Evaluating {path} with {runtime} ({predictor.runtime_reason}; {predictor.runner.describe()}, "
          f"precision {predictor.precision_used}, weights {predictor.contract.precision})", flush=True)
    results = OrderedDict()
    for name in cfg.DATASETS.TEST:
        loader = build_detection_test_loader(cfg, name)
        evaluator = ResNeXtTrainer.build_evaluator(cfg, name)
        # inference(): detectron2's model calling convention on the runtime
        res = inference_on_dataset(predictor.inference, loader, evaluator)
        results[name] = res
        if res:
            print_csv_format(res)
    if len(results) == 1:
        results = list(results.values())[0]
    out = os.path.join(cfg.OUTPUT_DIR, "inference", EVAL_RESULTS)
    atomic_write_json(out, {"datasets": list(cfg.DATASETS.TEST), "weights": path, "runtime": runtime,
                            "runtime_reason": predictor.runtime_reason,
                            "runtime_settings": predictor.runner.describe(),
                            "precision": predictor.precision_used,
                            "weights_precision": predictor.contract.precision, "results": results},
                      indent=2, default=float)
    logger.info("Evaluation results written to %s", out)
    return results


def export_and_evaluate(cfg, output_dir: str, runtime: str = "onnxruntime") -> Dict:
    """Export the plan's trained detector (``cfg``: the train_net config, datasets registered; empty
    MODEL.WEIGHTS: where the plan wrote them) to ``output_dir/model.onnx`` and return ``{"path",
    "results"}``: its COCO results through ``runtime`` (what the demo prints beside the eager AP),
    written to ``output_dir/inference/``, never over the eager evaluation's files."""
    cfg, model = plan_export_target(cfg)
    if model is None and not cfg.MODEL.WEIGHTS:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    report = export_onnx(cfg, output_dir, model=model)
    ecfg = cfg.clone()
    ecfg.defrost()
    ecfg.OUTPUT_DIR = output_dir
    ecfg.MODEL.LOAD_PROPOSALS = False
    ecfg.freeze()
    return {"path": report["path"], "results": evaluate_exported(ecfg, report["path"], runtime=runtime)}
