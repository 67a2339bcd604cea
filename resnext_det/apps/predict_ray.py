"""``tools/predict.py --ray`` (docs/PREDICT.md): the pictures spread over Ray actors
(:class:`PredictActor`, one exported model each); their rows collected into the same shards as
a local run. Imported only with ``--ray`` (the optional ``ray`` extra: ``pip install -e .[ray]``).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, List

from ..deploy import DeployedPredictor, read_contract
from ..hardware import available_cores
from .predict import (Drawer, PredictError, ShardCollector, WorkItem, _failure, _is_exported, _progress,
                      class_names_of, predict_picture, read_picture)

__all__ = ["RayPlan", "PredictActor"]

logger = logging.getLogger(__name__)
BATCH_SIZE = 4  # pictures per map_batches call: small, so the actors share the work evenly


class PredictActor:
    """One exported model in one Ray actor (``threads``: its CPUs): reads, predicts and draws a batch
    of pictures into ``output/pictures/``."""

    def __init__(self, weights: str, runtime: str, precision: str, threads: int, output: str, threshold: float):
        self.predictor = DeployedPredictor(weights, runtime=runtime, num_threads=threads, precision=precision)
        contract = self.predictor.contract
        self.drawer = Drawer(class_names_of(contract.class_names, contract.num_classes), threshold)
        self.output = output

    def __call__(self, batch: Dict) -> Dict:
        entries = []
        for path, name in zip(batch["path"], batch["name"]):
            item = WorkItem(str(path), str(name), "image")
            try:
                image = read_picture(item.path)
            except Exception as e:  # an unreadable file is a failure entry, never a stop
                entries.append(json.dumps(_failure(item, e)))
                continue
            entries.append(json.dumps(predict_picture(lambda im: self.predictor(im)["instances"], self.drawer,
                                                      image, item, self.output)))
        return {"shard": batch["shard"], "entry": entries}


class RayPlan:
    """What a ``--ray`` run needs, checked before anything is written."""

    def __init__(self, args, cfg):
        self.args, self.cfg = args, cfg
        weights = cfg.MODEL.WEIGHTS
        if not weights or not os.path.isfile(weights) or not _is_exported(weights):
            raise PredictError(f"--ray runs an exported model (MODEL.WEIGHTS model.onnx or .xml), got "
                               f"{weights or 'no MODEL.WEIGHTS'!r}; export it first: python tools/export.py "
                               "--config-file CFG --output DIR MODEL.WEIGHTS model_final.pth")
        if args.runtime == "eager":
            raise PredictError("--ray runs exported models; use --runtime auto, onnxruntime or openvino")
        try:
            import ray  # noqa: F401
        except ImportError:
            raise PredictError("--ray needs Ray: pip install -e .[ray] (or pip install 'ray[data]')") from None
        contract = read_contract(weights)
        self.class_names = class_names_of(contract.class_names, contract.num_classes)
        # the runtime every actor takes (the measured choice is per CPU kind: on mixed machines each logs its own)
        self.runtime, _ = DeployedPredictor.runtime_for(weights, None if args.runtime == "auto" else args.runtime)

    def run(self, shards, todo: List[int], output: str, threshold: float):
        """Predict the pictures of shards ``todo`` on Ray; returns how many were predicted."""
        import ray

        args = self.args
        started_here = not ray.is_initialized()
        if started_here:
            local = args.ray in ("local", "")
            # a local instance listens on the loopback address only
            extra = {"num_cpus": available_cores(), "_node_ip_address": "127.0.0.1"} if local else {}
            ray.init(address=None if local else args.ray, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=False, **extra)
        # Ray Data's bars and INFO lines off (after ray.data is imported, which configures its loggers)
        context = ray.data.DataContext.get_current()
        for name in ("ray.data", "ray"):
            logging.getLogger(name).setLevel(logging.ERROR)
        context.enable_progress_bars = False
        context.enable_operator_progress_bars = False
        try:
            cpus = args.ray_cpus_per_actor
            total = int(ray.cluster_resources().get("CPU", 1))
            actors = args.ray_actors or max(1, total // cpus)
            if actors * cpus > total:
                raise PredictError(f"--ray-actors {actors} x --ray-cpus-per-actor {cpus} = {actors * cpus} CPUs; "
                                   f"the Ray cluster has {total}")
            rows = [{"shard": i, "path": item.path, "name": item.name} for i in todo for item in shards[i]]
            if not rows:
                return 0, 0
            print(f"predict.py: Ray at {ray.get_runtime_context().gcs_address}: {actors} actors x {cpus} CPUs, "
                  f"{len(rows)} pictures", flush=True)
            ds = ray.data.from_items(rows, override_num_blocks=max(actors, min(len(rows) // BATCH_SIZE, 200)))
            ds = ds.map_batches(PredictActor, batch_size=BATCH_SIZE, compute=ray.data.ActorPoolStrategy(size=actors),
                                num_cpus=cpus,
                                fn_constructor_kwargs=dict(weights=os.path.abspath(self.cfg.MODEL.WEIGHTS),
                                                           runtime=self.runtime, precision=args.precision,
                                                           threads=cpus, output=os.path.abspath(output),
                                                           threshold=threshold))
            collector = ShardCollector(output, shards)
            remaining = {i: len(shards[i]) for i in todo}
            count = 0
            bar = _progress(len(rows))
            for row in ds.iter_rows():
                index, entry = int(row["shard"]), json.loads(row["entry"])
                collector.add(index, entry)
                count += "reason" not in entry
                bar.update(1)
                remaining[index] -= 1
                if remaining[index] == 0:
                    collector.finish(index)
            bar.close()
            return count
        finally:
            if started_here:
                ray.shutdown()
