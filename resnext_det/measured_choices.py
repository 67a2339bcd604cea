"""The one loader of the tables of choices made by measurement, per CPU kind (docs/ARCHITECTURE.md).
``benchmarks/choices.py`` renders them from the records as ``{"about": ..., "kinds": {kind: entry}}``;
a kind without an entry gets the caller's default, logged by :func:`not_measured`. No torch import.
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
    """A measured-choice table, checked (every kind a CPU kind, every entry an object) and read
    once per version of the file; a missing file reads as no kind measured."""
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
    """The table's entry for exactly ``kind`` (a CPU kind), None when it was not measured."""
    if kind not in CPU_KINDS:
        raise ValueError(f"{kind!r} is not a CPU kind; use one of {', '.join(CPU_KINDS)}")
    return (table.get("kinds") or {}).get(kind)


def not_measured(kind: str) -> str:
    """What a log line says where a default stands in for a measurement on ``kind``."""
    return f"no measurement on CPU kind {kind} stands behind it (records: benchmarks/{kind}/)"
