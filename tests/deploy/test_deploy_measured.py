"""The deploy defaults chosen by measurement (resnext_det.deploy.measured) on hand-made tables,
the runtime options they feed, and the thread count (physical cores available)."""
import json

import pytest
from saved_cpuinfo import features

from resnext_det.deploy import DeployError
from resnext_det.deploy.measured import DEFAULTS, choose_runtime, default_option, load_table
from resnext_det.hardware import cpu_kind

TABLE = {
    "kinds": {
        "avx2": {"runtime": "onnxruntime", "precision": "fp32", "figures": "ORT 1.9x stock",
                 "status": "settled", "record": "benchmarks/avx2/x.json", "onnxruntime_allow_spinning": True},
        "avx512": {"runtime": "openvino", "precision": "fp32", "record": "benchmarks/avx512/y.json",
                   "openvino_shape_mode": "static"},
    },
}


def test_measured_kind_gets_its_runtime_and_the_line_cites_the_record():
    c = choose_runtime("avx2", TABLE, available=("onnxruntime", "openvino"))
    assert (c.runtime, c.precision, c.record) == ("onnxruntime", "fp32", "benchmarks/avx2/x.json")
    assert "measured fastest on CPU kind avx2" in c.reason and "benchmarks/avx2/x.json" in c.reason
    assert "\n" not in c.reason


def test_unmeasured_kind_falls_back_to_openvino_then_onnxruntime_and_says_so():
    c = choose_runtime("avx512_bf16", TABLE, available=("onnxruntime", "openvino"))
    assert c.runtime == "openvino" and "no measurement on CPU kind avx512_bf16 stands behind it" in c.reason
    c = choose_runtime("other", TABLE, available=("onnxruntime",))
    assert c.runtime == "onnxruntime" and "OpenVINO is not installed" in c.reason


def test_measured_runtime_not_installed_gives_the_other():
    c = choose_runtime("avx512", TABLE, available=("onnxruntime",))
    assert c.runtime == "onnxruntime" and "not installed" in c.reason
    with pytest.raises(DeployError, match=r"pip install -e \.\[deploy\]"):
        choose_runtime("avx2", TABLE, available=())


def test_options_per_kind_and_the_defaults():
    assert default_option("onnxruntime_allow_spinning", "avx2", TABLE)[0] is True
    assert default_option("onnxruntime_allow_spinning", "avx512", TABLE)[0] is False
    value, why = default_option("openvino_shape_mode", "avx512", TABLE)
    assert value == "static" and "measured on CPU kind avx512" in why
    value, why = default_option("openvino_shape_mode", "other", TABLE)
    assert value == DEFAULTS["openvino_shape_mode"] == "dynamic"
    assert "no measurement on CPU kind other stands behind it" in why
    with pytest.raises(DeployError, match="'threads' is not a measured option"):
        default_option("threads", "avx2", TABLE)


@pytest.mark.parametrize("bad, named", [
    ({"kinds": {"avx3": {"runtime": "openvino"}}}, "kind 'avx3'"),
    ({"kinds": {"avx2": {"runtime": "tensorrt"}}}, r"avx2.runtime='tensorrt'"),
    ({"kinds": {"avx2": {"openvino_shape_mode": "fixed"}}}, r"avx2.openvino_shape_mode='fixed'"),
    ({"kinds": {"amx": {"low_precision": {"precision": "fp8"}}}}, r"amx.low_precision=.*'bf16', 'int8'"),
    ({"kinds": ["avx2"]}, "'kinds' must be an object"),
])
def test_bad_table_is_named(tmp_path, bad, named):
    f = tmp_path / "t.json"
    f.write_text(json.dumps(bad))
    with pytest.raises(DeployError, match=named):
        load_table(str(f))


@pytest.mark.parametrize("machine, measured", [("amx", "avx512_bf16"), ("avx512_bf16", "amx")])
def test_a_machine_never_takes_another_kinds_choice(monkeypatch, machine, measured):
    """The kind comes from a saved cpuinfo (the AMX Sapphire Rapids has avx512_bf16 too); the
    table holds only the other kind: the defaults apply, and the line says no measurement does."""
    monkeypatch.delenv("RESNEXT_DET_CPU_KIND", raising=False)
    kind = cpu_kind(features(machine))
    assert kind == machine
    table = {"kinds": {measured: {"runtime": "onnxruntime", "record": f"benchmarks/{measured}/d.json",
                                  "onnxruntime_allow_spinning": True, "openvino_shape_mode": "static"}}}
    c = choose_runtime(kind, table, available=("onnxruntime", "openvino"))
    assert (c.runtime, c.precision, c.record) == ("openvino", "fp32", "")
    assert f"no measurement on CPU kind {machine} stands behind it" in c.reason and measured not in c.reason
    for key in ("onnxruntime_allow_spinning", "openvino_shape_mode"):
        value, why = default_option(key, kind, table)
        assert value == DEFAULTS[key] and f"no measurement on CPU kind {machine}" in why
    assert choose_runtime(measured, table, available=("onnxruntime", "openvino")).runtime == "onnxruntime"


