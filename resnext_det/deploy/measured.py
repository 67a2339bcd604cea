"""The deploy defaults chosen by measurement, per CPU kind: which runtime
``DeployedPredictor(path)`` and ``train_net.py --eval-only`` use when none is named, whether
ONNX Runtime's threads spin, and OpenVINO's shape mode.

The figures live in ``measured_runtimes.json`` beside this module, one entry per CPU kind
(:func:`resnext_det.hardware.cpu_kind`), each naming the record it came from and how far to
trust it (``status``). A kind with no entry (or a key an entry lacks) takes the table's
``fallback``, and the log line says that no measurement stands behind it. Re-measure with
``tools/measure_deploy.py`` and edit the table; tests check the logic on hand-made tables.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
from typing import Dict, Iterable, Optional, Tuple

from ..hardware import CPU_KINDS, cpu_kind
from .contract import DeployError

__all__ = ["TABLE_PATH", "RuntimeChoice", "load_table", "choose_runtime", "default_option",
           "installed_runtimes"]

logger = logging.getLogger(__name__)
TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "measured_runtimes.json")
# what each key of an entry may hold
_OPTIONS = {"runtime": ("onnxruntime", "openvino"), "precision": ("fp32", "bf16", "default"),
            "onnxruntime_allow_spinning": (True, False), "openvino_shape_mode": ("dynamic", "static")}
_RUNTIME_MODULES = {"openvino": "openvino", "onnxruntime": "onnxruntime"}
_cache: Dict[str, dict] = {}


@dataclasses.dataclass(frozen=True)
class RuntimeChoice:
    """The runtime picked when none is named, and why (one log line)."""

    runtime: str
    precision: str
    reason: str
    record: str = ""


def load_table(path: Optional[str] = None) -> dict:
    """The measured-defaults table (``{"kinds": {kind: entry}, "fallback": entry}``), checked.

    Args:
        path: a JSON file (default: the one shipped in the package).

    Raises:
        DeployError: unreadable JSON, an unknown kind, or a value outside what works (each
            named with the file and key).
    """
    path = path or TABLE_PATH
    if path in _cache:
        return _cache[path]
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, ValueError) as e:
        raise DeployError(f"measured-defaults table {path}: unreadable ({e})") from None
    kinds = table.get("kinds", {})
    if not isinstance(kinds, dict) or not isinstance(table.get("fallback", {}), dict):
        raise DeployError(f"measured-defaults table {path}: 'kinds' and 'fallback' must be objects")
    for kind, entry in list(kinds.items()) + [("fallback", table.get("fallback", {}))]:
        if kind != "fallback" and kind not in CPU_KINDS:
            raise DeployError(f"measured-defaults table {path}: kind {kind!r} is not one of {CPU_KINDS}")
        for key, allowed in _OPTIONS.items():
            if key in entry and entry[key] not in allowed:
                raise DeployError(f"measured-defaults table {path}: {kind}.{key}={entry[key]!r}; use one "
                                  f"of {allowed}")
    _cache[path] = table
    return table


def installed_runtimes() -> Tuple[str, ...]:
    """The runtimes whose packages are installed (without importing them)."""
    return tuple(r for r, mod in _RUNTIME_MODULES.items() if importlib.util.find_spec(mod) is not None)


def _source(entry: dict) -> str:
    bits = [entry.get("figures", ""), entry.get("status", "")]
    rec = entry.get("record", "")
    return "; ".join(b for b in bits if b) + (f" (record {rec})" if rec else "")


def choose_runtime(kind: Optional[str] = None, table: Optional[dict] = None,
                   available: Optional[Iterable[str]] = None) -> RuntimeChoice:
    """The runtime measured fastest on this CPU kind, with the line that says so.

    Args:
        kind: a CPU kind (default: this machine's, :func:`resnext_det.hardware.cpu_kind`).
        table: a table as :func:`load_table` returns (default: the shipped one).
        available: installed runtimes (default: :func:`installed_runtimes`).

    Returns:
        a :class:`RuntimeChoice`. A kind without a measurement gets OpenVINO fp32 when it is
        installed, else ONNX Runtime; a measured runtime that is not installed gets the other.

    Raises:
        DeployError: neither runtime is installed (names the extra to install).
    """
    kind = kind or cpu_kind()
    table = load_table() if table is None else table
    available = tuple(installed_runtimes() if available is None else available)
    if not available:
        raise DeployError("no inference runtime is installed; install the deploy extra: pip install -e .[deploy]")
    entry = table.get("kinds", {}).get(kind)
    if entry and "runtime" in entry:
        runtime, precision = entry["runtime"], entry.get("precision", "fp32")
        if runtime in available:
            return RuntimeChoice(runtime, precision, f"runtime {runtime} {precision}: measured fastest on "
                                 f"CPU kind {kind}: {_source(entry)}", entry.get("record", ""))
        other = [r for r in ("openvino", "onnxruntime") if r in available][0]
        return RuntimeChoice(other, "fp32", f"runtime {other} fp32: {runtime} was measured fastest on CPU "
                             f"kind {kind} but is not installed (pip install {runtime})")
    runtime = "openvino" if "openvino" in available else "onnxruntime"
    why = ("OpenVINO fp32 where installed, else ONNX Runtime" if runtime == "openvino"
           else "OpenVINO is not installed")
    return RuntimeChoice(runtime, "fp32", f"runtime {runtime} fp32: no measurement for CPU kind {kind} "
                         f"({why}; measure with tools/measure_deploy.py runtimes)")


def default_option(key: str, kind: Optional[str] = None, table: Optional[dict] = None):
    """A runtime option's default for this CPU kind: ``(value, why)``.

    Args:
        key: "onnxruntime_allow_spinning" or "openvino_shape_mode".
        kind: a CPU kind (default: this machine's).
        table: a table as :func:`load_table` returns (default: the shipped one).
    """
    if key not in ("onnxruntime_allow_spinning", "openvino_shape_mode"):
        raise DeployError(f"{key!r} is not a measured option; use onnxruntime_allow_spinning or "
                          "openvino_shape_mode")
    kind = kind or cpu_kind()
    table = load_table() if table is None else table
    entry = table.get("kinds", {}).get(kind, {})
    if key in entry:
        return entry[key], f"measured on CPU kind {kind}: {entry.get(key + '_source', _source(entry))}"
    fallback = table.get("fallback", {})
    if key not in fallback:
        raise DeployError(f"measured-defaults table: no {key!r} for CPU kind {kind} and no fallback")
    return fallback[key], f"not measured on CPU kind {kind}: {fallback.get(key + '_source', 'fallback')}"
