"""benchmarks/scale.py at a tiny fraction: the record's structure, and that no worker holds all the
proposals (stage 1b streams its share to disk; stage 2 keeps an index and maps the shards)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMA = os.path.join(ROOT, "benchmarks", "schema.json")
pytestmark = pytest.mark.slow


def test_scale_tool_records_each_step_per_process_and_extrapolates(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    r = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--fraction", "1/200",
                        "--topk", "1000", "--out", str(tmp_path / "bench"), "--work-dir", str(tmp_path / "work")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    from resnext_det.hardware import cpu_kind

    path = tmp_path / "bench" / cpu_kind() / "scale-1-200.json"
    assert f"record: {path}" in r.stdout
    import jsonschema

    record = json.load(open(path))
    jsonschema.validate(record, json.load(open(SCHEMA)))
    env, rec = record["environment"], record["results"]
    assert rec["fraction"] == "1/200" and rec["workers"] == 2 and env["cpu_kind"] == cpu_kind()
    assert len(env["loadavg_at_start"]) == 3 and len(env["loadavg_at_end"]) == 3 and env["mem_total_mb"] > 0
    assert rec["data"]["images"] == round(118287 / 200) and rec["data"]["annotations"] > 0
    assert rec["data"]["proposal_rows"] == rec["data"]["images"] * 1000 and rec["data"]["shards"] == 2
    for step in ("annotations_detectron2", "annotations_project", "stage1b_write",
                 "stage2_dataset_and_mapper", "legacy_pickle_write", "legacy_stage2_load"):
        per = rec["steps"][step]
        assert set(per) == ({"rank0"} if step == "legacy_pickle_write" else {"rank0", "rank1"}), step
        for m in per.values():
            assert m["wall_s"] >= 0 and m["peak_rss_mb"] > 0 and "extra_peak_mb" in m
    assert {"annotations_detectron2", "annotations_project_first_check"} <= set(rec["parent"])
    # each worker wrote and read its share only, never all the proposals
    assert rec["steps"]["stage1b_write"]["rank0"]["images"] + rec["steps"]["stage1b_write"]["rank1"]["images"] \
        == rec["data"]["images"]
    all_mb = rec["data"]["proposal_bytes"] / 2 ** 20
    for m in rec["steps"]["stage1b_write"].values():
        assert m["traced_peak_mb"] < 0.25 * all_mb
    for m in rec["steps"]["stage2_dataset_and_mapper"].values():
        assert m["proposal_traced_peak_mb"] < 0.25 * all_mb and m["mapper_calls"] == 8
        assert m["proposal_index_mb"] * 2 ** 20 < 100 * rec["data"]["images"]
    assert rec["goals"]["some_worker_holds_all_proposals"] is False
    ex = rec["extrapolation"]
    assert "EXTRAPOLATED" in ex["note"] and "8 worker" in ex["note"]
    full = ex["full_coco_8_workers"]
    assert full["stage1b_write"]["u_at_full"] == 1 / 8 and full["annotations_detectron2"]["u_at_full"] == 1
    assert 2.0 < full["proposal_files_gb"] < 3.0  # 118287 images x 1000 x 20 bytes = 2.37 GB
    assert rec["data"]["float16_instead"]["max_abs_error_px"] > 0
