"""resnext_det.deploy.runtimes on a hand-made graph (tiny_detector.py), in milliseconds: each
runner's settings, options and refusals, its answers, OpenVINO's static-shape cache, and
make_runtime's dispatch. test_graph_fix.py covers reading old exports; the end-to-end deploy
tests run real exports."""
import logging
import sys

import numpy as np
import pytest

from resnext_det.deploy import measured, runtimes
from resnext_det.deploy.contract import DeployError
from resnext_det.deploy.runtimes import OnnxRuntimeRunner, OpenVINORunner, make_runtime
from tiny_detector import CLASSES, FACTORS, detector_graph, image_chw


@pytest.fixture(scope="module")
def graph_bytes():
    return detector_graph().SerializeToString()


@pytest.fixture(scope="module")
def graph_file(tmp_path_factory, graph_bytes):
    path = tmp_path_factory.mktemp("graph") / "model.onnx"
    path.write_bytes(graph_bytes)
    return str(path)


def _check_answer(answer, values=(1.0, 2.0, 3.0), h=4, w=6):
    boxes, scores, classes = answer
    np.testing.assert_array_equal(boxes, FACTORS * np.array([w, h, w, h], np.float32))
    np.testing.assert_array_equal(scores, np.array(values, np.float32))
    np.testing.assert_array_equal(classes, CLASSES)
    assert boxes.dtype == np.float32 and classes.dtype == np.int64


# ----------------------------------------------------------------------------- threads
def test_threads(monkeypatch):
    monkeypatch.setattr(runtimes, "available_cores", lambda: 3)
    assert runtimes._threads(None) == 3
    assert runtimes._threads(1) == 1
    got = runtimes._threads(np.int64(2))
    assert got == 2 and type(got) is int
    for bad in (0, -1, True, False, 1.0, "2"):
        with pytest.raises(DeployError) as e:
            runtimes._threads(bad)
        assert str(e.value) == (f"num_threads={bad!r} is not valid; use a positive integer or None "
                                "(the physical cores available)")


# ----------------------------------------------------------------------------- ONNX Runtime
@pytest.mark.parametrize("spinning", [True, False])
def test_onnxruntime_settings_and_answer(graph_file, spinning):
    runner = OnnxRuntimeRunner(graph_file, num_threads=2, allow_spinning=spinning)
    opts = runner.session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (2, 1)
    assert opts.graph_optimization_level.name == "ORT_ENABLE_ALL"
    assert opts.log_severity_level == 3
    for pool in ("intra_op", "inter_op"):
        assert opts.get_session_config_entry(f"session.{pool}.allow_spinning") == ("1" if spinning else "0")
    assert runner.session.get_providers() == ["CPUExecutionProvider"]
    assert (runner.name, runner.precision_used, runner.num_threads, runner.allow_spinning) == \
        ("onnxruntime", "fp32", 2, spinning)
    assert runner.describe() == f"2 threads, spinning {'on' if spinning else 'off'}"
    _check_answer(runner.run(image_chw()))
    _check_answer(runner.run_all({"image": image_chw((4.0, 5.0, 6.0), 8, 2)}), (4.0, 5.0, 6.0), 8, 2)


def test_onnxruntime_defaults_and_refusals(graph_bytes, monkeypatch):
    asked = []

    def default_option(key):
        asked.append(key)
        return True, "measured"

    monkeypatch.setattr(measured, "default_option", default_option)
    monkeypatch.setattr(runtimes, "available_cores", lambda: 1)
    runner = OnnxRuntimeRunner(graph_bytes, precision="default")  # bytes, not a file
    assert asked == ["onnxruntime_allow_spinning"] and runner.allow_spinning is True
    assert runner.num_threads == 1 and runner.precision_used == "fp32"
    _check_answer(runner.run(image_chw()))
    with pytest.raises(DeployError) as e:
        OnnxRuntimeRunner(graph_bytes, precision="bf16")
    assert str(e.value) == ("precision='bf16' is not available in ONNX Runtime's CPU provider; use 'fp32' "
                            "(or runtime='openvino' for bf16, or an --int8 export)")
    for bad in (1, "yes"):
        with pytest.raises(DeployError) as e:
            OnnxRuntimeRunner(graph_bytes, allow_spinning=bad)
        assert str(e.value) == f"allow_spinning={bad!r} is not valid; use True, False or None (the measured default)"


