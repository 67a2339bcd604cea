"""benchmarks/choices.py: the two measured-choice tables rendered from records. The deploy rule on
hand-made records (fastest fp32 runtime of settled A/A records, options beyond the noise only, the
low-precision hint only with an AP record), and the shipped tables equal to their records."""
from pathlib import Path

from benchmarks.choices import LAYOUTS_TABLE, RUNTIMES_TABLE, runtimes_table, write_choice_tables
from benchmarks.render import load_records

ROOT = Path(__file__).resolve().parents[2]


def _timed(kind, name, part, ratios, aa=1.0, date="2026-12-01T10:00:00"):
    """A schema-1 benchmark record of ``part`` with ``ratios`` per mode (A/A ``aa``)."""
    settled = 0.95 <= aa <= 1.05
    return {"path": f"benchmarks/{kind}/{name}.json", "kind": kind, "data": {
        "schema": 1, "type": "benchmark", "date": date, "results": {
            "aa_control": True, "settings": {"image": [800, 1333]},
            "controls": [{"name": part, "preset": "X-101-32x4d", "aa_ratio": aa, "settled": settled}],
            "paths": [{"name": part, "preset": "X-101-32x4d", "mode": m, "seconds": 1.0 / r,
                       "ratio": r if settled else None} for m, r in ratios.items()]}}}


def _ap(kind, ap):
    return {"path": f"benchmarks/{kind}/deploy-ap-demo-fpn.json", "kind": kind, "data": {
        "schema": 1, "type": "accuracy", "date": "2026-12-02", "results": {"ap": {k: {"AP": v} for k, v in ap.items()}}}}


FPN = {"stock_a": 1.0, "stock_b": 1.0, "onnxruntime": 1.8, "openvino": 1.5, "openvino-int8": 3.3}
C4 = {"stock_a": 1.0, "stock_b": 1.0, "onnxruntime": 1.9, "openvino": 2.0}
AP = {"openvino fp32 (fp32 compute)": 40.0, "openvino int8-nncf (fp32 compute)": 39.5}


def test_runtime_is_the_fastest_fp32_of_the_settled_records_and_names_them():
    recs = [_timed("avx2", "deploy-fpn-x", "fpn", FPN), _timed("avx2", "deploy-c4-x", "c4", C4)]
    entry = runtimes_table(recs)["kinds"]["avx2"]
    # geometric mean: onnxruntime sqrt(1.8 * 1.9) > openvino sqrt(1.5 * 2.0)
    assert (entry["runtime"], entry["precision"]) == ("onnxruntime", "fp32")
    assert entry["record"] == "benchmarks/avx2/deploy-c4-x.json, benchmarks/avx2/deploy-fpn-x.json"
    assert "openvino 1.50x, onnxruntime 1.80x" in entry["figures"]
    assert "low_precision" not in entry  # int8 2.2x openvino fp32, but no AP record on this kind


def test_noisy_records_and_unrecorded_kinds_give_no_entry():
    recs = [_timed("avx2", "deploy-fpn-x", "fpn", FPN, aa=1.09), _timed("avx512", "train-layouts", "train", {})]
    assert runtimes_table(recs)["kinds"] == {}
    # of two settled records of one part, the newest counts
    older = _timed("avx2", "deploy-fpn-a", "fpn", FPN, date="2026-01-01")
    newer = _timed("avx2", "deploy-fpn-b", "fpn", {**FPN, "openvino": 2.5}, date="2026-02-01")
    assert runtimes_table([newer, older])["kinds"]["avx2"]["runtime"] == "openvino"


def test_spinning_and_static_shapes_only_beyond_the_noise():
    spin = _timed("avx2", "ort-spinning-x", "onnxruntime-spinning", {"spin-off": 1.0, "spin-off-b": 1.01, "spin-on": 1.04})
    shapes = _timed("avx2", "ov-shapes-x", "openvino-shapes", {"dynamic": 1.0, "dynamic-b": 1.0, "static": 1.2})
    entry = runtimes_table([spin, shapes])["kinds"]["avx2"]
    assert entry["onnxruntime_allow_spinning"] is False and "not faster than the noise 5%" in entry[
        "onnxruntime_allow_spinning_source"]
    assert entry["openvino_shape_mode"] == "static" and "benchmarks/avx2/ov-shapes-x.json" in entry[
        "openvino_shape_mode_source"]
    assert "runtime" not in entry  # no deploy speed record: the runtime stays the package's default


def test_low_precision_hint_needs_2x_and_an_ap_record():
    recs = [_timed("amx", "deploy-fpn-x", "fpn", FPN), _ap("amx", AP)]
    low = runtimes_table(recs)["kinds"]["amx"]["low_precision"]
    assert (low["precision"], low["speedup"]) == ("int8", 2.2)
    assert low["record"] == "benchmarks/amx/deploy-fpn-x.json, benchmarks/amx/deploy-ap-demo-fpn.json"
    assert "40.00 fp32 -> 39.50 int8" in low["figures"]
    slow = [_timed("amx", "deploy-fpn-x", "fpn", {**FPN, "openvino-int8": 2.9}), _ap("amx", AP)]  # 1.93x
    assert "low_precision" not in runtimes_table(slow)["kinds"]["amx"]
    other_kind = [_timed("amx", "deploy-fpn-x", "fpn", FPN), _ap("avx512_bf16", AP)]
    assert "low_precision" not in runtimes_table(other_kind)["kinds"]["amx"]


def test_shipped_tables_equal_their_records():
    assert write_choice_tables(str(ROOT), load_records(str(ROOT)), check=True) == [], (
        f"{LAYOUTS_TABLE} or {RUNTIMES_TABLE} differs from its records: run `python -m benchmarks.render`")
