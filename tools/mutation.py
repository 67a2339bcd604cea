#!/usr/bin/env python3
"""Mutation testing of the core modules (mutmut), one module at a time, kept as a record.

Each module is mutated in a scratch copy of the working tree (``--workdir``, never the checkout
itself: mutmut writes its ``mutants/`` folder beside the code it mutates), and only the fast
unit tests that cover it run against each mutant (``MODULE_TESTS`` below: no end-to-end
training, no export). The result goes to ``benchmarks/<kind>/mutation.json``: per module the
killed, survived, timed-out and equivalent mutants (each equivalent one with its reason, from
``tools/mutation_equivalents.json``), the score, the wall time and the load average at its
start, under ``--phase``, in the one record envelope (``benchmarks/schema.json``, type
``mutation``, written by ``protocol.write_record``: the machine is its ``environment``) (``before``: the tests as they were; ``after``:
once the holes were closed). Not part of the test suite: it takes minutes per module.

    nice -n 19 python tools/mutation.py --phase after                       # every module
    nice -n 19 python tools/mutation.py --phase after deploy/contract.py    # some modules

Score = (killed + timeout) / (mutants - equivalent). A mutant no selected test runs ("no
tests") counts as survived. Needs the ``test`` extra (``pip install -e .[test]``: mutmut).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from resnext_det.apps.benchmark.protocol import environment, write_record  # noqa: E402

#: module (relative to resnext_det/) -> the fast unit tests that cover it
MODULE_TESTS = {
    "weights/sources.py": ["tests/weights/test_sources_unit.py", "tests/weights/test_names.py",
                           "tests/weights/test_weights.py"],
    "weights/safe_io.py": ["tests/weights/test_safe_io_unit.py"],
    "data/sampler.py": ["tests/data/test_sampler.py"],
    "data/proposals.py": ["tests/data/test_proposals.py"],
    "modeling/blocks.py": ["tests/modeling/test_blocks.py"],
    "config.py": ["tests/test_config.py"],
    "deploy/contract.py": ["tests/deploy/test_contract_unit.py"],
    "deploy/predictor.py": ["tests/deploy/test_predictor_unit.py"],
    "deploy/runtimes.py": ["tests/deploy/test_runtimes_unit.py"],
}
EQUIVALENTS = ROOT / "tools" / "mutation_equivalents.json"
COMMAND = "nice -n 19 python tools/mutation.py --phase PHASE [MODULE ...]"
WHAT = ("mutation testing of the core modules (killed, surviving and equivalent mutants per module, "
        "before and after new tests)")
SCORE = "(killed + timeout) / (mutants - equivalent); 'no tests' counts as survived"


def _git(*args) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _prepare(workdir: Path, module: str, tests) -> None:
    """A scratch copy of the package, configs and tests with mutmut's config for ``module``."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "mutants")
    for name in ("resnext_det", "tests", "configs"):
        shutil.copytree(ROOT / name, workdir / name, ignore=ignore)
    shutil.copy2(ROOT / "pytest.ini", workdir / "pytest.ini")
    lines = ["[mutmut]", "source_paths = resnext_det", f"only_mutate = resnext_det/{module}",
             "also_copy =", "    configs", "    pytest.ini",
             "pytest_add_cli_args_test_selection ="] + [f"    {t}" for t in tests] + [
             # no:unraisableexception: its gc.collect() passes over torch's heap take 1.9 of the
             # 2 s of every run (measured); the mutants' tests take milliseconds
             "pytest_add_cli_args ="] + [f"    {a}" for a in (
                 "-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:unraisableexception",
                 "-p", "no:threadexception",
                 # one folder, emptied by each run: a forked run never cleans the numbered
                 # /tmp/pytest-of-USER/pytest-N it would make (measured: 70 GB for weights/sources.py)
                 f"--basetemp={workdir / 'pytest-tmp'}")] + [
             # torch is not fork-safe once its thread pools ran: fork workers from a clean server
             "process_isolation = forkserver", "use_git_change_detection = false",
             "timeout_multiplier = 10.0", "timeout_constant = 5.0", ""]
    (workdir / "setup.cfg").write_text("\n".join(lines))


