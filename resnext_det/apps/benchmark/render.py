"""README.md's and docs/SPEED.md's speed, accuracy, demo and suite figures, and the training
``auto`` rule's table, rendered from the records in ``benchmarks/<kind>/*.json`` -- the only
place a figure may come from.

A file holds rendered blocks between ``<!-- rendered:NAME -->`` and ``<!-- /rendered -->``;
:func:`render_all` re-renders every block of README.md and docs/SPEED.md and the table
``resnext_det/engine/fast/measured_layouts.json``; a test compares them with the files, so a
figure that disagrees with its record fails. Rules:

- A ratio is shown only from a record with an A/A control (``aa_control: true``) whose part
  settled; a noisy part shows its seconds and "ratio withheld"; a record without a control
  (``aa_control: false``, the ones measured before the protocol) shows seconds only, in its own
  section; records made with ``--opts`` (a modified network) are never shown.
- Both CPU kinds side by side (:data:`SHOWN_KINDS`, plus any other kind with records); "not
  measured" where a kind has no record; every column carries its record, load average before
  and after, CPU flags and threads.
- Of several records of one kind holding the same part, preset and size, the newest counts.
"""
from __future__ import annotations

import glob
import json
import os
import re
from typing import Dict, List, Optional

from ...hardware import CPU_KINDS, CpuFeatures
from ...io import atomic_open
from ...engine.fast.auto import CANDIDATES, table_choice
from .protocol import AA_BAND

__all__ = ["SHOWN_KINDS", "load_records", "layouts_table", "render_blocks", "render_all", "write_rendered",
           "replace_blocks"]

#: the kinds every table shows as columns (the two the project is measured on), measured or not
SHOWN_KINDS = ("avx2", "avx512_bf16")
NOT_MEASURED = "not measured"
MARKER = re.compile(r"(<!-- rendered:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /rendered -->)", re.S)
FILES = ("README.md", "docs/SPEED.md")
#: the ``auto`` table, relative to the checkout (the package's own copy of it)
TABLE = "resnext_det/engine/fast/measured_layouts.json"
PART_LABELS = {"backbone": "backbone (bottom-up, FrozenBN)", "fpn": "FPN detector, one image",
               "c4": "C4 detector, one image", "train": "training iteration (fwd + bwd + SGD step, batch 1)"}
#: the README summary: (part, path selector, label) at :data:`SUMMARY_PRESET`, :data:`SUMMARY_IMAGE`
SUMMARY_PRESET, SUMMARY_IMAGE = "X-101-32x4d", (800, 1333)
_RUNTIME_FP32 = re.compile(r"^(onnxruntime|openvino)(-[a-z]+)?$")  # wrapped fp32 runtime paths


def _is_runtime_fp32(mode: str) -> bool:
    m = _RUNTIME_FP32.match(mode)
    return bool(m) and not any(t in mode for t in ("raw", "bf16", "int8", "fp16"))


SUMMARY = (
    ("backbone", "fast", "backbone, torch fast path (fp32)"),
    ("backbone", _is_runtime_fp32, "backbone, best runtime (fp32)"),
    ("fpn", "fast", "FPN detector, torch fast path (fp32)"),
    ("fpn", _is_runtime_fp32, "FPN detector, `DeployedPredictor`, best runtime (fp32)"),
    ("c4", "fast", "C4 detector, torch fast path (fp32)"),
    ("c4", _is_runtime_fp32, "C4 detector, `DeployedPredictor`, best runtime (fp32)"),
    ("train", lambda m: m in CANDIDATES, "training iteration, fastest layout"),
)


# --------------------------------------------------------------------------- records
def load_records(root: str) -> List[dict]:
    """Every ``benchmarks/<kind>/*.json`` under ``root``: ``{"path", "kind", "data"}``, by path.

    Args:
        root: the checkout.
    """
    out = []
    for path in sorted(glob.glob(os.path.join(root, "benchmarks", "*", "*.json"))):
        kind = os.path.basename(os.path.dirname(path))
        if kind not in CPU_KINDS:
            continue
        with open(path) as f:
            out.append({"path": os.path.relpath(path, root).replace(os.sep, "/"), "kind": kind, "data": json.load(f)})
    return out


def _kinds(records) -> List[str]:
    present = {r["kind"] for r in records}
    return list(SHOWN_KINDS) + [k for k in CPU_KINDS if k in present and k not in SHOWN_KINDS]


