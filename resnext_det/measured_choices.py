"""The one loader of the tables of choices made by measurement, per CPU kind.

Two tables ship in the package, both rendered from the records ``benchmarks/<kind>/*.json`` by
``benchmarks/choices.py`` (never edited by hand): ``engine/fast/measured_layouts.json`` (the
training layout ``auto`` picks) and ``deploy/measured_runtimes.json`` (the deploy runtime, its
options and a low-precision hint). Both read ``{"about": ..., "kinds": {kind: entry}}``, each
entry naming its record.

A machine takes the entry of its own kind only (:func:`entry_for`): a choice measured on another
kind never applies (AMX and AVX-512 bf16 machines, say, choose differently). A kind without an
entry gets the caller's documented default, and the caller's log line says so with
:func:`not_measured`. Ground floor: no torch import, so that every layer may use it.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Mapping, Optional, Tuple

from .hardware import CPU_KINDS

__all__ = ["ChoiceTableError", "load_choice_table", "entry_for", "not_measured"]

_cache: Dict[Tuple[str, int, int], dict] = {}


class ChoiceTableError(ValueError):
    """A measured-choice table that cannot be read (names the file and the key)."""


def load_choice_table(path: str) -> dict:
    """A measured-choice table, checked: ``{"kinds": {kind: entry}}`` with every kind one of
    :data:`resnext_det.hardware.CPU_KINDS` and every entry an object. A missing file (a checkout
    whose tables were not rendered) reads as a table with no kind measured.

    Args:
        path: the JSON file. Read once per version of the file.

    Raises:
        ChoiceTableError: unreadable JSON, a kind that is not a CPU kind, an entry that is not
            an object.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {"kinds": {}}
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
    if key in _cache:
        return _cache[key]
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, ValueError) as e:
        raise ChoiceTableError(f"measured-choice table {path}: unreadable ({e})") from None
    kinds = table.get("kinds") if isinstance(table, dict) else None
    if not isinstance(kinds, dict):
        raise ChoiceTableError(f"measured-choice table {path}: 'kinds' must be an object of CPU kind -> entry")
    for kind, entry in kinds.items():
        if kind not in CPU_KINDS:
            raise ChoiceTableError(f"measured-choice table {path}: kind {kind!r} is not one of {CPU_KINDS}")
        if not isinstance(entry, dict):
            raise ChoiceTableError(f"measured-choice table {path}: kinds.{kind} must be an object")
    _cache[key] = table
    return table


def entry_for(table: Mapping, kind: str) -> Optional[dict]:
    """The table's entry for exactly ``kind``, None when that kind was not measured (never the
    entry of another kind, however close).

    Args:
        table: a table as :func:`load_choice_table` returns.
        kind: one of :data:`resnext_det.hardware.CPU_KINDS`.

    Raises:
        ValueError: ``kind`` is not a CPU kind.
    """
    if kind not in CPU_KINDS:
        raise ValueError(f"{kind!r} is not a CPU kind; use one of {', '.join(CPU_KINDS)}")
    return (table.get("kinds") or {}).get(kind)


def not_measured(kind: str) -> str:
    """What a log line says where a default stands in for a measurement on ``kind``."""
    return f"no measurement on CPU kind {kind} stands behind it (records: benchmarks/{kind}/)"