def _results(workdir: Path, module: str):
    """(status by mutant name, diff by mutant name for those not killed) from mutmut's files."""
    from mutmut.configuration import reset_config
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    path = f"resnext_det/{module}"
    meta = json.loads((workdir / "mutants" / (path + ".meta")).read_text())
    status = {k: status_by_exit_code[v] for k, v in meta["exit_code_by_key"].items()}
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        reset_config()
        diffs = {k: "\n".join(get_diff_for_mutant(k, path=path).splitlines()[2:])
                 for k, s in status.items() if s not in ("killed", "timeout")}
    finally:
        os.chdir(cwd)
    return status, diffs


def _mutant_names(workdir: Path, module: str):
    meta = workdir / "mutants" / "resnext_det" / (module + ".meta")
    return sorted(json.loads(meta.read_text())["exit_code_by_key"])


def _read_results(out: Path) -> dict:
    """The ``results`` of the record at ``out`` ({} when there is none yet)."""
    return json.loads(out.read_text())["results"] if out.exists() else {}


def write_mutation_record(out: Path, module: str, phase: str, res: dict, env: dict) -> dict:
    """Put ``module``'s ``phase`` result into the record at ``out`` (keeping its other modules,
    phases and note) and write it through :func:`protocol.write_record` (type ``mutation``).

    Args:
        out: ``benchmarks/<kind>/mutation.json``.
        module: a key of :data:`MODULE_TESTS`.
        phase: "before" or "after".
        res: :func:`run_module`'s result, with its ``commit``, ``dirty`` and ``date``.
        env: :func:`protocol.environment`, taken when the campaign started.

    Returns:
        the record written.
    """
    results = _read_results(out)
    modules = results.get("modules", {})
    modules.setdefault(module, {})[phase] = res
    results.update(score=SCORE, modules=modules)
    return write_record(str(out), "mutation", results, env, what=WHAT, command=COMMAND,
                        commit=_git("rev-parse", "--short", "HEAD") or None)


