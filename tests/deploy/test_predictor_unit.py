"""resnext_det.deploy.predictor on a hand-made export (tiny_detector.py), in milliseconds: the
runtime choice, the settings it refuses, the image checks, the channel flip, the resize rule
and the post-processing, with every expected value written out here. The end-to-end deploy
tests run real exports against eager detectron2."""
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from resnext_det.deploy import DeployedPredictor, predictor
from resnext_det.deploy.contract import DeployError
from resnext_det.deploy.measured import RuntimeChoice
from tiny_detector import CLASSES, detector_graph, write_export


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """The tiny export: RGB, shortest edge 64, longest at most 96."""
    return write_export(tmp_path_factory.mktemp("export") / "model.onnx")


def _bgr(h=20, w=40):
    """A BGR uint8 image whose blue, green and red channels are 10, 20 and 30."""
    return np.stack([np.full((h, w), v, np.uint8) for v in (10, 20, 30)], axis=2)


# a 20x40 image: shortest edge 20 -> 64 would make it 64x128, longer than 96, so 48x96
# (ResizeShortestEdge); FACTORS x (96, 48, 96, 48) in the resized image, then x (40/96, 20/48)
RESIZED_BOXES = [[24.0, 12.0, 48.0, 24.0], [0.0, 0.0, 96.0, 48.0], [48.0, 24.0, 72.0, 36.0]]
ORIGINAL_BOXES = [[10.0, 5.0, 20.0, 10.0], [0.0, 0.0, 40.0, 20.0], [20.0, 10.0, 30.0, 15.0]]


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_call_flips_resizes_and_rescales(export, runtime):
    p = DeployedPredictor(export, runtime=runtime, num_threads=1)
    out = p(_bgr())
    assert list(out) == ["instances"]
    inst = out["instances"]
    assert inst.image_size == (20, 40)
    np.testing.assert_allclose(inst.pred_boxes.tensor.numpy(), ORIGINAL_BOXES, atol=1e-4)
    # BGR given, the model RGB: flipped, so the first channel the graph sees is red (30)
    assert inst.scores.tolist() == [30.0, 20.0, 10.0]
    assert inst.pred_classes.tolist() == CLASSES and inst.pred_classes.dtype == torch.int64
    rgb = DeployedPredictor(export, runtime=runtime, num_threads=1, input_format="RGB")
    assert rgb(_bgr())["instances"].scores.tolist() == [10.0, 20.0, 30.0]  # taken as RGB: no flip


def test_bgr_model_takes_bgr_images_unflipped(tmp_path):
    path = write_export(tmp_path / "bgr.onnx", input_format="BGR", min_size_test=20, max_size_test=40)
    p = DeployedPredictor(path, runtime="onnxruntime", num_threads=1)
    inst = p(_bgr())["instances"]
    assert inst.scores.tolist() == [10.0, 20.0, 30.0]
    np.testing.assert_allclose(inst.pred_boxes.tensor.numpy(), ORIGINAL_BOXES, atol=1e-4)  # no resize here
    flipped = DeployedPredictor(path, runtime="onnxruntime", num_threads=1, input_format="RGB")
    assert flipped(_bgr())["instances"].scores.tolist() == [30.0, 20.0, 10.0]


def test_other_model_formats_go_to_run_resized(tmp_path):
    path = write_export(tmp_path / "yuv.onnx", input_format="YUV-BT.601")
    p = DeployedPredictor(path, runtime="onnxruntime", num_threads=1)
    with pytest.raises(DeployError) as e:
        p(_bgr())
    assert str(e.value) == (f"{path}: INPUT.FORMAT 'YUV-BT.601': DeployedPredictor's __call__ takes RGB or BGR "
                            "models only; give images already in that format, resized, to run_resized()")
    assert p.run_resized(np.ones((3, 5, 7), np.float32)).scores.tolist() == [1.0, 1.0, 1.0]


def test_run_resized_and_inference(export):
    p = DeployedPredictor(export, runtime="onnxruntime", num_threads=1)
    image = torch.stack([torch.full((48, 96), v) for v in (1.0, 2.0, 3.0)])
    for given in (image, image.numpy(), image.numpy().astype(np.float64), image.to(torch.uint8).tolist()):
        inst = p.run_resized(given)
        assert inst.image_size == (48, 96) and inst.scores.tolist() == [1.0, 2.0, 3.0]
        assert inst.pred_boxes.tensor.tolist() == RESIZED_BOXES
        assert inst.scores.dtype == torch.float32 and inst.pred_boxes.tensor.dtype == torch.float32
        assert inst.pred_classes.tolist() == CLASSES and inst.pred_classes.dtype == torch.int64
    # detectron2's test-loader dicts: rescaled to height/width when given, no flip whatever
    # input_format says
    p_rgb = DeployedPredictor(export, runtime="onnxruntime", num_threads=1, input_format="BGR")
    out = p_rgb.inference([{"image": image, "height": 20, "width": 40}, {"image": image.to(torch.uint8)}])
    first, second = out[0]["instances"], out[1]["instances"]
    assert first.image_size == (20, 40) and first.scores.tolist() == [1.0, 2.0, 3.0]
    np.testing.assert_allclose(first.pred_boxes.tensor.numpy(), ORIGINAL_BOXES, atol=1e-4)
    assert second.image_size == (48, 96) and second.pred_boxes.tensor.tolist() == RESIZED_BOXES
    one = p.inference([{"image": image, "height": 24}])[0]["instances"]  # width kept
    assert one.image_size == (24, 96)
    assert p.run_resized(np.ones((3, 1, 1), np.float32)).image_size == (1, 1)  # the smallest image