def _flags(value) -> str:
    """CPU flags as records hold them (a describe() string, a list or dict of flags) -> one string."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [k for k, v in value.items() if v]
    return CpuFeatures.from_flags(value or []).describe() if value else "flags not recorded"


def _load(v) -> str:
    return "-" if not v else f"{v[0]:.2f}"


def _bench(rec) -> bool:
    d = rec["data"]
    return d.get("aa_control") is True and "controls" in d and not (d.get("meta") or {}).get("opts")


def speed_runs(records) -> Dict[tuple, Dict[str, dict]]:
    """(part, preset, (h, w)) -> kind -> the newest controlled run: ``{"rec", "control", "paths"}``."""
    out: Dict[tuple, Dict[str, dict]] = {}
    for rec in records:
        if not _bench(rec):
            continue
        meta = rec["data"]["meta"]
        for c in rec["data"]["controls"]:
            key = (c["name"], c["preset"], tuple(meta["image"]))
            paths = {r["mode"]: r for r in rec["data"]["records"] if (r["name"], r["preset"]) == key[:2]}
            old = out.setdefault(key, {}).get(rec["kind"])
            if old is None or meta["date"] > old["rec"]["data"]["meta"]["date"]:
                out[key][rec["kind"]] = {"rec": rec, "control": c, "paths": paths}
    return out


def _conditions(run, link: str) -> str:
    meta, c = run["rec"]["data"]["meta"], run["control"]
    aa = c["aa_ratio"]
    state = "settled" if c["settled"] else "**noisy: ratios withheld**"
    return (f"[{os.path.basename(run['rec']['path'])}]({link}{run['rec']['path']}) {meta['date'][:10]}; "
            f"A/A {aa:.3f} {state} ({c['rounds']} rounds); load {_load(c['loadavg_before'])} -> "
            f"{_load(c['loadavg_after'])}; {_flags(meta['cpu_flags'])}; "
            f"{meta['threads']['torch_intra_op']} threads")


def _cell(run, mode) -> str:
    r = run["paths"].get(mode)
    if r is None:
        return "-"
    sp = r["spread"]
    secs = f"{r['seconds']:.3f} s [{sp['min']:.3f}-{sp['max']:.3f}]"
    if r["ratio_vs_stock"] is None:
        return f"{secs}, ratio withheld"
    return f"**{r['ratio_vs_stock']:.2f}x** {secs}"


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(r) + " |" for r in rows])


# --------------------------------------------------------------------------- blocks
def speed_block(records, link="../") -> str:
    """Every controlled run: one table per part, preset and size; a column per CPU kind."""
    runs, kinds = speed_runs(records), _kinds(records)
    if not runs:
        return (f"No record with an A/A control yet: {NOT_MEASURED} on any kind ("
                + ", ".join(kinds) + "). Records without a control are listed below, seconds only.\n")
    lines = []
    order = list(PART_LABELS)
    for key in sorted(runs, key=lambda k: (order.index(k[0]) if k[0] in order else 9, k[1], k[2])):
        part, preset, (h, w) = key
        by_kind = runs[key]
        modes = list(dict.fromkeys(m for k in kinds if k in by_kind for m in by_kind[k]["paths"]))
        rows = [["conditions"] + [_conditions(by_kind[k], link) if k in by_kind else NOT_MEASURED for k in kinds]]
        rows += [[f"`{m}`"] + [_cell(by_kind[k], m) if k in by_kind else NOT_MEASURED for k in kinds] for m in modes]
        lines += [f"#### {PART_LABELS.get(part, part)}: {preset}, {h}x{w}", ""]
        lines += _table(["path"] + kinds, rows) + [""]
    return "\n".join(lines)


def _best(run, selector) -> str:
    paths = run["paths"]
    if callable(selector):
        cands = [m for m in paths if selector(m)]
    else:
        cands = [selector] if selector in paths else []
    if not cands:
        return NOT_MEASURED
    if not run["control"]["settled"]:
        return f"noisy run (A/A {run['control']['aa_ratio']:.3f}): withheld"
    m = max(cands, key=lambda k: paths[k]["ratio_vs_stock"])
    r = paths[m]
    return f"**{r['ratio_vs_stock']:.2f}x** ({m}, {r['seconds']:.2f} s)" if callable(selector) else \
        f"**{r['ratio_vs_stock']:.2f}x** ({r['seconds']:.2f} s)"


def summary_block(records, link="") -> str:
    """The README's short table: the headline paths at X-101-32x4d, 800x1333, per kind."""
    runs, kinds = speed_runs(records), _kinds(records)
    rows, used = [], {k: {} for k in kinds}
    for part, selector, label in SUMMARY:
        by_kind = runs.get((part, SUMMARY_PRESET, SUMMARY_IMAGE), {})
        rows.append([label] + [_best(by_kind[k], selector) if k in by_kind else NOT_MEASURED for k in kinds])
        for k in kinds:
            if k in by_kind:
                used[k][by_kind[k]["rec"]["path"]] = by_kind[k]
    cond = []
    for k in kinds:
        cond.append("; ".join(_conditions(r, link).split("; A/A")[0] + ", load " + _load(r["control"]["loadavg_before"])
                              + " -> " + _load(r["control"]["loadavg_after"]) + ", " + _flags(r["rec"]["data"]["meta"]["cpu_flags"])
                              for r in used[k].values()) or NOT_MEASURED)
    lines = [f"Ratios vs stock detectron2 (A/A-controlled; {SUMMARY_PRESET}, {SUMMARY_IMAGE[0]}x{SUMMARY_IMAGE[1]}, "
             f"batch 1, CPU, random weights):", ""]
    # a path no kind has a record for is named once below the table, not given a row of blanks
    unmeasured = [row[0] for row in rows if all(cell == NOT_MEASURED for cell in row[1:])]
    rows = [row for row in rows if row[0] not in unmeasured]
    lines += _table(["", *kinds], rows + [["record, load avg before -> after, CPU flags", *cond]])
    if unmeasured:
        lines += ["", f"Not measured on any kind yet: {'; '.join(unmeasured)}."]
    return "\n".join(lines) + "\n"


