"""The deploy defaults chosen by measurement (resnext_det.deploy.measured) on hand-made tables,
the runtime options they feed, and the thread count (physical cores available)."""
import json

import pytest

from resnext_det.deploy import DeployError
from resnext_det.deploy.measured import choose_runtime, default_option, load_table

TABLE = {
    "kinds": {
        "avx2": {"runtime": "onnxruntime", "precision": "fp32", "figures": "ORT 1.9x stock",
                 "status": "settled", "record": "benchmarks/avx2/x.json", "onnxruntime_allow_spinning": True},
        "avx512": {"runtime": "openvino", "precision": "fp32", "record": "benchmarks/avx512/y.json",
                   "openvino_shape_mode": "static"},
    },
    "fallback": {"runtime": "openvino", "onnxruntime_allow_spinning": False, "openvino_shape_mode": "dynamic"},
}


def test_measured_kind_gets_its_runtime_and_the_line_cites_the_record():
    c = choose_runtime("avx2", TABLE, available=("onnxruntime", "openvino"))
    assert (c.runtime, c.precision, c.record) == ("onnxruntime", "fp32", "benchmarks/avx2/x.json")
    assert "measured fastest on CPU kind avx2" in c.reason and "benchmarks/avx2/x.json" in c.reason
    assert "\n" not in c.reason


def test_unmeasured_kind_falls_back_to_openvino_then_onnxruntime_and_says_so():
    c = choose_runtime("avx512_bf16", TABLE, available=("onnxruntime", "openvino"))
    assert c.runtime == "openvino" and "no measurement for CPU kind avx512_bf16" in c.reason
    c = choose_runtime("other", TABLE, available=("onnxruntime",))
    assert c.runtime == "onnxruntime" and "OpenVINO is not installed" in c.reason


def test_measured_runtime_not_installed_gives_the_other():
    c = choose_runtime("avx512", TABLE, available=("onnxruntime",))
    assert c.runtime == "onnxruntime" and "not installed" in c.reason
    with pytest.raises(DeployError, match=r"pip install -e \.\[deploy\]"):
        choose_runtime("avx2", TABLE, available=())


def test_options_per_kind_and_fallback():
    assert default_option("onnxruntime_allow_spinning", "avx2", TABLE)[0] is True
    assert default_option("onnxruntime_allow_spinning", "avx512", TABLE)[0] is False
    value, why = default_option("openvino_shape_mode", "avx512", TABLE)
    assert value == "static" and "measured on CPU kind avx512" in why
    value, why = default_option("openvino_shape_mode", "other", TABLE)
    assert value == "dynamic" and "not measured" in why
    with pytest.raises(DeployError, match="'threads' is not a measured option"):
        default_option("threads", "avx2", TABLE)


@pytest.mark.parametrize("bad, named", [
    ({"kinds": {"avx3": {"runtime": "openvino"}}}, "kind 'avx3'"),
    ({"kinds": {"avx2": {"runtime": "tensorrt"}}}, r"avx2.runtime='tensorrt'"),
    ({"kinds": {}, "fallback": {"openvino_shape_mode": "fixed"}}, r"fallback.openvino_shape_mode='fixed'"),
])
def test_bad_table_is_named(tmp_path, bad, named):
    f = tmp_path / "t.json"
    f.write_text(json.dumps(bad))
    with pytest.raises(DeployError, match=named):
        load_table(str(f))


def test_shipped_table_loads_and_every_entry_names_its_record():
    table = load_table()
    for kind, entry in table["kinds"].items():
        assert entry["record"] and entry["status"], kind
        assert choose_runtime(kind, table, available=("onnxruntime", "openvino")).runtime == entry["runtime"]
    assert default_option("openvino_shape_mode", "other", table)[0] == "dynamic"  # until measured on X-101


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
