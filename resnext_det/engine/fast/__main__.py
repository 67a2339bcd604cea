"""Training-iteration timing of the layout switches: stock vs each candidate vs ``auto``.

    python -m resnext_det.engine.fast --preset X-101-32x4d --size 800 1333 --reps 3

One process, same random weights, batch 1, forward + backward + SGD step; runs interleaved
(stock, channels_last, ..., auto, stock, ...), median kept; prints one JSON object with the
load average, the CPU flags, ``auto``'s decision line and each mode's seconds, ratio vs stock
and first-iteration loss difference vs stock. (tools/benchmark.py's ``train`` part times the
explicit switches; this adds ``auto`` and the fold-only layout.)
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch

from detectron2.modeling import build_model

from ... import get_cfg, get_config_file
from ..._warnings import filter_known_third_party_warnings
from ...data.synthetic import synthetic_train_batch
from ..stock import randomize_frozen_bn, stock_equivalent_cfg, training_iteration
from .auto import CANDIDATES, CpuFeatures
from .prepare import apply_training_switches, apply_training_switches_with_report


def main(argv=None):
    filter_known_third_party_warnings()  # a command line: its process, not the library, gets the filters
    ap = argparse.ArgumentParser(prog="python -m resnext_det.engine.fast", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="X-101-32x4d")
    ap.add_argument("--config", default="faster_rcnn_X50_32x4d_FPN.yaml")
    ap.add_argument("--size", nargs=2, type=int, default=[800, 1333], metavar=("H", "W"))
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    load = os.getloadavg()
    h, w = args.size
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file(args.config))
    cfg.MODEL.RESNEXT.PRESET, cfg.MODEL.DEVICE = args.preset, "cpu"
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (h,), w
    torch.manual_seed(0)
    base = build_model(cfg)
    randomize_frozen_bn(base, torch.Generator().manual_seed(0))
    stock = build_model(stock_equivalent_cfg(cfg))
    stock.load_state_dict(base.state_dict())
    models = {"stock": stock}
    for name, (cl, fold) in CANDIDATES.items():
        if name != "stock":
            models[name] = apply_training_switches(copy.deepcopy(base), channels_last=cl, fold_frozen_bn=fold)
    t = time.perf_counter()
    models["auto"], auto = apply_training_switches_with_report(copy.deepcopy(base), cfg)  # the config default
    auto_s = time.perf_counter() - t
    data = synthetic_train_batch([(h, w)], classes=(1, 5))
    opts = {k: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)
            for k, m in models.items()}

    def step(k):
        return training_iteration(models[k], opts[k], data)

    first = {k: step(k) for k in models}  # also the warm-up
    times = {k: [] for k in models}
    for _ in range(args.reps):
        for k in models:
            t = time.perf_counter()
            step(k)
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "command": "python -m resnext_det.engine.fast " + " ".join(argv if argv is not None else sys.argv[1:]),
        "preset": args.preset, "size": [h, w], "loadavg_at_start": load, "loadavg_at_end": os.getloadavg(),
        "cpu_flags": CpuFeatures.detect().describe(), "threads": torch.get_num_threads(),
        "auto": auto.layout_reason, "auto_decision_s": round(auto_s, 2),
        "auto_channels_last": auto.channels_last, "auto_folded": auto.folded_on_the_fly > 0,
        "modes": {k: {"s": round(med[k], 3), "x_stock": round(med["stock"] / med[k], 3),
                      "times": [round(t, 3) for t in times[k]],
                      "first_loss_rel_diff": abs(first[k] - first["stock"]) / abs(first["stock"])}
                  for k in models},
    }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