def _layouts_entry(rec) -> Optional[dict]:
    """The table entry of one ``train-layouts.json`` record (module docstring of ``fast.auto``)."""
    d = rec["data"]
    band_half = max(abs(AA_BAND[0] - 1), abs(AA_BAND[1] - 1))
    entry = {"record": rec["path"]}
    if "modes" in d:  # the layout timing from before the protocol: one stock, no control
        stock = d["modes"]["stock"]["times"]
        entry.update(preset=d["preset"], image=list(d["size"]), control="none", aa_ratio=None, noisy=False,
                     ratios={k: m["x_stock"] for k, m in d["modes"].items() if k in CANDIDATES and k != "stock"})
    elif d.get("aa_control") is True:
        c = next((c for c in d["controls"] if c["name"] == "train"), None)
        if c is None:
            return None
        paths = {r["mode"]: r for r in d["records"] if r["name"] == "train" and r["preset"] == c["preset"]}
        entry.update(preset=c["preset"], image=list(d["meta"]["image"]), control="aa", aa_ratio=round(c["aa_ratio"], 4),
                     noisy=not c["settled"], noise=band_half,
                     ratios={k: (round(r["ratio_vs_stock"], 4) if r["ratio_vs_stock"] else None)
                             for k, r in paths.items() if k in CANDIDATES and k != "stock"})
        return entry
    else:
        return None
    # no control: a candidate must beat stock by more than stock's own spread over its rounds
    entry["noise"] = round(max(band_half, (max(stock) - min(stock)) / sorted(stock)[len(stock) // 2]), 4)
    return entry


def layouts_table(records) -> dict:
    """The training ``auto`` rule's table from ``benchmarks/<kind>/train-layouts.json``."""
    kinds = {}
    for rec in records:
        if rec["path"].endswith("/train-layouts.json"):
            entry = _layouts_entry(rec)
            if entry is not None:
                kinds[rec["kind"]] = entry
    return {"about": "generated by `python tools/benchmark.py --render-readme` from "
                     "benchmarks/<kind>/train-layouts.json; read by resnext_det/engine/fast/auto.py; do not edit",
            "kinds": kinds}


def layouts_block(table, kinds) -> str:
    rows = []
    for k in kinds:
        e = table["kinds"].get(k)
        name, reason = table_choice(None, None, e, k)
        if e is None:
            rows.append([k, NOT_MEASURED, "-", f"`{name}`"])
            continue
        ctl = (f"A/A {e['aa_ratio']:.3f}" + (" noisy: ignored" if e["noisy"] else " settled") if e["control"] == "aa"
               else f"none: followed beyond stock's own spread ({100 * e['noise']:.0f}%), ratios not published")
        rows.append([k, f"[{e['record']}](../{e['record']}) ({e['preset']}, {e['image'][0]}x{e['image'][1]})", ctl,
                     f"`{name}`" + (f": {reason.split(' (')[0]}" if e["control"] == "aa" else "")])
    return "\n".join(_table(["CPU kind", "record", "A/A control", "`auto` picks"], rows)) + "\n"


def _demo_label(run) -> str:
    return f"`{run['command'].replace('python tools/train_net.py ', '')}`"


def _demos(records) -> Dict[str, dict]:
    return {r["kind"]: r for r in records if os.path.basename(r["path"]) == "demos.json"}


def demo_summary_block(records, link="") -> str:
    """The demos side by side: wall and box AP per kind."""
    demos, kinds = _demos(records), _kinds(records)
    labels = list(dict.fromkeys(_demo_label(run) for r in demos.values() for run in r["data"]["runs"]))
    rows = []
    for label in labels:
        row = [label]
        for k in kinds:
            run = next((x for x in demos[k]["data"]["runs"] if _demo_label(x) == label), None) if k in demos else None
            row.append(NOT_MEASURED if run is None else
                       f"{run['wall_s']:.0f} s, box AP **{run['box_AP']:.1f}** (AP50 {run['box_AP50']:.1f}), "
                       f"load {_load(run['loadavg_at_start'])} at start")
        rows.append(row)
    cond = [f"[{k}/demos.json]({link}{demos[k]['path']}) {demos[k]['data'].get('date', '')}; "
            f"{_flags(demos[k]['data'].get('cpu_flags'))}" if k in demos else NOT_MEASURED for k in kinds]
    return "\n".join(_table(["demo", *kinds], rows + [["record, CPU flags", *cond]])) + "\n"


_STAGE_KEYS = (("pretrain_top1_pct", "pretraining top-1 %.1f %%"), ("rpn_AR@100", "stage 1 AR@100 %.3f"),
               ("rpn_AR@1000", "AR@1000 %.3f"), ("rpn_recall@100_IoU0.5", "recall@100 IoU 0.5 %.3f"),
               ("rpn_recall@100_IoU0.7", "IoU 0.7 %.3f"), ("oracle_box_AP", "oracle (GT proposals) AP %.1f"),
               ("shuffled_proposals_box_AP", "control (another image's proposals) AP %.1f"))
_RUNTIME_AP = re.compile(r"^(onnxruntime|openvino)(_\w+?)?_box_AP$")


def demos_block(records, link="../") -> str:
    """Per kind: each demo run's wall, AP and stage figures; then the accuracy of every exported
    runtime / precision the record holds (``<runtime>[_<precision>]_box_AP``)."""
    demos, lines = _demos(records), []
    for k in _kinds(records):
        if k not in demos:
            lines += [f"**{k}**: {NOT_MEASURED}.", ""]
            continue
        d = demos[k]["data"]
        lines += [f"**{k}** ([{demos[k]['path']}]({link}{demos[k]['path']}), {d.get('date', '')}, "
                  f"{d.get('machine', '')}, {_flags(d.get('cpu_flags'))}):", ""]
        rows = []
        for run in d["runs"]:
            stages = "; ".join(fmt % run[key] for key, fmt in _STAGE_KEYS if key in run) or "-"
            rows.append([_demo_label(run), f"{run['wall_s']:.0f} s", _load(run["loadavg_at_start"]),
                         f"**{run['box_AP']:.2f}** ({run['box_AP50']:.1f} / {run['box_AP75']:.1f})", stages])
        lines += _table(["demo", "wall", "load at start", "box AP (AP50 / AP75)", "stage figures"], rows) + [""]
        acc_keys = list(dict.fromkeys(key for run in d["runs"] for key in run if _RUNTIME_AP.match(key)))
        if acc_keys:
            rows = [[_demo_label(run), f"{run['box_AP']:.2f}"]
                    + [f"{run[key]:.2f}" if key in run else "-" for key in acc_keys] for run in d["runs"]]
            lines += _table(["accuracy: demo", "eager AP"] + [f"`{key[:-len('_box_AP')]}` AP" for key in acc_keys],
                            rows) + [""]
    return "\n".join(lines)


def suite_block(records, link="") -> str:
    """The test suite's wall time per kind (``benchmarks/<kind>/suite.json``: one run, or a
    ``runs`` list of them, e.g. a fresh venv and fresh clones)."""
    suites = {r["kind"]: r for r in records if os.path.basename(r["path"]) == "suite.json"}
    rows = []
    for k in _kinds(records):
        if k not in suites:
            rows.append([k, NOT_MEASURED, "-", "-"])
            continue
        d = suites[k]["data"]
        for i, run in enumerate(d.get("runs") or [d]):
            m, s = divmod(round(run["wall_s"]), 60)
            note = f" ({run['note']})" if run.get("note") else ""
            rows.append([k if i == 0 else "", f"`{run['command']}`{note}: {run['tests']} tests, "
                         f"{run.get('failed', 0)} failed, {m} min {s:02d} s wall",
                         f"{_load(run['loadavg_at_start'])} -> {_load(run.get('loadavg_at_end'))}",
                         f"[suite.json]({link}{suites[k]['path']}) {d.get('date', '')}; {_flags(d.get('cpu_flags'))}"
                         if i == 0 else ""])
    return "\n".join(_table(["CPU kind", "test suite", "load avg", "record, CPU flags"], rows)) + "\n"


def unpublished_block(records, link="../") -> str:
    """Records without an A/A control: conditions and seconds, never ratios."""
    lines = []
    for rec in records:
        d = rec["data"]
        if d.get("aa_control") is not False:
            continue
        meta = d.get("meta") or {}
        load = meta.get("loadavg_at_start") or d.get("loadavg_at_start")
        lines += [f"- [{rec['path']}]({link}{rec['path']}) ({rec['kind']}; "
                  f"{meta.get('date') or d.get('date') or 'date not recorded'}; load at start {_load(load)}): "
                  f"{d.get('control_note', '')}"]
        secs = []
        if "records" in d:
            secs = [f"{r['name']} {r['preset']} {r['mode']} {r['seconds']:.3f} s" for r in d["records"]
                    if r.get("seconds") and r["name"] != "bf16_probe"]
        elif "modes" in d:
            secs = [f"train {d['preset']} {k} {m['s']:.3f} s" for k, m in d["modes"].items()]
        if secs:
            lines += ["  medians: " + "; ".join(secs)]
    return "\n".join(lines) + "\n" if lines else "None.\n"


def render_blocks(records) -> Dict[str, str]:
    """Every block's text by name (see the module docstring)."""
    table, kinds = layouts_table(records), _kinds(records)
    return {
        "speed-summary": summary_block(records, ""),
        "demo-summary": demo_summary_block(records, ""),
        "suite": suite_block(records, ""),
        "speed": speed_block(records, "../"),
        "train-layouts": layouts_block(table, kinds),
        "demos": demos_block(records, "../"),
        "suite-docs": suite_block(records, "../"),
        "unpublished": unpublished_block(records, "../"),
    }


def replace_blocks(text: str, blocks: Dict[str, str], where: str = "") -> str:
    """``text`` with each marked block's body replaced by ``blocks[name]``.

    Raises:
        KeyError: a marker names a block the renderer does not know (a typo would go unchecked).
    """
    def sub(m):
        name = m.group("name")
        if name not in blocks:
            raise KeyError(f"{where}: <!-- rendered:{name} --> is not a rendered block; known: {sorted(blocks)}")
        return m.group(1) + blocks[name] + m.group(4)
    return MARKER.sub(sub, text)


def render_all(root: str) -> Dict[str, str]:
    """Relative path -> rendered text, for README.md, docs/SPEED.md and the ``auto`` table.

    Args:
        root: the checkout (records under ``benchmarks/``).
    """
    records = load_records(root)
    blocks = render_blocks(records)
    out = {}
    for rel in FILES:
        path = os.path.join(root, rel)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                out[rel] = replace_blocks(f.read(), blocks, rel)
    out[TABLE] = json.dumps(layouts_table(records), indent=1) + "\n"
    return out


def write_rendered(root: str, rendered: Dict[str, str], check: bool = False) -> List[str]:
    """Write the files of :func:`render_all` that differ (none with ``check``); returns them.

    Args:
        root: the checkout.
        rendered: relative path -> text.
        check: only compare.
    """
    stale = []
    for rel, text in rendered.items():
        path = os.path.join(root, rel)
        old = open(path, encoding="utf-8").read() if os.path.exists(path) else None
        if old != text:
            stale.append(rel)
            if not check:
                with atomic_open(path, "w", encoding="utf-8") as f:
                    f.write(text)
    return stale
