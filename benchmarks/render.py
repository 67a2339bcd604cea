"""README.md's and docs/SPEED.md's speed, accuracy, demo and suite figures, and the package's
measured-choice tables (:mod:`benchmarks.choices`), rendered from the records in
``benchmarks/<kind>/*.json`` (one envelope, ``benchmarks/schema.json``) -- the only place a
figure may come from.

    python -m benchmarks.render            # write README.md, docs/SPEED.md and both choice tables
    python -m benchmarks.render --check    # write nothing; exit 1 when a file differs from its records

A file holds rendered blocks between ``<!-- rendered:NAME -->`` and ``<!-- /rendered -->``;
:func:`render_all` re-renders every block of README.md and docs/SPEED.md and the tables
``resnext_det/engine/fast/measured_layouts.json`` and ``resnext_det/deploy/measured_runtimes.json``;
a test compares them with the files, so a figure that disagrees with its record fails. Rules:

- A ratio is shown only from a ``benchmark`` record with an A/A control (``aa_control: true``)
  whose part settled; a noisy part shows its seconds and "ratio withheld"; a record without a
  control (measured before the protocol) shows seconds only, in its own section; records made
  with ``--opts`` (a modified network) are never shown.
- Both CPU kinds side by side (:data:`SHOWN_KINDS`, plus any other kind with records of the
  table's sort); "not measured" where a kind has no record; under every table, per kind, its
  record, the load average at the start and end of the part, the CPU flags and threads.
- A speed table is one part, preset and size of one record name (``inference.json``,
  ``deploy-fpn-...json``): records of the same name on different kinds sit side by side. The
  README summary takes, per row, the newest record holding one of the row's paths.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from typing import Dict, List

from tabulate import tabulate

from resnext_det.apps.benchmark.protocol import STOCK_A, STOCK_B
from resnext_det.deploy.modes import DEPLOY_MODES, mode_precision
from resnext_det.engine.fast.auto import CANDIDATES, table_choice
from resnext_det.hardware import CPU_KINDS
from resnext_det.io import atomic_open

from .choices import layouts_table, render_choice_tables

__all__ = ["SHOWN_KINDS", "load_records", "render_blocks", "render_all", "write_rendered", "replace_blocks", "main"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the kinds every table shows as columns (the two the project is measured on), measured or not
SHOWN_KINDS = ("avx2", "avx512_bf16")
NOT_MEASURED = "not measured"
MARKER = re.compile(r"(<!-- rendered:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /rendered -->)", re.S)
FILES = ("README.md", "docs/SPEED.md")
PART_LABELS = {"backbone": "backbone (bottom-up, FrozenBN)", "fpn": "FPN detector, one image",
               "c4": "C4 detector, one image", "train": "training iteration (fwd + bwd + SGD step, batch 1)",
               "onnxruntime-spinning": "ONNX Runtime thread spinning, one image",
               "openvino-shapes": "OpenVINO static vs dynamic shapes, one image"}
#: the README summary: (part, path selector, label) at :data:`SUMMARY_PRESET`, :data:`SUMMARY_IMAGE`
SUMMARY_PRESET, SUMMARY_IMAGE = "X-101-32x4d", (800, 1333)


def _is_runtime_fp32(mode: str) -> bool:
    """A wrapped runtime mode on the fp32 export, computing in fp32 (never a bare ``-raw`` call)."""
    return DEPLOY_MODES.get(mode, ("",))[0] == "fp32" and mode_precision(mode) == "fp32"


def _is_runtime_int8(mode: str) -> bool:
    """A wrapped runtime mode on the int8 export."""
    return DEPLOY_MODES.get(mode, ("",))[0] == "int8"


SUMMARY = (
    ("backbone", "fast", "backbone, torch fast path (fp32)"),
    ("backbone", _is_runtime_fp32, "backbone, best runtime (fp32)"),
    ("fpn", "fast", "FPN detector, torch fast path (fp32)"),
    ("fpn", _is_runtime_fp32, "FPN detector, `DeployedPredictor`, best runtime (fp32)"),
    ("fpn", _is_runtime_int8, "FPN detector, `DeployedPredictor`, int8 (calibrated on random images: speed only)"),
    ("c4", "fast", "C4 detector, torch fast path (fp32)"),
    ("c4", _is_runtime_fp32, "C4 detector, `DeployedPredictor`, best runtime (fp32)"),
    ("c4", _is_runtime_int8, "C4 detector, `DeployedPredictor`, int8 (calibrated on random images: speed only)"),
    ("train", lambda m: m in CANDIDATES, "training iteration, fastest layout"),
)


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    return tabulate(rows, header, tablefmt="github", disable_numparse=True).splitlines()


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
    """:data:`SHOWN_KINDS`, then the other kinds ``records`` (one table's sort) come from."""
    present = {r["kind"] for r in records}
    return list(SHOWN_KINDS) + [k for k in CPU_KINDS if k in present and k not in SHOWN_KINDS]


def _flags(env) -> str:
    flags = env.get("cpu_flags")
    return "flags not recorded" if flags is None else " ".join(flags) or "no AVX2"


def _load(v) -> str:
    return "-" if not v else f"{v[0]:.2f}"


def _bench(rec) -> bool:
    d = rec["data"]
    return (d["type"] == "benchmark" and d["results"]["aa_control"]
            and not d["results"]["settings"].get("opts"))


def speed_runs(records) -> Dict[tuple, Dict[str, dict]]:
    """(part, preset, (h, w), record name) -> kind -> the run: ``{"rec", "control", "paths"}``."""
    out: Dict[tuple, Dict[str, dict]] = {}
    for rec in records:
        if not _bench(rec):
            continue
        res = rec["data"]["results"]
        for c in res["controls"]:
            key = (c["name"], c["preset"], tuple(res["settings"]["image"]), os.path.basename(rec["path"]))
            paths = {r["mode"]: r for r in res["paths"] if (r["name"], r["preset"]) == key[:2]}
            out.setdefault(key, {})[rec["kind"]] = {"rec": rec, "control": c, "paths": paths}
    return out


def _conditions(run, link: str) -> str:
    d, c = run["rec"]["data"], run["control"]
    pair = "" if tuple(c["aa_pair"]) == (STOCK_A, STOCK_B) else f" ({c['aa_pair'][1]} / {c['aa_pair'][0]})"
    state = "settled" if c["settled"] else "**noisy: ratios withheld**"
    basis = d["results"]["settings"].get("ratio_basis")
    threads = (d["environment"].get("threads") or {}).get("torch_intra_op") or d["results"]["settings"].get("threads")
    return (f"[{os.path.basename(run['rec']['path'])}]({link}{run['rec']['path']}) {d['date'][:10]}; "
            f"A/A{pair} {c['aa_ratio']:.3f} {state} ({c['rounds']} rounds); load at start "
            f"{_load(c['loadavg_at_start'])} -> end {_load(c['loadavg_at_end'])}; {_flags(d['environment'])}; "
            f"{threads} threads" + (f"; ratios vs {basis}" if basis else ""))


def _cell(run, mode) -> str:
    r = run["paths"].get(mode)
    if r is None:
        return "-"
    secs = f"{r['seconds']:.3f} s"
    if r.get("spread"):
        secs += f" [{r['spread']['min']:.3f}-{r['spread']['max']:.3f}]"
    if r["ratio"] is None:
        return f"{secs}, ratio withheld"
    return f"**{r['ratio']:.2f}x** {secs}"


# --------------------------------------------------------------------------- blocks
def speed_block(records, link="../") -> str:
    """Every controlled run: one table per part, preset, size and record name; a column per kind."""
    runs, kinds = speed_runs(records), _kinds([r for r in records if _bench(r)])
    if not runs:
        return (f"No record with an A/A control yet: {NOT_MEASURED} on any kind ("
                + ", ".join(kinds) + "). Records without a control are listed below, seconds only.\n")
    lines = []
    order = list(PART_LABELS)
    for key in sorted(runs, key=lambda k: (order.index(k[0]) if k[0] in order else 99, k[1], k[2], k[3])):
        part, preset, (h, w), name = key
        by_kind = runs[key]
        modes = list(dict.fromkeys(m for k in kinds if k in by_kind for m in by_kind[k]["paths"]))
        rows = [[f"`{m}`"] + [_cell(by_kind[k], m) if k in by_kind else NOT_MEASURED for k in kinds] for m in modes]
        lines += [f"#### {PART_LABELS.get(part, part)}: {preset}, {h}x{w} (`{name}`)", ""]
        lines += _table(["path"] + kinds, rows) + [""]
        lines += [f"- {k}: {_conditions(by_kind[k], link)}" for k in kinds if k in by_kind] + [""]
    return "\n".join(lines)


def _candidates(run, selector) -> List[str]:
    if callable(selector):
        return [m for m in run["paths"] if selector(m)]
    return [selector] if selector in run["paths"] else []


def _best(run, selector) -> str:
    cands, paths = _candidates(run, selector), run["paths"]
    if not run["control"]["settled"]:
        return f"noisy run (A/A {run['control']['aa_ratio']:.3f}): withheld"
    m = max(cands, key=lambda k: paths[k]["ratio"])
    r = paths[m]
    return f"**{r['ratio']:.2f}x** ({m}, {r['seconds']:.2f} s)" if callable(selector) else \
        f"**{r['ratio']:.2f}x** ({r['seconds']:.2f} s)"


def summary_block(records, link="") -> str:
    """The README's short table: the headline paths at X-101-32x4d, 800x1333, per kind; each row
    from the newest record of the kind that holds one of its paths."""
    runs, kinds = speed_runs(records), _kinds([r for r in records if _bench(r)])
    rows, used = [], {k: {} for k in kinds}
    for part, selector, label in SUMMARY:
        row = [label]
        for k in kinds:
            held = [by_kind[k] for key, by_kind in runs.items()
                    if key[:3] == (part, SUMMARY_PRESET, SUMMARY_IMAGE) and k in by_kind
                    and _candidates(by_kind[k], selector)]
            if not held:
                row.append(NOT_MEASURED)
                continue
            run = max(held, key=lambda r: r["rec"]["data"]["date"])
            row.append(_best(run, selector))
            used[k][(run["rec"]["path"], part)] = run
        rows.append(row)
    lines = [f"Ratios vs stock detectron2 (A/A-controlled; {SUMMARY_PRESET}, {SUMMARY_IMAGE[0]}x{SUMMARY_IMAGE[1]}, "
             f"batch 1, CPU, random weights):", ""]
    # a path no kind has a record for is named once below the table, not given a row of blanks
    unmeasured = [row[0] for row in rows if all(cell == NOT_MEASURED for cell in row[1:])]
    rows = [row for row in rows if row[0] not in unmeasured]
    lines += _table(["", *kinds], rows) + ["", "Records (part, load average at the part's start -> end, CPU flags):"]
    for k in kinds:
        lines.append(f"- {k}: " + ("; ".join(
            f"[{os.path.basename(r['rec']['path'])}]({link}{r['rec']['path']}) {part} "
            f"{r['rec']['data']['date'][:10]}, load {_load(r['control']['loadavg_at_start'])} -> "
            f"{_load(r['control']['loadavg_at_end'])}, {_flags(r['rec']['data']['environment'])}"
            for (_, part), r in used[k].items()) or NOT_MEASURED))
    if unmeasured:
        lines += ["", f"Not measured on any kind yet: {'; '.join(unmeasured)}."]
    return "\n".join(lines) + "\n"


def layouts_block(table, kinds) -> str:
    rows = []
    for k in kinds:
        e = table["kinds"].get(k)
        name, reason = table_choice(None, None, e, k)
        if e is None:
            rows.append([k, NOT_MEASURED, "-", f"`{name}`"])
            continue
        ctl = f"A/A {e['aa_ratio']:.3f}" + (" noisy: ignored" if e["noisy"] else " settled")
        rows.append([k, f"[{e['record']}](../{e['record']}) ({e['preset']}, {e['image'][0]}x{e['image'][1]})", ctl,
                     f"`{name}`: {reason.split(' (')[0]}"])
    return "\n".join(_table(["CPU kind", "record", "A/A control", "`auto` picks"], rows)) + "\n"


def _demo_label(run) -> str:
    return f"`{run['command'].replace('python tools/train_net.py ', '')}`"


def _demos(records) -> Dict[str, dict]:
    return {r["kind"]: r for r in records if os.path.basename(r["path"]) == "demos.json"}


def demo_summary_block(records, link="") -> str:
    """The demos side by side: wall and box AP per kind."""
    demos = _demos(records)
    kinds = _kinds(demos.values())
    labels = list(dict.fromkeys(_demo_label(run) for r in demos.values() for run in r["data"]["results"]["runs"]))
    rows = []
    for label in labels:
        row = [label]
        for k in kinds:
            run = next((x for x in demos[k]["data"]["results"]["runs"] if _demo_label(x) == label), None) \
                if k in demos else None
            row.append(NOT_MEASURED if run is None else
                       f"{run['wall_s']:.0f} s, box AP **{run['box_AP']:.1f}** (AP50 {run['box_AP50']:.1f}), "
                       f"load {_load(run['loadavg_at_start'])} at start")
        rows.append(row)
    cond = [f"[{k}/demos.json]({link}{demos[k]['path']}) {demos[k]['data']['date']}; "
            f"{_flags(demos[k]['data']['environment'])}" if k in demos else NOT_MEASURED for k in kinds]
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
    for k in _kinds(demos.values()):
        if k not in demos:
            lines += [f"**{k}**: {NOT_MEASURED}.", ""]
            continue
        d = demos[k]["data"]
        env, runs = d["environment"], d["results"]["runs"]
        torch_version = env["versions"].get("torch")
        lines += [f"**{k}** ([{demos[k]['path']}]({link}{demos[k]['path']}), {d['date']}, {env['cpu_model']}"
                  + (f", torch {torch_version}" if torch_version else "") + f", {_flags(env)}):", ""]
        rows = []
        for run in runs:
            stages = "; ".join(fmt % run[key] for key, fmt in _STAGE_KEYS if key in run) or "-"
            rows.append([_demo_label(run), f"{run['wall_s']:.0f} s", _load(run["loadavg_at_start"]),
                         f"**{run['box_AP']:.2f}** ({run['box_AP50']:.1f} / {run['box_AP75']:.1f})", stages])
        lines += _table(["demo", "wall", "load at start", "box AP (AP50 / AP75)", "stage figures"], rows) + [""]
        acc_keys = list(dict.fromkeys(key for run in runs for key in run if _RUNTIME_AP.match(key)))
        if acc_keys:
            rows = [[_demo_label(run), f"{run['box_AP']:.2f}"]
                    + [f"{run[key]:.2f}" if key in run else "-" for key in acc_keys] for run in runs]
            lines += _table(["accuracy: demo", "eager AP"] + [f"`{key[:-len('_box_AP')]}` AP" for key in acc_keys],
                            rows) + [""]
    return "\n".join(lines)


def _min_s(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s"


def suite_block(records, link="") -> str:
    """The test suite's wall time (and pytest's own, where recorded) per kind
    (``benchmarks/<kind>/suite.json``: its ``runs``, e.g. a fresh venv and fresh clones)."""
    suites = {r["kind"]: r for r in records if os.path.basename(r["path"]) == "suite.json"}
    rows = []
    for k in _kinds(suites.values()):
        if k not in suites:
            rows.append([k, NOT_MEASURED, "-", "-"])
            continue
        d = suites[k]["data"]
        for i, run in enumerate(d["results"]["runs"]):
            note = f" ({run['note']})" if run.get("note") else ""
            pytest_s = f", pytest {_min_s(run['pytest_s'])}" if run.get("pytest_s") else ""
            rows.append([k if i == 0 else "", f"`{run['command']}`{note}: {run['tests']} tests, "
                         f"{run['failed']} failed, {_min_s(run['wall_s'])} wall{pytest_s}",
                         f"{_load(run['loadavg_at_start'])} -> {_load(run['loadavg_at_end'])}",
                         f"[suite.json]({link}{suites[k]['path']}) {d['date']}; {_flags(d['environment'])}"
                         if i == 0 else ""])
    return "\n".join(_table(["CPU kind", "test suite", "load avg at start -> end", "record, CPU flags"], rows)) + "\n"


def unpublished_block(records, link="../") -> str:
    """``benchmark`` records without an A/A control: conditions and seconds, never ratios."""
    lines = []
    for rec in records:
        d = rec["data"]
        if d["type"] != "benchmark" or d["results"]["aa_control"]:
            continue
        lines += [f"- [{rec['path']}]({link}{rec['path']}) ({rec['kind']}; {d['date'] or 'date not recorded'}; "
                  f"load at start {_load(d['environment']['loadavg_at_start'])}; {_flags(d['environment'])}): "
                  f"{d['results']['control_note']}"]
        secs = [f"{r['name']} {r['preset']} {r['mode']} {r['seconds']:.3f} s" for r in d["results"]["paths"]
                if r["name"] != "bf16_probe"]
        if secs:
            lines += ["  medians: " + "; ".join(secs)]
    return "\n".join(lines) + "\n" if lines else "None.\n"


def render_blocks(records) -> Dict[str, str]:
    """Every block's text by name (see the module docstring)."""
    table = layouts_table(records)
    kinds = _kinds([r for r in records if r["kind"] in table["kinds"]])
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


def render_all(root: str = ROOT) -> Dict[str, str]:
    """Relative path -> rendered text, for README.md, docs/SPEED.md and the choice tables.

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
    out.update(render_choice_tables(records))
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


def main(argv=None) -> int:
    """``python -m benchmarks.render [--check] [--root DIR]``: 0, or 1 when ``--check`` finds a
    file that differs from its records."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.render", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file differs from its records")
    ap.add_argument("--root", default=ROOT, help="the checkout (default: this one)")
    args = ap.parse_args(argv)
    stale = write_rendered(args.root, render_all(args.root), check=args.check)
    for path in stale:
        print(("differs from its records: " if args.check else "rendered: ") + path)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