# ----------------------------------------------------------------------------- OpenVINO
@pytest.mark.parametrize("precision,hint", [("fp32", "f32"), ("bf16", "bf16"), ("default", None)])
def test_openvino_settings_and_answer(graph_file, precision, hint):
    runner = OpenVINORunner(graph_file, num_threads=1, precision=precision, shape_mode="dynamic")
    want = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1}
    if hint:
        want["INFERENCE_PRECISION_HINT"] = hint
    assert runner.config == want
    assert str(runner.compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"
    assert runner.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    # what the compiled model computes in: f32 when asked; bf16 when asked or left to OpenVINO
    # on a CPU with native bf16 (AVX512-BF16, AMX), f32 on others
    native = runner.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    assert native in ("f32", "bf16")
    assert runner.precision_used == ("fp32" if precision == "fp32" else {"f32": "fp32", "bf16": "bf16"}[native])
    assert (runner.name, runner.num_threads, runner.shape_mode, runner.compiles) == ("openvino", 1, "dynamic", 1)
    assert runner.describe() == "1 threads, dynamic shapes"
    _check_answer(runner.run(image_chw()))
    _check_answer(runner.run_all({"image": image_chw((4.0, 5.0, 6.0), 8, 2)}), (4.0, 5.0, 6.0), 8, 2)
    assert runner.compiles == 1  # one compile serves every size


def test_openvino_static_shapes_compile_per_size_and_keep_the_latest(graph_bytes, caplog):
    runner = OpenVINORunner(graph_bytes, num_threads=1, shape_mode="static", cache_size=2)
    assert runner.compiled is None and runner.request is None  # the dynamic model is not kept
    assert runner.compiles == 1 and runner.describe() == "1 threads, static shapes"
    sizes = {"a": (4, 6), "b": (8, 2), "c": (2, 2)}

    def run(name, values=(1.0, 2.0, 3.0)):
        h, w = sizes[name]
        _check_answer(runner.run(image_chw(values, h, w)), values, h, w)
        key = (("image", (3, h, w)),)
        assert next(reversed(runner._static)) == key  # the size just used is the most recent
        return runner.compiles

    with caplog.at_level(logging.INFO, logger="resnext_det.deploy.runtimes"):
        assert run("a") == 2
        assert run("a", (7.0, 8.0, 9.0)) == 2  # the same size again: no compile
        assert run("b") == 3
        assert "input sizes met" not in caplog.text
        assert run("a") == 3  # a hit makes 'a' the most recent ...
        assert run("c") == 4  # ... so the third size drops 'b'
        assert [k[0][1] for k in runner._static] == [(3, 4, 6), (3, 2, 2)]
        assert run("a") == 4
        assert run("b") == 5
    line = ("OpenVINO static shapes: more than 2 input sizes met, compiling per new size "
            "(shape_mode='dynamic' compiles once)")
    assert caplog.text.count(line) == 1  # said once
    assert runner.run_all({"image": image_chw(h=8, w=2)})[1].tolist() == [1.0, 2.0, 3.0]


def test_openvino_defaults(graph_bytes, monkeypatch):
    asked = []

    def default_option(key):
        asked.append(key)
        return "static", "measured"

    monkeypatch.setattr(measured, "default_option", default_option)
    monkeypatch.setattr(runtimes, "available_cores", lambda: 1)
    runner = OpenVINORunner(graph_bytes)
    assert asked == ["openvino_shape_mode"] and runner.shape_mode == "static"
    assert runner.cache_size == 4 and runner.config["INFERENCE_NUM_THREADS"] == 1
    assert runner.config["INFERENCE_PRECISION_HINT"] == "f32" and runner.precision_used == "fp32"
    assert "CACHE_DIR" not in runner.config


def test_openvino_cache_dir(graph_bytes, tmp_path):
    folder = tmp_path / "made" / "here"
    runner = OpenVINORunner(graph_bytes, num_threads=1, shape_mode="dynamic", cache_dir=folder)
    assert folder.is_dir() and runner.config["CACHE_DIR"] == str(folder)
    assert any(folder.iterdir())  # OpenVINO wrote its compiled model there
    again = OpenVINORunner(graph_bytes, num_threads=1, shape_mode="dynamic", cache_dir=str(folder))
    _check_answer(again.run(image_chw()))


@pytest.mark.parametrize("kwargs,message", [
    ({"precision": "fp16"}, "precision='fp16' is not valid; use one of ('fp32', 'bf16', 'default')"),
    ({"shape_mode": "Static"}, "shape_mode='Static' is not valid; use 'dynamic' (one compile, any size) or "
                               "'static' (a compile per image size, cached)"),
    ({"cache_size": 0}, "cache_size=0 is not valid; use a positive integer"),
    ({"cache_size": True}, "cache_size=True is not valid; use a positive integer"),
    ({"cache_size": 2.0}, "cache_size=2.0 is not valid; use a positive integer"),
    ({"cache_dir": 3}, "cache_dir=3 is not a folder; give a folder path (made if absent) or None (no "
                       "compiled-model cache)"),
])
def test_openvino_refusals(graph_bytes, kwargs, message):
    with pytest.raises(DeployError) as e:
        OpenVINORunner(graph_bytes, **{"shape_mode": "dynamic", **kwargs})
    assert str(e.value) == message


def test_openvino_cache_dir_that_is_a_file(graph_bytes, tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(DeployError, match=r"^cache_dir=.*file'\) is not a folder; give a folder path"):
        OpenVINORunner(graph_bytes, shape_mode="dynamic", cache_dir=path)


def test_openvino_reads_an_ir(graph_file, tmp_path):
    import openvino as ov

    xml = str(tmp_path / "model.xml")
    ov.save_model(ov.Core().read_model(graph_file), xml)
    runner = OpenVINORunner(xml, num_threads=1, shape_mode="dynamic")
    _check_answer(runner.run(image_chw()))


# ----------------------------------------------------------------------------- make_runtime
def test_make_runtime_dispatch(graph_bytes):
    ort = make_runtime("onnxruntime", graph_bytes, 1, "fp32", allow_spinning=False, shape_mode=None)
    assert isinstance(ort, OnnxRuntimeRunner) and ort.num_threads == 1 and ort.allow_spinning is False
    ov = make_runtime("openvino", graph_bytes, 1, "bf16", shape_mode="static", cache_size=3, allow_spinning=None)
    assert isinstance(ov, OpenVINORunner) and ov.config["INFERENCE_PRECISION_HINT"] == "bf16"
    assert (ov.shape_mode, ov.cache_size, ov.num_threads) == ("static", 3, 1)
    _check_answer(ov.run(image_chw()))


@pytest.mark.parametrize("runtime,options,message", [
    ("tensorrt", {}, "runtime='tensorrt' is not valid; use one of ('onnxruntime', 'openvino')"),
    ("onnxruntime", {"shape_mode": "static", "cache_size": 2},
     "option(s) cache_size, shape_mode do not apply to runtime 'onnxruntime'; its options are allow_spinning"),
    ("openvino", {"allow_spinning": True},
     "option(s) allow_spinning do not apply to runtime 'openvino'; its options are shape_mode, cache_size, "
     "cache_dir"),
])
def test_make_runtime_refusals(graph_bytes, runtime, options, message):
    with pytest.raises(DeployError) as e:
        make_runtime(runtime, graph_bytes, **options)
    assert str(e.value) == message


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_make_runtime_names_a_missing_runtime(graph_bytes, runtime, monkeypatch):
    monkeypatch.setitem(sys.modules, runtime, None)  # `import runtime` raises ImportError
    with pytest.raises(DeployError) as e:
        make_runtime(runtime, graph_bytes, 1)
    assert str(e.value).startswith(f"runtime {runtime!r} is not installed (")
    assert str(e.value).endswith("); install the deploy extra: pip install -e .[deploy]")


# ----------------------------------------------------------------------------- old exports
def _old_export(outputs=("y",)):
    """Each output = [] if sum(x) > 0 else [5]: an If whose 'then' branch is a zero-element
    constant, the pattern exports written before the empty-branch rewrite hold (see
    test_graph_fix.py)."""
    import onnx
    from onnx import TensorProto, helper

    def branch(name, dims, values):
        const = helper.make_node("Constant", [], [f"{name}_y"],
                                 value=helper.make_tensor(f"{name}_v", TensorProto.FLOAT, dims, values))
        return helper.make_graph([const], name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT,
                                                                                   ["k"])])

    nodes = [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])),
             helper.make_node("Greater", ["total", "zero"], ["positive"])]
    nodes += [helper.make_node("If", ["positive"], [y], then_branch=branch(f"{y}_then", [0], []),
                               else_branch=branch(f"{y}_else", [1], [5.0])) for y in outputs]
    graph = helper.make_graph(nodes, "old", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["k"]) for y in outputs])
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_openvino_rewrites_an_old_export_at_load_and_says_so_for_a_file(tmp_path, caplog):
    path = tmp_path / "old.onnx"
    path.write_bytes(_old_export().SerializeToString())
    before = path.read_bytes()
    line = (f"{path}: exported before empty-branch constants were rewritten; rewritten at load for OpenVINO "
            "(re-export with tools/export.py to skip this)")
    for model, said in ((str(path), True), (before, False)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="resnext_det.deploy.runtimes"):
            runner = OpenVINORunner(model, num_threads=1, shape_mode="dynamic")
        assert (line in caplog.text) is said
        for x, want in (([1.0, 2.0], []), ([-1.0, 0.0], [5.0]), ([3.0, 0.0], [])):
            assert runner.run_all({"x": np.array(x, np.float32)})[0].tolist() == want, (x, said)
    assert path.read_bytes() == before  # the file is left as it was


