"""Before/after a change: the user-facing inference paths of two commits, timed in one
interleaved run with an A/A control (the old commit measured twice, as old_a and old_b). A
``before-after`` record of benchmarks/schema.json. Development tool, not part of the package.

    python benchmarks/scripts/before_after.py --old 874c4bb --new HEAD \\
        --out benchmarks/avx512_bf16/before-after-issue27-fpn-X-101-32x4d-800x1333.json

Each commit is checked out into a git worktree; every measurement is a fresh process with that
worktree first on sys.path (it prints which resnext_det it imported). Paths, on the X-101-32x4d
FPN Faster R-CNN with random weights (seed 0) and one 800x1333 uint8 image: ``fast_path_s``
(``prepare_for_inference`` fp32, then ``model(inputs)``) and ``openvino_s`` (the commit's own
``export_onnx`` output, exported once per commit beforehand, through its own
``DeployedPredictor(runtime="openvino", precision="fp32")``); 1 warm-up and 3 timed calls each.
Rounds rotate the order of old_a, new, old_b; the A/A ratio (old_a / old_b medians) must lie in
0.95-1.05 for a path's comparison to count (``settled``).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demos import wait_idle  # noqa: E402

CONFIG = "faster_rcnn_X101_32x4d_FPN.yaml"
SIZE = (800, 1333)

_COMMON = f"""
import sys, json, time, numpy as np, torch
sys.path.insert(0, sys.argv[1])
import resnext_det
assert resnext_det.__file__.startswith(sys.argv[1]), resnext_det.__file__
from detectron2.modeling import build_model
torch.manual_seed(0)
cfg = resnext_det.get_cfg()
cfg.merge_from_file(resnext_det.get_config_file({CONFIG!r}))
cfg.MODEL.DEVICE = "cpu"
cfg.MODEL.WEIGHTS = ""
image = np.random.default_rng(0).integers(0, 256, ({SIZE[0]}, {SIZE[1]}, 3), dtype=np.uint8)
"""

EXPORT = _COMMON + """
from resnext_det.deploy import export_onnx
model = build_model(cfg).eval()
print(json.dumps({"path": export_onnx(cfg, sys.argv[2], model=model)["path"], "module": resnext_det.__file__}))
"""

MEASURE = _COMMON + """
from resnext_det.deploy import DeployedPredictor
from resnext_det.engine.fast import prepare_for_inference

def timed(fn, calls=3):
    fn()
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out

model = prepare_for_inference(build_model(cfg).eval(), "fp32")
inputs = [{"image": torch.as_tensor(image.transpose(2, 0, 1).copy()), "height": image.shape[0], "width": image.shape[1]}]
with torch.no_grad():
    fast = timed(lambda: model(inputs))
del model
predictor = DeployedPredictor(sys.argv[2], runtime="openvino", precision="fp32", input_format="BGR")
ov = timed(lambda: predictor(image))
print(json.dumps({"fast_path_s": fast, "openvino_s": ov, "threads": torch.get_num_threads(),
                  "module": resnext_det.__file__}))
"""


def _py(code, *args):
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", code, *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"measurement failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _loadavg():
    return [round(x, 2) for x in os.getloadavg()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", default="HEAD")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from resnext_det.apps.benchmark.protocol import AA_BAND, environment, write_record

    work = tempfile.mkdtemp(prefix="before_after_")
    commits, roots, exports = {}, {}, {}
    for name, rev in (("old", args.old), ("new", args.new)):
        commits[name] = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", rev], capture_output=True,
                                       text=True, check=True).stdout.strip()
        roots[name] = os.path.join(work, name)
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", roots[name], commits[name]],
                       check=True, capture_output=True)
    try:
        for name in roots:
            exports[name] = _py(EXPORT, roots[name], os.path.join(work, f"export_{name}"))["path"]
            print(f"{name} ({commits[name]}): exported {exports[name]}", flush=True)
        wait_idle()
        env = environment()
        order = ["old_a", "new", "old_b"]
        runs = []
        for r in range(args.rounds):
            for variant in order[r % 3:] + order[:r % 3]:
                code = "old" if variant.startswith("old") else "new"
                start = _loadavg()
                got = _py(MEASURE, roots[code], exports[code])
                got.update(variant=variant, commit=commits[code], loadavg_at_start=start, loadavg_at_end=_loadavg())
                runs.append(got)
                print(f"round {r + 1} {variant}: fast {statistics.median(got['fast_path_s']):.3f} s, "
                      f"openvino {statistics.median(got['openvino_s']):.3f} s", flush=True)
        paths = {}
        for path in ("fast_path_s", "openvino_s"):
            times = {v: [t for run in runs if run["variant"] == v for t in run[path]] for v in order}
            med = {v: statistics.median(times[v]) for v in order}
            aa = med["old_a"] / med["old_b"]
            old = statistics.median(times["old_a"] + times["old_b"])
            paths[path] = {"old_a_median_s": med["old_a"], "old_b_median_s": med["old_b"], "new_median_s": med["new"],
                           "aa_ratio": aa, "settled": AA_BAND[0] <= aa <= AA_BAND[1],
                           "new_speed_vs_old": old / med["new"]}
        results = {"old_commit": commits["old"], "new_commit": commits["new"], "config": CONFIG,
                   "size": list(SIZE), "paths": paths, "runs": runs}
        write_record(args.out, "before-after", results, env,
                     what=f"before/after: {commits['old']} vs {commits['new']}, {CONFIG} random weights, one "
                          f"{SIZE[0]}x{SIZE[1]} image; fast path (prepare_for_inference fp32) and each commit's "
                          "export through its DeployedPredictor (OpenVINO fp32); fresh process per measurement "
                          "(1 warm-up + 3 timed calls), rounds rotating old_a / new / old_b (A/A control)",
                     command="python benchmarks/scripts/before_after.py " + " ".join(argv or sys.argv[1:]),
                     commit=commits["new"])
        print(json.dumps(paths, indent=1))
    finally:
        for name in roots:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", roots[name]], capture_output=True)


if __name__ == "__main__":
    main()
