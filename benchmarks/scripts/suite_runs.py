"""The test suite's wall time on this machine (benchmarks/<kind>/suite.json, a ``suite`` record
of benchmarks/schema.json). Development tool, not part of the package.

    python benchmarks/scripts/suite_runs.py --runs 3 --out benchmarks/avx512_bf16/suite.json

Each run clones the checkout's HEAD into a fresh folder and runs ``bash .ci/run`` there (the
README's test command), started once the 1-minute load average is below 1 (or after 10 minutes
of waiting, which the run then says). Files per run: commit, tests passed / failed, pytest's own
seconds, wall seconds, load averages at start and end, and the ten slowest tests. The record's
earlier runs are kept under ``results.previous_records``.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demos import wait_idle  # noqa: E402


def summary_line(text):
    """pytest's last summary line ("N passed, ... in S s"), or None."""
    last = [line for line in text.splitlines() if re.search(r"(passed|failed).* in [\d.]+s", line)]
    return last[-1] if last else None


def summary(text):
    """(passed, failed, pytest seconds) from pytest's last line."""
    line = summary_line(text)
    if line is None:
        return 0, 0, None
    count = lambda word: int(m.group(1)) if (m := re.search(rf"(\d+) {word}", line)) else 0  # noqa: E731
    return count("passed"), count("failed") + count("error"), float(re.search(r" in ([\d.]+)s", line).group(1))


def slowest(text, n=10):
    rows = re.findall(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)", text, flags=re.M)
    return [{"s": float(s), "when": when, "test": test} for s, when, test in rows[:n]]


def one_run(work):
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    clone = os.path.join(work, f"clone_{commit}_{int(time.time())}")
    subprocess.run(["git", "clone", "-q", ROOT, clone], check=True)
    idle = wait_idle()
    load0 = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()
    r = subprocess.run(["bash", ".ci/run"], cwd=clone, capture_output=True, text=True)
    wall = time.perf_counter() - start
    passed, failed, pytest_s = summary(r.stdout)
    with open(os.path.join(work, f"{commit}_{int(time.time())}.log"), "w") as f:
        f.write(r.stdout + r.stderr)
    return {"command": "bash .ci/run (= bash tools/install.sh --test)", "commit": commit,
            "note": "fresh clone, packages present", "idle_at_start": idle, "exit_status": r.returncode,
            "tests": passed + failed, "failed": failed, "wall_s": round(wall, 1), "pytest_s": pytest_s,
            "loadavg_at_start": load0, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            "slowest": slowest(r.stdout)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--note", default="")
    a = ap.parse_args()
    sys.path.insert(0, ROOT)
    from resnext_det.apps.benchmark.protocol import environment, write_record

    env = environment()
    work = tempfile.mkdtemp(prefix="suite_runs_")
    runs = []
    for _ in range(a.runs):
        runs.append(one_run(work))
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "slowest"}), flush=True)
    earlier = []
    if os.path.isfile(a.out):
        with open(a.out) as f:
            old = json.load(f)
        earlier = old["results"].get("previous_records", [])
        earlier.insert(0, {"date": old["date"], "commit": old.get("commit"), "note": old["results"].get("note", ""),
                           "runs": old["results"]["runs"]})
    results = {"runs": runs, "note": a.note or "pytest -n auto --dist loadgroup (2 workers); fresh clones of "
               "HEAD in sequence, packages present, `bash .ci/run`", "previous_records": earlier}
    write_record(a.out, "suite", results, env, "the test suite's wall time (pytest -n auto: every core)",
                 command="python benchmarks/scripts/suite_runs.py", commit=runs[-1]["commit"])
    print(f"logs in {work}")


if __name__ == "__main__":
    main()