def run_module(module: str, workdir: Path, equivalents: dict, previous=None, tests=None, sample=0) -> dict:
    """Mutate ``module`` and score it; with ``previous`` (a record entry), score the results
    already in ``workdir`` again (new equivalence reasons) without running anything."""
    tests = [t for t in (tests or MODULE_TESTS[module]) if (ROOT / t).exists()]
    if not tests:  # mutmut would run every test under tests/: record the gap instead
        return {"tests": [], "not_measured": f"none of {MODULE_TESTS[module]} exists: no fast unit test covers it"}
    if previous is not None:
        tests, load, wall = previous["tests"], previous["loadavg_at_start"], previous["wall_s"]
    else:
        _prepare(workdir, module, tests)
        load = [round(x, 2) for x in os.getloadavg()]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
        t0 = time.perf_counter()
        log = workdir / "mutmut.log"
        names = []
        if sample:  # generate every mutant and the test map (a glob that names none), then run a seeded sample
            with open(log, "w") as f:
                subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", "1", "zzz-none*"],
                               cwd=workdir, env=env, stdout=f, stderr=subprocess.STDOUT)
            import random

            everyone = _mutant_names(workdir, module)
            names = sorted(random.Random(0).sample(everyone, min(sample, len(everyone))))
        with open(log, "a") as f:
            rc = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", "1", *names], cwd=workdir,
                                env=env, stdout=f, stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - t0
        if rc != 0:
            raise SystemExit(f"mutmut run failed for {module} (exit {rc}); see {log}:\n"
                             + log.read_text()[-3000:])
    status, diffs = _results(workdir, module)
    total = len(status)
    if sample or (previous or {}).get("sampled_of"):
        status = {k: v for k, v in status.items() if v != "not checked"}  # the sample's mutants only
    equivalent, stale = {}, []
    for name, entry in equivalents.get(module, {}).items():
        if name not in status:
            stale.append(name)
        elif status[name] in ("killed", "timeout"):
            stale.append(name)  # a test kills it now: not equivalent after all
        elif diffs.get(name) != entry["diff"]:
            stale.append(name)  # the mutant of that name changed with the code
        else:
            equivalent[name] = entry["reason"]
    count = {s: sum(1 for v in status.values() if v == s)
             for s in ("killed", "timeout", "survived", "no tests", "suspicious", "segfault", "skipped")}
    survived = sorted(k for k, s in status.items() if s not in ("killed", "timeout") and k not in equivalent)
    live = len(status) - len(equivalent)
    score = (count["killed"] + count["timeout"]) / live if live else 1.0
    return {
        "tests": tests,
        **({"sampled_of": total, "sample_seed": 0} if len(status) < total else {}),
        "mutants": len(status),
        "killed": count["killed"],
        "timeout": count["timeout"],
        "survived": len(survived),
        "not_run_no_test_covers": count["no tests"],
        "other": {k: count[k] for k in ("suspicious", "segfault", "skipped") if count[k]},
        "equivalent": len(equivalent),
        "score": round(score, 4),
        "survivors": {k: diffs[k] for k in survived},
        "equivalents": {k: {"reason": equivalent[k], "diff": diffs[k]} for k in sorted(equivalent)},
        "stale_equivalents": stale,
        "wall_s": round(wall, 1),
        "loadavg_at_start": load,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("modules", nargs="*", metavar="MODULE",
                   help=f"modules relative to resnext_det/ (default: all of {', '.join(MODULE_TESTS)})")
    p.add_argument("--phase", choices=("before", "after"), default="after",
                   help="which score this run is: before or after the holes were closed")
    p.add_argument("--workdir", default="/tmp/resnext_det_mutation", help="scratch folder (replaced)")
    p.add_argument("--output", default=None, help="record (default benchmarks/<kind>/mutation.json)")
    p.add_argument("--tests", nargs="+", default=None, metavar="TEST_FILE",
                   help="run these test files instead of MODULE_TESTS (e.g. a 'before' score with the "
                        "tests as they were)")
    p.add_argument("--sample", type=int, default=0, metavar="N",
                   help="run a seeded random sample of N mutants per module instead of all (a quick score)")
    p.add_argument("--rescore", action="store_true",
                   help="run nothing: score the last run's results in --workdir again (after adding "
                        "equivalence reasons); keeps its wall time and load")
    args = p.parse_args(argv)
    modules = args.modules or list(MODULE_TESTS)
    unknown = [m for m in modules if m not in MODULE_TESTS]
    if unknown:
        p.error(f"unknown module(s) {unknown}; known: {', '.join(MODULE_TESTS)}")
    equivalents = json.loads(EQUIVALENTS.read_text()) if EQUIVALENTS.exists() else {}
    env = environment()
    out = Path(args.output) if args.output else ROOT / "benchmarks" / env["cpu_kind"] / "mutation.json"
    import mutmut

    env["versions"]["mutmut"] = mutmut.__version__
    for module in modules:
        print(f"[mutation] {module}: {args.tests or MODULE_TESTS[module]}", flush=True)
        modules_so_far = _read_results(out).get("modules", {})
        previous = modules_so_far.get(module, {}).get(args.phase) if args.rescore else None
        if args.rescore and not previous:
            p.error(f"--rescore: no {args.phase} result of {module} in {out}")
        res = run_module(module, Path(args.workdir) / module.replace("/", "_").replace(".py", ""), equivalents,
                         previous, args.tests, args.sample)
        if previous is not None:
            res.update({k: previous[k] for k in ("commit", "dirty", "date") if k in previous})
        else:
            res.update(commit=_git("rev-parse", "--short", "HEAD"),
                       dirty=bool(_git("status", "--porcelain", "--", "resnext_det", "tests")),
                       date=datetime.date.today().isoformat())
        write_mutation_record(out, module, args.phase, res, env)
        if "not_measured" in res:
            print(f"[mutation] {module}: not measured: {res['not_measured']}", flush=True)
            continue
        print(f"[mutation] {module}: {res['killed'] + res['timeout']}/{res['mutants'] - res['equivalent']} killed "
              f"(score {res['score']:.1%}; {res['survived']} survived, {res['equivalent']} equivalent, "
              f"{res['timeout']} timeouts) in {res['wall_s']:.0f} s", flush=True)
        if res["stale_equivalents"]:
            print(f"[mutation] {module}: stale equivalence reasons: {res['stale_equivalents']}", flush=True)
    print(f"[mutation] record: {out}")


if __name__ == "__main__":
    main()
