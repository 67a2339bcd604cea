"""The one protocol every speed figure is measured by (docs/SPEED.md, "The protocol"): rotating
interleaved rounds, an A/A control of :data:`STOCK_A` vs :data:`STOCK_B` (outside :data:`AA_BAND`
the run is noisy and publishes no ratios), ratios against :data:`RATIO_BASIS`. Records go to
``benchmarks/<kind>/<name>.json`` (:func:`record_path`, :func:`write_record`); another CPU kind's
record is never overwritten (:func:`check_record_path`).
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ...hardware import CPU_KINDS, CpuFeatures, available_cores, cpu_kind, cpuinfo_field
from ...io import atomic_write_json

__all__ = ["AA_BAND", "STOCK_A", "STOCK_B", "RATIO_BASIS", "Protocol", "Rounds", "run_rounds", "spread", "path_record",
           "environment", "write_record", "record_path", "check_record_path", "default_record_name", "SCHEMA_VERSION"]

#: the A/A ratio (median stock_b / median stock_a) a run must fall in for its ratios to be published
AA_BAND = (0.95, 1.05)
STOCK_A, STOCK_B = "stock_a", "stock_b"
RATIO_BASIS = "median of stock_a's and stock_b's times pooled"
#: the record envelope's version (``benchmarks/schema.json``)
SCHEMA_VERSION = 1
#: packages whose versions every record carries (those installed)
VERSIONED = ("torch", "torchvision", "detectron2", "sal-detectron2", "onnxruntime", "openvino", "nncf", "ray")


@dataclasses.dataclass
class Protocol:
    """How long a run goes on: at least ``min_rounds``; no later round starts that would pass
    ``max_seconds`` (estimated from the rounds so far); ``warmup`` untimed calls of each path first."""

    min_rounds: int = 3
    max_seconds: float = 900.0
    max_rounds: int = 50
    warmup: int = 1
    band: Tuple[float, float] = AA_BAND

    def as_dict(self) -> dict:
        return {"min_rounds": self.min_rounds, "max_seconds": self.max_seconds, "max_rounds": self.max_rounds,
                "warmup": self.warmup, "aa_band": list(self.band), "aa_control": True,
                "interleaved": "rounds, order rotated by one each round", "ratio_basis": RATIO_BASIS}


def spread(times: Sequence[float]) -> dict:
    """Median, min, quartiles and max of ``times`` (seconds), and the times themselves."""
    ts = sorted(times)
    q1, _, q3 = statistics.quantiles(ts, n=4, method="inclusive") if len(ts) > 1 else (ts[0],) * 3
    return {"median": statistics.median(ts), "min": ts[0], "q1": q1, "q3": q3, "max": ts[-1],
            "n": len(ts), "times": [round(t, 4) for t in times]}


@dataclasses.dataclass
class Rounds:
    """What :func:`run_rounds` measured."""

    times: Dict[str, List[float]]
    outputs: Dict[str, object]
    rounds: int
    wall_s: float
    loadavg_at_start: List[float]
    loadavg_at_end: List[float]
    band: Tuple[float, float] = AA_BAND
    #: the two instances of one path that form the A/A control (stock, unless a run says)
    pair: Tuple[str, str] = (STOCK_A, STOCK_B)

    @property
    def has_control(self) -> bool:
        return self.pair[0] in self.times and self.pair[1] in self.times

    @property
    def aa_ratio(self) -> Optional[float]:
        """median of the pair's second / median of its first (None without a control)."""
        if not self.has_control:
            return None
        return statistics.median(self.times[self.pair[1]]) / statistics.median(self.times[self.pair[0]])

    @property
    def settled(self) -> bool:
        """The control is inside its band (False without a control: nothing to publish)."""
        r = self.aa_ratio
        return r is not None and self.band[0] <= r <= self.band[1]

    @property
    def stock_s(self) -> Optional[float]:
        """The reference time: :data:`RATIO_BASIS`."""
        return statistics.median(self.times[self.pair[0]] + self.times[self.pair[1]]) if self.has_control else None

    def ratio(self, name: str) -> Optional[float]:
        """Reference (:attr:`stock_s`) / median of ``name``; None unless settled (not published)."""
        return self.stock_s / statistics.median(self.times[name]) if self.settled else None

    def control(self) -> dict:
        """The run's control, as written into records."""
        r = self.aa_ratio
        return {"aa_pair": list(self.pair), "aa_ratio": r, "settled": self.settled, "noisy": not self.settled, "rounds": self.rounds,
                "aa_band": list(self.band), "stock_s": self.stock_s, "wall_s": round(self.wall_s, 2),
                "loadavg_at_start": self.loadavg_at_start, "loadavg_at_end": self.loadavg_at_end}


def path_record(name: str, preset: str, mode: str, res: "Rounds") -> dict:
    """The record of path ``mode`` of part ``name`` (``backbone``, ``fpn``, ...): median, spread and
    :meth:`Rounds.ratio`; the control is the run's :meth:`Rounds.control`. Parts add their own keys."""
    sp = spread(res.times[mode])
    return {"name": name, "preset": preset, "mode": mode, "seconds": sp["median"],
            "spread": {k: sp[k] for k in ("min", "q1", "q3", "max")}, "times": sp["times"],
            "rounds": res.rounds, "ratio": res.ratio(mode)}