HINT = {"kinds": {"avx512_bf16": {
    "runtime": "openvino", "precision": "fp32", "record": "benchmarks/avx512_bf16/deploy-fpn.json",
    "low_precision": {"precision": "int8", "runtime": "openvino", "speedup": 3.55,
                      "figures": "AP on the demo model 80.92 fp32 -> 81.24 int8",
                      "record": "benchmarks/avx512_bf16/deploy-fpn.json, benchmarks/avx512_bf16/deploy-ap-demo-fpn.json"}}}}


def test_a_much_faster_low_precision_is_named_with_how_to_ask_for_it_and_fp32_stays():
    c = choose_runtime("avx512_bf16", HINT, available=("onnxruntime", "openvino"))
    assert (c.runtime, c.precision) == ("openvino", "fp32")
    assert "int8 was measured 3.5x openvino fp32 here" in c.reason and "80.92 fp32 -> 81.24 int8" in c.reason
    assert "deploy-ap-demo-fpn.json" in c.reason and "tools/export.py --int8" in c.reason and "\n" not in c.reason
    bf16 = json.loads(json.dumps(HINT))
    bf16["kinds"]["avx512_bf16"]["low_precision"]["precision"] = "bf16"
    assert 'precision="bf16"' in choose_runtime("avx512_bf16", bf16, available=("openvino",)).reason
    # the hint is OpenVINO's: with ONNX Runtime only, nothing to ask for
    assert "int8" not in choose_runtime("avx512_bf16", HINT, available=("onnxruntime",)).reason


def test_shipped_table_loads_and_every_entry_names_its_record():
    table = load_table()
    assert "benchmarks/choices.py" in table["about"] and "do not edit" in table["about"]  # rendered, not typed
    for kind, entry in table["kinds"].items():
        assert entry["record"].startswith(f"benchmarks/{kind}/"), kind
        for key in ("onnxruntime_allow_spinning", "openvino_shape_mode"):
            assert key not in entry or f"benchmarks/{kind}/" in entry[key + "_source"]
        if "runtime" in entry:
            assert choose_runtime(kind, table, available=("onnxruntime", "openvino")).runtime == entry["runtime"]


def test_this_machines_kind_deploys_openvino_fp32_dynamic_without_spinning(monkeypatch):
    """On the EPYC Zen4 the project is measured on (avx512_bf16): what DeployedPredictor(path)
    takes, from the shipped table, and the int8 hint its line carries."""
    monkeypatch.delenv("RESNEXT_DET_CPU_KIND", raising=False)
    kind = cpu_kind(features("avx512_bf16"))
    c = choose_runtime(kind, available=("onnxruntime", "openvino"))
    assert (c.runtime, c.precision) == ("openvino", "fp32") and "measured fastest on CPU kind avx512_bf16" in c.reason
    assert "int8 was measured" in c.reason and "tools/export.py --int8" in c.reason
    assert default_option("openvino_shape_mode", kind)[0] == "dynamic"
    assert default_option("onnxruntime_allow_spinning", kind)[0] is False
    for other in ("amx", "avx2"):  # no A/A-controlled deploy record on these kinds: the defaults, said so
        assert "no measurement on CPU kind" in choose_runtime(other, available=("onnxruntime", "openvino")).reason


def test_available_cores_counts_hyperthreads_once_and_honours_the_quota(tmp_path):
    from resnext_det.hardware import available_cores

    for cpu, core in enumerate([0, 1, 0, 1]):  # 2 cores x 2 hyper-threads
        d = tmp_path / "sys" / f"cpu{cpu}" / "topology"
        d.mkdir(parents=True)
        (d / "core_id").write_text(f"{core}\n")
        (d / "physical_package_id").write_text("0\n")
    sysfs, nomax = str(tmp_path / "sys"), str(tmp_path / "none")
    assert available_cores([0, 1, 2, 3], sysfs, nomax) == 2
    assert available_cores([0, 2], sysfs, nomax) == 1
    assert available_cores([0, 1, 5], sysfs, nomax) == 3  # cpu5: no topology, counted as a core
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")
    assert available_cores([0, 1, 2, 3], sysfs, str(quota)) == 2
    quota.write_text("50000 100000\n")
    assert available_cores([0, 1, 2, 3], sysfs, str(quota)) == 1
