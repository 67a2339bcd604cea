"""Where the suite's CPU time goes (benchmarks/<kind>/suite-profile.json, a ``check`` record of
benchmarks/schema.json): the cost of one process start that imports the package's command line
(``import-cost``: CPU seconds of ``python -c "import resnext_det.cli"``, 5 fresh processes), and
the suite run in this checkout two ways, alternately, each started at a 1-minute load below 1:
pytest's wall seconds and the CPU seconds of everything it ran. ``--vary pin``: its xdist workers
pinned to their cores (tests/conftest.py) and unpinned (``RESNEXT_DET_TEST_PIN=0``); ``--vary
telemetry``: OpenVINO's and NNCF's telemetry off (the suite's default, ``CI=true``) and on
(``CI=false``). Development tool.

    python benchmarks/scripts/suite_profile.py --rounds 1 --out benchmarks/avx512_bf16/suite-profile.json
    python benchmarks/scripts/suite_profile.py --vary telemetry --out benchmarks/avx512_bf16/suite-telemetry.json
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demos import wait_idle  # noqa: E402
from suite_runs import summary_line  # noqa: E402


# --vary: (the run's key in the record, its value, the environment it sets), the suite's default first
VARIANTS = {"pin": [("pinned", True, {"RESNEXT_DET_TEST_PIN": "1"}), ("pinned", False, {"RESNEXT_DET_TEST_PIN": "0"})],
            "telemetry": [("telemetry", False, {"CI": "true"}), ("telemetry", True, {"CI": "false"})]}
WHAT = {"pin": "with its workers pinned to their cores and unpinned (RESNEXT_DET_TEST_PIN=0)",
        "telemetry": "with OpenVINO's and NNCF's telemetry off (CI=true, the suite's default) and on (CI=false)"}


def _children_cpu():
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--vary", choices=sorted(VARIANTS), default="pin")
    args = ap.parse_args(argv)
    from resnext_det.apps.benchmark.protocol import environment, write_record

    wait_idle()
    env = environment()
    imports = []
    for _ in range(5):
        before = _children_cpu()
        subprocess.run([sys.executable, "-W", "ignore", "-c", "import resnext_det.cli"], check=True, cwd="/")
        imports.append(round(_children_cpu() - before, 3))
    runs = []
    for r in range(args.rounds):
        for key, value, variant_env in VARIANTS[args.vary]:
            idle = wait_idle()
            start = [round(x, 2) for x in os.getloadavg()]
            before, t = _children_cpu(), time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "pytest", "-n", "auto", "--dist", "loadgroup", "tests", "-q",
                                "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True,
                               env=dict(os.environ, **variant_env))
            wall, cpu = time.perf_counter() - t, _children_cpu() - before
            last = summary_line(p.stdout)
            runs.append({key: value, "idle_at_start": idle, "loadavg_at_start": start,
                         "loadavg_at_end": [round(x, 2) for x in os.getloadavg()], "exit_status": p.returncode,
                         "summary": last.strip("= ") if last else None, "wall_s": round(wall, 1),
                         "cpu_s": round(cpu, 1)})
            print(runs[-1], flush=True)
    results = {"import_cost_cpu_s": imports, "import_cost_cpu_s_median": statistics.median(imports),
               "commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True).stdout.strip(), "suite_runs": runs}
    write_record(args.out, "check", results, env,
                 what="where the suite's CPU goes: CPU seconds of one `python -c 'import resnext_det.cli'` "
                      "(5 fresh processes), and the suite (pytest -n auto --dist loadgroup tests, this checkout) "
                      f"{WHAT[args.vary]}: wall and CPU seconds of everything it ran",
                 command="python benchmarks/scripts/suite_profile.py " + " ".join(argv or sys.argv[1:]))


if __name__ == "__main__":
    main()