def test_openvino_refuses_an_ir_of_an_old_export(tmp_path):
    import openvino as ov

    onnx_path = tmp_path / "old.onnx"
    onnx_path.write_bytes(_old_export(("y", "w")).SerializeToString())
    xml = str(tmp_path / "old.xml")
    # converted as it was, not rewritten (and not compressed, which would put a Convert after it)
    ov.save_model(ov.Core().read_model(str(onnx_path)), xml, compress_to_fp16=False)
    with pytest.raises(DeployError) as e:
        OpenVINORunner(xml, num_threads=1, shape_mode="dynamic")
    assert str(e.value) == (
        f"{xml}: this OpenVINO IR was converted from a graph exported before empty NMS results were rewritten "
        "(w, y); OpenVINO would give images with nothing to detect the previous image's detections. Re-export it: "
        "python tools/export.py --config-file CFG --output DIR --int8 MODEL.WEIGHTS W")


# ----------------------------------------------------------------------------- more settings
def test_run_answers_by_output_name(graph_bytes):
    """run() gives (boxes, scores, classes) by name whatever order the graph lists them in;
    run_all() gives the graph's order."""
    model = detector_graph()
    outputs = list(model.graph.output)
    del model.graph.output[:]
    model.graph.output.extend(reversed(outputs))  # classes, scores, boxes
    for runner in (OnnxRuntimeRunner(model.SerializeToString(), num_threads=1, allow_spinning=False),
                   OpenVINORunner(model.SerializeToString(), num_threads=1, shape_mode="dynamic")):
        _check_answer(runner.run(image_chw()))
        classes, scores, boxes = runner.run_all({"image": image_chw()})
        _check_answer((boxes, scores, classes))