def _loadavg() -> List[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this OS
        return []


def run_rounds(fns: Mapping[str, Callable[[], object]], protocol: Protocol,
               sync: Callable[[], None] = lambda: None,
               clock: Callable[[], float] = time.perf_counter,
               pair: Tuple[str, str] = (STOCK_A, STOCK_B)) -> Rounds:
    """Time ``fns`` (name -> call; the last output of each is kept) under the protocol (module
    docstring). ``pair``: the two paths of the A/A control (stock, or e.g. two identical runtime
    sessions); without them the run stops at ``min_rounds`` and publishes no ratio. ``sync`` is called
    around each timed call (CUDA: ``torch.cuda.synchronize``)."""
    names = list(fns)
    outs: Dict[str, object] = {}
    before = _loadavg()
    for name in names:
        for _ in range(protocol.warmup):
            outs[name] = fns[name]()
    times: Dict[str, List[float]] = {n: [] for n in names}
    start = clock()
    done = 0
    while True:
        k = done % len(names)
        for name in names[k:] + names[:k]:  # rotated: each path takes every position in turn
            sync()
            t = clock()
            outs[name] = fns[name]()
            sync()
            times[name].append(clock() - t)
        done += 1
        elapsed = clock() - start
        res = Rounds(times, outs, done, elapsed, before, [], protocol.band, tuple(pair))
        if done < protocol.min_rounds:
            continue
        if not res.has_control or res.settled or done >= protocol.max_rounds:
            break
        if elapsed + elapsed / done > protocol.max_seconds:  # the next round would pass the limit
            break
    res.loadavg_at_end = _loadavg()
    return res


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def environment(device: Optional[torch.device] = None) -> dict:
    """The machine every record carries as its ``environment``, taken when the measuring starts
    (:func:`write_record` adds ``loadavg_at_end``); ``cores`` counts logical CPUs."""
    feats = CpuFeatures.detect()
    return {
        "cpu_kind": cpu_kind(),
        "cpu_flags": [f.name for f in dataclasses.fields(feats) if getattr(feats, f.name)],
        "cpu_model": cpuinfo_field("model name") or platform.processor() or None,
        "cores": os.cpu_count(), "available_cores": available_cores(),
        "threads": {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None},
        "loadavg_at_start": _loadavg(), "loadavg_at_end": None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": str(device) if device is not None else "cpu",
        "platform": platform.platform(), "versions": _versions(),
    }


def write_record(path: Optional[str], record_type: str, results: dict, env: dict, what: str,
                 command: Optional[str] = None, **fields) -> dict:
    """The one record writer: the envelope of ``benchmarks/schema.json`` (``record_type`` its
    ``type``, ``fields`` other keys such as ``commit``) around ``results``, written atomically to
    ``path`` unless it is empty; returns the record. ``env`` (:func:`environment`) gets its
    ``loadavg_at_end`` now when unset. Raises ValueError for another CPU kind's path."""
    env = dict(env)
    if env.get("loadavg_at_end") is None:
        env["loadavg_at_end"] = _loadavg() or None
    env["loadavg_at_start"] = env.get("loadavg_at_start") or None
    record = {"schema": SCHEMA_VERSION, "type": record_type, "what": what, "command": command,
              "date": datetime.datetime.now().isoformat(timespec="seconds"), **fields,
              "environment": env, "results": results}
    if path:
        check_record_path(path, env["cpu_kind"])
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write_json(path, record, indent=1)
    return record


def default_record_name(parts: Sequence[str], presets: Sequence[str], size: Sequence[int]) -> str:
    """The record's name for these parts (``train-layouts`` is what the training ``auto`` table is
    made from); other presets and sizes are appended, so a small test run never replaces the full-size record."""
    parts = list(parts)
    name = ("train-layouts" if parts == ["train"] else
            "inference" if set(parts) <= {"backbone", "fpn", "c4"} else "-".join(parts))
    if list(presets) != ["X-101-32x4d"]:
        name += "-" + "-".join(presets)
    if list(size) != [800, 1333]:
        name += f"-{size[0]}x{size[1]}"
    return name


def record_path(root: str, kind: str, name: str) -> str:
    """``<root>/benchmarks/<kind>/<name>.json``."""
    return os.path.join(root, "benchmarks", kind, f"{name}.json")


def check_record_path(path: str, kind: str) -> None:
    """Refuse (ValueError) to write a ``kind`` record where another kind's belongs or already is."""
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    if parent in CPU_KINDS and parent != kind:
        raise ValueError(f"{path} is under benchmarks/{parent}/ but this CPU is {kind}: "
                         f"records of one kind never replace another's")
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = (json.load(f).get("environment") or {}).get("cpu_kind")
        except (OSError, ValueError, AttributeError):
            old = None
        if old and old != kind:
            raise ValueError(f"{path} holds a {old} record; this CPU is {kind}: write elsewhere")
