"""The deploy defaults chosen by measurement per CPU kind (runtime, ONNX Runtime spinning, OpenVINO
shape mode, a much faster lower precision named in the log line), read from ``measured_runtimes.json``;
a kind without an entry takes :data:`DEFAULTS` (docs/DEPLOY.md, "Runtime by measurement").
"""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from typing import Iterable, Optional, Tuple

from ..hardware import cpu_kind
from ..measured_choices import ChoiceTableError, entry_for, load_choice_table, not_measured
from .contract import DeployError

__all__ = ["TABLE_PATH", "DEFAULTS", "RuntimeChoice", "load_table", "choose_runtime", "default_option",
           "installed_runtimes"]

logger = logging.getLogger(__name__)
TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "measured_runtimes.json")
#: what a kind without a measurement gets (the runtime: OpenVINO where installed, else ONNX Runtime)
DEFAULTS = {"runtime": "openvino", "precision": "fp32", "onnxruntime_allow_spinning": False,
            "openvino_shape_mode": "dynamic"}
_DEFAULT_WHY = {"onnxruntime_allow_spinning": "spinning threads hold cores that other processes need",
                "openvino_shape_mode": "one compile serves every image size"}
# what each key of an entry may hold
_OPTIONS = {"runtime": ("onnxruntime", "openvino"), "precision": ("fp32", "bf16", "default"),
            "onnxruntime_allow_spinning": (True, False), "openvino_shape_mode": ("dynamic", "static")}
#: how to ask for each low precision a table entry may point to (the default stays fp32)
ASK_FOR = {"bf16": 'DeployedPredictor(path, precision="bf16")',
           "int8": "tools/export.py --int8, then DeployedPredictor(\"model_int8.xml\")"}


@dataclasses.dataclass(frozen=True)
class RuntimeChoice:
    """The runtime picked when none is named, and why (one log line)."""

    runtime: str
    precision: str
    reason: str
    record: str = ""


def load_table(path: Optional[str] = None) -> dict:
    """The measured-defaults table (``{"kinds": {kind: entry}}``; default the shipped one, a missing
    file reads as none measured), checked: DeployError names the file and key of a bad value."""
    path = path or TABLE_PATH
    try:
        table = load_choice_table(path)
    except ChoiceTableError as e:
        raise DeployError(str(e)) from None
    for kind, entry in table["kinds"].items():
        for key, allowed in _OPTIONS.items():
            if key in entry and entry[key] not in allowed:
                raise DeployError(f"measured-defaults table {path}: {kind}.{key}={entry[key]!r}; use one "
                                  f"of {allowed}")
        low = entry.get("low_precision")
        if low is not None and (not isinstance(low, dict) or low.get("precision") not in ASK_FOR):
            raise DeployError(f"measured-defaults table {path}: {kind}.low_precision={low!r}; its 'precision' "
                              f"must be one of {tuple(ASK_FOR)}")
    return table


def installed_runtimes() -> Tuple[str, ...]:
    """The runtimes whose packages are installed (without importing them)."""
    return tuple(r for r in ("openvino", "onnxruntime") if importlib.util.find_spec(r) is not None)


def _source(entry: dict) -> str:
    bits = [entry.get("figures", ""), entry.get("status", "")]
    rec = entry.get("record", "")
    return "; ".join(b for b in bits if b) + (f" (record {rec})" if rec else "")


def choose_runtime(kind: Optional[str] = None, table: Optional[dict] = None,
                   available: Optional[Iterable[str]] = None) -> RuntimeChoice:
    """The runtime measured fastest on CPU ``kind`` (default this machine's) with the line that says
    so. A kind without a measurement gets OpenVINO fp32 when installed, else ONNX Runtime; a
    measured runtime that is not installed gets the other; DeployError when neither is."""
    kind = kind or cpu_kind()
    table = load_table() if table is None else table
    available = tuple(installed_runtimes() if available is None else available)
    if not available:
        raise DeployError("no inference runtime is installed; install the deploy extra: pip install -e .[deploy]")
    entry = entry_for(table, kind) or {}
    if "runtime" in entry:
        runtime, precision = entry["runtime"], entry.get("precision", "fp32")
        if runtime in available:
            return RuntimeChoice(runtime, precision, f"runtime {runtime} {precision}: measured fastest on "
                                 f"CPU kind {kind}: {_source(entry)}{_hint(entry, available)}",
                                 entry.get("record", ""))
        other = [r for r in ("openvino", "onnxruntime") if r in available][0]
        return RuntimeChoice(other, "fp32", f"runtime {other} fp32: {runtime} was measured fastest on CPU "
                             f"kind {kind} but is not installed (pip install {runtime})")
    runtime = DEFAULTS["runtime"] if DEFAULTS["runtime"] in available else "onnxruntime"
    why = ("OpenVINO fp32 where installed, else ONNX Runtime" if runtime == "openvino"
           else "OpenVINO is not installed")
    return RuntimeChoice(runtime, "fp32", f"runtime {runtime} fp32: the default ({why}); {not_measured(kind)}; "
                         "measure with python -m benchmarks.measure_deploy runtimes")


def _hint(entry: dict, available: Tuple[str, ...]) -> str:
    """The log line's note on a lower precision measured much faster on this kind ('' if none)."""
    low = entry.get("low_precision")
    if not low or low.get("runtime", "openvino") not in available:
        return ""
    return (f"; {low['precision']} was measured {low['speedup']:.1f}x {low.get('runtime', 'openvino')} fp32 here: "
            f"{low.get('figures', '')} (record {low.get('record', '?')}); ask for it with "
            f"{ASK_FOR[low['precision']]} (the default stays fp32)")


def default_option(key: str, kind: Optional[str] = None, table: Optional[dict] = None):
    """``(value, why)``: the default of option ``key`` for CPU ``kind`` (default this machine's)."""
    if key not in ("onnxruntime_allow_spinning", "openvino_shape_mode"):
        raise DeployError(f"{key!r} is not a measured option; use onnxruntime_allow_spinning or "
                          "openvino_shape_mode")
    kind = kind or cpu_kind()
    table = load_table() if table is None else table
    entry = entry_for(table, kind) or {}
    if key in entry:
        return entry[key], f"measured on CPU kind {kind}: {entry.get(key + '_source', _source(entry))}"
    return DEFAULTS[key], f"the default {DEFAULTS[key]!r} ({_DEFAULT_WHY[key]}); {not_measured(kind)}"