def test_onnxruntime_asks_for_the_cpu_provider_by_name(graph_bytes, monkeypatch):
    """A GPU build of onnxruntime would take its CUDA provider first if none were named."""
    import onnxruntime as ort

    real, asked = ort.InferenceSession, []

    def session(model, sess_options=None, providers=None):
        asked.append(providers)
        return real(model, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(ort, "InferenceSession", session)
    OnnxRuntimeRunner(graph_bytes, num_threads=1, allow_spinning=False)
    assert asked == [["CPUExecutionProvider"]]


class _Type:
    """What OpenVINO answers for INFERENCE_PRECISION_HINT: a Type, named by get_type_name()."""

    def __init__(self, name):
        self.name = name

    def get_type_name(self):
        return self.name

    def __str__(self):
        return f"<Type: '{self.name}'>"


@pytest.mark.parametrize("hint,used", [
    (_Type("f32"), "fp32"), (_Type("bf16"), "bf16"), (_Type("f16"), "fp16"),  # CPUs with native fp16
    (_Type("u8"), "<Type: 'u8'>"),  # another type: as OpenVINO prints it
    ("f16", "fp16"), ("f64", "f64"),  # older OpenVINO answered with text
])
def test_openvino_names_the_precision_in_effect(graph_bytes, monkeypatch, hint, used):
    class Compiled:
        def get_property(self, key):
            assert key == "INFERENCE_PRECISION_HINT"
            return hint

    monkeypatch.setattr(OpenVINORunner, "_compile", lambda self, model: (Compiled(), None))
    assert OpenVINORunner(graph_bytes, num_threads=1, shape_mode="dynamic").precision_used == used


def test_defaults_of_make_runtime_and_the_smallest_cache(graph_bytes):
    runner = make_runtime("onnxruntime", graph_bytes, 1, allow_spinning=False)  # precision fp32
    assert runner.precision_used == "fp32"
    one = make_runtime("openvino", graph_bytes, 1, shape_mode="static", cache_size=1)
    _check_answer(one.run(image_chw()))
    _check_answer(one.run(image_chw(h=8, w=2)), h=8, w=2)
    assert one.compiles == 3 and len(one._static) == 1