@pytest.mark.parametrize("shape", [(3, 4), (1, 4, 4), (4, 4, 3), (3, 0, 4), (3, 4, 0), (1, 3, 4, 4)])
def test_run_resized_refuses_other_shapes(export, shape):
    p = DeployedPredictor(export, runtime="onnxruntime", num_threads=1)
    with pytest.raises(DeployError) as e:
        p.run_resized(np.zeros(shape, np.float32))
    assert str(e.value) == f"the graph takes a 3xHxW float image, got shape {shape}"


@pytest.mark.parametrize("image,got", [
    (np.zeros((4, 4, 3), np.float32), "ndarray shape (4, 4, 3) dtype float32"),
    (np.zeros((4, 4), np.uint8), "ndarray shape (4, 4) dtype uint8"),
    (np.zeros((4, 4, 4), np.uint8), "ndarray shape (4, 4, 4) dtype uint8"),
    (np.zeros((0, 4, 3), np.uint8), "ndarray shape (0, 4, 3) dtype uint8"),
    (np.zeros((4, 0, 3), np.uint8), "ndarray shape (4, 0, 3) dtype uint8"),
    (torch.zeros(4, 4, 3, dtype=torch.uint8), "Tensor shape (4, 4, 3) dtype torch.uint8"),
    ([[[0, 0, 0]]], "list"),
    (SimpleNamespace(shape=(4, 4, 3)), "SimpleNamespace"),  # a shape but no dtype: named by its type
    ("image.jpg", "str"),
])
def test_call_names_the_expected_image(export, image, got):
    for input_format, how in (("BGR", "cv2.imread's order; input_format='RGB' for RGB arrays"),
                              ("RGB", "as set by input_format='RGB'; the default is BGR, cv2.imread's order")):
        p = DeployedPredictor(export, runtime="onnxruntime", num_threads=1, input_format=input_format)
        with pytest.raises(DeployError) as e:
            p(image)
        assert str(e.value) == (f"DeployedPredictor expects an HxWx3 uint8 numpy array in {input_format} channel "
                                f"order ({how}; H, W >= 1); got {got}")


def test_smallest_image(export):
    inst = DeployedPredictor(export, runtime="onnxruntime", num_threads=1)(_bgr(1, 1))["instances"]
    assert inst.image_size == (1, 1) and inst.scores.tolist() == [30.0, 20.0, 10.0]


# ----------------------------------------------------------------------------- settings
def test_settings_logged_and_kept(export, caplog):
    with caplog.at_level(logging.INFO, logger="resnext_det.deploy.predictor"):
        # 3 threads: more than this 2-core machine's default, so the number given shows
        p = DeployedPredictor(export, runtime="onnxruntime", num_threads=3, allow_spinning=False)
    assert (p.path, p.runtime, p.precision_used, p.input_format) == (export, "onnxruntime", "fp32", "BGR")
    assert p.runtime_reason == "runtime onnxruntime: named by the caller"
    assert p.contract.min_size_test == 64 and p.runner.num_threads == 3 and p.runner.allow_spinning is False
    assert caplog.messages == [f"Deployed model {export}: onnxruntime, 3 threads, spinning off, precision fp32 "
                               "(weights fp32)"]
    ov = DeployedPredictor(export, runtime="openvino", num_threads=1, precision="bf16", shape_mode="static",
                           cache_size=2)
    assert ov.runner.config["INFERENCE_PRECISION_HINT"] == "bf16"
    assert (ov.runner.shape_mode, ov.runner.cache_size) == ("static", 2)
    assert ov.precision_used == ov.runner.precision_used


def test_the_resize_rule_is_the_contracts(tmp_path):
    path = write_export(tmp_path / "m.onnx", min_size_test=30, max_size_test=1000)
    p = DeployedPredictor(path, runtime="onnxruntime", num_threads=1)
    assert (list(p.resize.short_edge_length), p.resize.max_size) == ([30, 30], 1000)
    tall = p(_bgr(40, 20))["instances"]  # 40x20 -> 60x30: the shortest edge is 30
    np.testing.assert_allclose(tall.pred_boxes.tensor.numpy(), [[5.0, 10.0, 10.0, 20.0], [0.0, 0.0, 20.0, 40.0],
                                                                [10.0, 20.0, 15.0, 30.0]], atol=1e-4)


