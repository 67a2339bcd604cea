"""deploy/modes.py: the one vocabulary of run modes (the names records carry in paths[].mode)."""
import pytest

from resnext_det.deploy import modes
from resnext_det.deploy.contract import DeployError


def test_runtime_modes_are_the_benchmarks_columns():
    assert modes.runtime_modes(["onnxruntime", "openvino"]) == ["onnxruntime", "openvino"]
    assert modes.runtime_modes(["onnxruntime", "openvino"], bf16=True, int8=True) == [
        "onnxruntime", "openvino", "openvino-bf16", "onnxruntime-int8", "openvino-int8"]
    assert modes.runtime_modes(["onnxruntime"], bf16=True) == ["onnxruntime"]  # bf16 is OpenVINO's
    for mode in modes.runtime_modes(["onnxruntime", "openvino"], bf16=True, int8=True):
        assert mode in modes.DEPLOY_MODES


def test_raw_names_and_precision():
    assert modes.raw_mode("openvino") == "openvino-raw"
    assert modes.wrapped_mode("openvino-raw") == "openvino"
    assert modes.wrapped_mode("openvino-int8") is None
    assert modes.mode_precision("openvino-bf16") == "bf16"
    assert modes.mode_precision("openvino-int8") == "fp32"


@pytest.fixture
def made(monkeypatch):
    """build_predictors with a DeployedPredictor that only notes how it was built."""
    calls = {}

    def fake(path, runtime, num_threads, input_format, **options):
        calls[len(calls)] = (path, runtime, options)
        return (path, runtime, options)

    monkeypatch.setattr(modes, "DeployedPredictor", fake)
    return calls


def test_default_modes_follow_the_files(made):
    fp32_only = modes.build_predictors("m.onnx")
    assert set(fp32_only) == {"onnxruntime", "onnxruntime-spin", "onnxruntime-nospin", "openvino", "openvino-static"}
    ir = modes.build_predictors("m.onnx", "m_int8.xml")  # ONNX Runtime reads no OpenVINO IR
    assert set(ir) - set(fp32_only) == {"openvino-int8", "openvino-int8-static"}
    assert ir["openvino-int8"] == ("m_int8.xml", "openvino", {"precision": "fp32", "shape_mode": "dynamic"})
    qdq = modes.build_predictors("m.onnx", "m_int8.onnx")
    assert set(qdq) - set(fp32_only) == {"onnxruntime-int8", "openvino-int8", "openvino-int8-static"}


def test_a_mode_that_names_its_precision_keeps_it(made):
    preds = modes.build_predictors("m.onnx", modes=["openvino-bf16", "openvino"], precision="default")
    assert preds["openvino-bf16"][2]["precision"] == "bf16"
    assert preds["openvino"][2]["precision"] == "default"


def test_unknown_and_int8_without_file_are_refused(made):
    with pytest.raises(DeployError, match="not known"):
        modes.build_predictors("m.onnx", modes=["tensorrt"])
    with pytest.raises(DeployError, match="needs the int8 model"):
        modes.build_predictors("m.onnx", modes=["openvino-int8"])
