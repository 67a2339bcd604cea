"""The demos' wall time and quality on this machine (benchmarks/<kind>/demos.json, a ``demos``
record of benchmarks/schema.json). Development tool, not part of the package.

    python benchmarks/scripts/demos.py --out benchmarks/avx512_bf16/demos.json

Runs ``tools/train_net.py --demo`` and ``--demo two_stage`` one after the other in a scratch
folder, each started once the 1-minute load average is below 1 (or after 10 minutes of waiting,
which the record then says), and files wall time, load averages and the plan's figures (from
plan_state.json and the exported model's evaluation). The record's earlier runs are kept under
``results.previous_records``.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def wait_idle(limit_s=600):
    start = time.time()
    while os.getloadavg()[0] >= 1.0 and time.time() - start < limit_s:
        time.sleep(10)
    return os.getloadavg()[0] < 1.0


def figures(out):
    with open(os.path.join(out, "plan_state.json")) as f:
        results = json.load(f)["results"]
    fig = {}
    for stage, res in results.items():
        if "bbox" in res:
            fig.update(box_AP=round(res["bbox"]["AP"], 2), box_AP50=round(res["bbox"]["AP50"], 2),
                       box_AP75=round(res["bbox"]["AP75"], 2))
        for k, v in res.items():
            if k != "bbox" and isinstance(v, (int, float)):
                fig[k] = round(v, 4)
            elif isinstance(v, dict) and "bbox" in v:
                fig[f"{k}_box_AP"] = round(v["bbox"]["AP"], 2)
    deploy = os.path.join(out, "deploy", "inference", "eval_results.json")
    if os.path.isfile(deploy):
        with open(deploy) as f:
            res = json.load(f)["results"]
        fig["onnxruntime_box_AP"] = round(res["bbox"]["AP"], 2)
    return fig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--demos", nargs="+", default=["fpn", "two_stage"])
    a = ap.parse_args()
    sys.path.insert(0, ROOT)
    from resnext_det.apps.benchmark.protocol import environment, write_record

    env = environment()
    work = tempfile.mkdtemp(prefix="demos_")
    runs = []
    for demo in a.demos:
        idle = wait_idle()
        out = os.path.join(work, demo)
        load0 = list(os.getloadavg())
        started = datetime.datetime.now().isoformat(timespec="seconds")
        start = time.perf_counter()
        r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--demo", demo,
                            "OUTPUT_DIR", out], capture_output=True, text=True)
        wall = time.perf_counter() - start
        run = {"command": f"python tools/train_net.py --demo {demo}", "start": started,
               "idle_at_start": idle, "loadavg_at_start": [round(x, 2) for x in load0],
               "loadavg_at_end": [round(x, 2) for x in os.getloadavg()], "wall_s": round(wall, 1),
               "exit_status": r.returncode, **(figures(out) if r.returncode == 0 else {"stderr": r.stderr[-2000:]})}
        print(json.dumps(run), flush=True)
        runs.append(run)
    earlier = []
    if os.path.isfile(a.out):
        with open(a.out) as f:
            old = json.load(f)
        earlier = ([{"date": old["date"], "commit": old.get("commit"),
                     **{k: v for k, v in old["results"].items() if k != "previous_records"}}]
                   + old["results"].get("previous_records", []))
    write_record(a.out, "demos", {"runs": runs, "work_dir": work, "previous_records": earlier}, env,
                 what="CPU demos on the synthetic shapes set (val with empty, landscape and portrait images), "
                      "each run started when the 1-minute load average was < 1",
                 command="python benchmarks/scripts/demos.py " + " ".join(sys.argv[1:]),
                 date=datetime.date.today().isoformat(),
                 commit=subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                       text=True).stdout.strip())
    print("written", a.out)


if __name__ == "__main__":
    main()