@pytest.mark.parametrize("kwargs,message", [
    ({"input_format": "rgb"}, "input_format='rgb' is not valid; use 'BGR' (the default: cv2.imread's order, as "
                              "detectron2's DefaultPredictor) or 'RGB' (this model's INPUT.FORMAT is RGB)"),
    ({"runtime": "tensorrt"}, "runtime='tensorrt' is not valid; use one of ('onnxruntime', 'openvino'), or None "
                              "/ 'auto' (the runtime measured fastest on this CPU)"),
    ({"runtime": "onnxruntime", "precision": "bf16"}, "precision='bf16' is not available in ONNX Runtime's CPU "
                                                      "provider; use 'fp32' (or runtime='openvino' for bf16, or an "
                                                      "--int8 export)"),
])
def test_bad_settings_are_named(export, kwargs, message):
    with pytest.raises(DeployError) as e:
        DeployedPredictor(export, **kwargs)
    assert str(e.value) == message


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_a_graph_the_runtime_refuses_is_named_in_one_line(tmp_path, runtime):
    path = write_export(tmp_path / "odd.onnx", detector_graph(op="NoSuchOp", domain="test.unknown"))
    with pytest.raises(DeployError) as e:
        DeployedPredictor(path, runtime=runtime, num_threads=1)
    text = str(e.value)
    # the runtime's exception in one line: its type and its message's first line
    what = {"onnxruntime": "Fail: [ONNXRuntimeError] : 1 : FAIL : Load model from ", "openvino": "RuntimeError: "}
    assert text.startswith(f"{path}: {runtime} cannot load it: {what[runtime]}") and "\n" not in text


# ----------------------------------------------------------------------------- the runtime choice
def test_runtime_for_onnx(export, monkeypatch, caplog):
    monkeypatch.setattr(predictor, "choose_runtime",
                        lambda: RuntimeChoice("onnxruntime", "fp32", "runtime onnxruntime fp32: measured here"))
    for named in ("onnxruntime", "openvino"):
        assert DeployedPredictor.runtime_for(export, named) == (named, f"runtime {named}: named by the caller")
    with caplog.at_level(logging.INFO, logger="resnext_det.deploy.predictor"):
        for auto in (None, "auto"):
            assert DeployedPredictor.runtime_for(export, auto) == ("onnxruntime",
                                                                   "runtime onnxruntime fp32: measured here")
    assert caplog.messages == [f"{export}: runtime onnxruntime fp32: measured here"] * 2
    p = DeployedPredictor(export, num_threads=1)
    assert p.runtime == "onnxruntime" and p.runtime_reason == "runtime onnxruntime fp32: measured here"


@pytest.fixture(scope="module")
def ir(tmp_path_factory, export):
    """The tiny export as an OpenVINO IR (as the NNCF int8 export is written)."""
    import openvino as ov

    from resnext_det.deploy.contract import read_contract, save_openvino_ir

    xml = str(tmp_path_factory.mktemp("ir") / "model_int8.xml")
    return save_openvino_ir(ov.Core().read_model(export), read_contract(export), xml)


def test_runtime_for_an_ir(ir, monkeypatch, caplog):
    monkeypatch.setattr(predictor, "choose_runtime", lambda: pytest.fail("an IR needs no choice"))
    reason = "runtime openvino: the model is an OpenVINO IR"
    with caplog.at_level(logging.INFO, logger="resnext_det.deploy.predictor"):
        for auto in (None, "auto"):
            assert DeployedPredictor.runtime_for(ir, auto) == ("openvino", reason)
    assert caplog.messages == [f"{ir}: {reason}"] * 2
    assert DeployedPredictor.runtime_for(ir, "openvino") == ("openvino", "runtime openvino: named by the caller")
    with pytest.raises(DeployError) as e:
        DeployedPredictor.runtime_for(ir, "onnxruntime")
    assert str(e.value) == (f"{ir}: an OpenVINO IR runs in OpenVINO only; use runtime='openvino' (or give the "
                            ".onnx export to ONNX Runtime)")
    p = DeployedPredictor(ir, num_threads=1)
    assert p.runtime == "openvino" and p.runtime_reason == reason
    assert p(_bgr())["instances"].scores.tolist() == [30.0, 20.0, 10.0]


def test_instances_hold_detectron2s_types_whatever_the_runtime_answers_in(export):
    """float32 boxes and scores, int64 classes, as detectron2's Instances hold them."""
    p = DeployedPredictor(export, runtime="onnxruntime", num_threads=1)
    p.runner = SimpleNamespace(run=lambda x: (np.array([[1.0, 2.0, 3.0, 4.0]], np.float64), np.array([0.5]),
                                              np.array([2], np.int32)))
    inst = p.run_resized(np.ones((3, 8, 8), np.float32))
    assert inst.pred_boxes.tensor.dtype == torch.float32 and inst.pred_boxes.tensor.tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert inst.scores.dtype == torch.float32 and inst.scores.tolist() == [0.5]
    assert inst.pred_classes.dtype == torch.int64 and inst.pred_classes.tolist() == [2]
