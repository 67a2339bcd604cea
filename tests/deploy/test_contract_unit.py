"""resnext_det.deploy.contract in milliseconds: a three-node ONNX graph stands in for an export.

Every expected value is written out here (the config's values, the metadata keys, the file
errors), not taken from the module: the end-to-end deploy tests build real exports; these check
each field and each refusal of the contract on its own.
"""
import dataclasses
import json
import re

import onnx
import openvino as ov
import pytest
from onnx import TensorProto, helper

import resnext_det
from resnext_det.deploy.contract import (
    Contract,
    DeployError,
    expected_image_message,
    load_onnx,
    load_openvino_ir,
    model_format,
    read_contract,
    read_contract_bytes,
    save_openvino_ir,
    short_error,
)

KEY = "resnext_det.contract"  # the metadata key every export carries (docs/DEPLOY.md)


def _cfg():
    cfg = resnext_det.get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.PIXEL_MEAN = [1.0, 2.0, 3.0]
    cfg.MODEL.PIXEL_STD = [4.0, 5.0, 6.0]
    cfg.INPUT.MIN_SIZE_TEST = 320
    cfg.INPUT.MAX_SIZE_TEST = 512
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 7
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.3
    cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.6
    cfg.TEST.DETECTIONS_PER_IMAGE = 50
    return cfg


def _contract(**changes):
    c = Contract(input_format="RGB", pixel_mean=[1.0, 2.0, 3.0], pixel_std=[4.0, 5.0, 6.0], min_size_test=320,
                 max_size_test=512, size_divisibility=32, num_classes=7, class_names=["a", "b"],
                 meta_architecture="GeneralizedRCNN (StandardROIHeads)", score_thresh_test=0.3,
                 nms_thresh_test=0.6, detections_per_image=50, opset=17, config="MODEL: {}\n")
    return dataclasses.replace(c, **changes)


BOX = [1.0001, 2.0002, 3.0003, 4.0004]
FIX = ("; give a model written by tools/export.py: model.onnx, or model_int8.xml with --int8 (python "
       "tools/export.py --config-file CFG --output DIR MODEL.WEIGHTS W.pth)")


def _graph(outputs=("boxes", "scores", "classes"), inputs=("image",), nodes=True):
    """image (3, H, W) -> boxes (1, 4), scores (1,), classes (1,): the export's signature."""
    mean = helper.make_node("ReduceMean", [inputs[0]], ["m"], keepdims=0)
    # 1.0001 ...: float32 values that float16 cannot hold (an IR written with fp16 weights shows)
    b = helper.make_node("Constant", [], ["b0"], value=helper.make_tensor("b", TensorProto.FLOAT, [1, 4], BOX))
    s = helper.make_node("Constant", [], ["s0"], value=helper.make_tensor("s", TensorProto.FLOAT, [1], [0.5]))
    c = helper.make_node("Constant", [], [outputs[2]], value=helper.make_tensor("c", TensorProto.INT64, [1], [3]))
    mb = helper.make_node("Mul", ["b0", "m"], [outputs[0]])
    ms = helper.make_node("Mul", ["s0", "m"], [outputs[1]])
    graph = helper.make_graph(
        [mean, b, s, c, mb, ms] if nodes else [], "g",
        [helper.make_tensor_value_info(inputs[0], TensorProto.FLOAT, [3, "h", "w"])],
        [helper.make_tensor_value_info(outputs[0], TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info(outputs[1], TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info(outputs[2], TensorProto.INT64, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _write(model, path, contract=None, text=None):
    if contract is not None or text is not None:
        helper.set_model_props(model, {KEY: text if text is not None else json.dumps(dataclasses.asdict(contract))})
    onnx.save(model, str(path))
    return str(path)


# ----------------------------------------------------------------------------- Contract
def test_from_cfg_reads_every_field():
    cfg = _cfg()
    c = Contract.from_cfg(cfg, 64, class_names=("person", 2), opset=18)
    assert (c.input_format, c.pixel_mean, c.pixel_std) == ("RGB", [1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert (c.min_size_test, c.max_size_test, c.size_divisibility, c.num_classes) == (320, 512, 64, 7)
    assert c.class_names == ["person", "2"] and c.opset == 18 and c.precision == "fp32"
    assert (c.score_thresh_test, c.nms_thresh_test, c.detections_per_image) == (0.3, 0.6, 50)
    assert c.meta_architecture == "GeneralizedRCNN (StandardROIHeads)"
    assert c.config == cfg.dump() and "MIN_SIZE_TEST: 320" in c.config
    assert c.version == 1
    two = Contract.from_cfg(cfg, 32, meta_architecture="TwoStageDetector")
    assert two.meta_architecture == "TwoStageDetector (StandardROIHeads)"
    assert two.class_names == [] and two.opset == 17


def test_mismatches_names_each_differing_field():
    c = Contract.from_cfg(_cfg(), 32)
    assert c.mismatches(_cfg()) == []
    for key, value, line in [
        ("INPUT.FORMAT", "BGR", "INPUT.FORMAT: model RGB, config BGR"),
        ("MODEL.PIXEL_MEAN", [1.0, 2.0, 9.0], "MODEL.PIXEL_MEAN: model [1.0, 2.0, 3.0], config [1.0, 2.0, 9.0]"),
        ("MODEL.PIXEL_STD", [4.0, 5.0, 7.0], "MODEL.PIXEL_STD: model [4.0, 5.0, 6.0], config [4.0, 5.0, 7.0]"),
        ("INPUT.MIN_SIZE_TEST", 300, "INPUT.MIN_SIZE_TEST: model 320, config 300"),
        ("INPUT.MAX_SIZE_TEST", 500, "INPUT.MAX_SIZE_TEST: model 512, config 500"),
        ("MODEL.ROI_HEADS.NUM_CLASSES", 8, "MODEL.ROI_HEADS.NUM_CLASSES: model 7, config 8"),
    ]:
        cfg = _cfg()
        cfg.merge_from_list([key, str(value) if not isinstance(value, list) else str(tuple(value))])
        assert c.mismatches(cfg) == [line], key
    cfg = _cfg()  # thresholds and the detections cap are not preprocessing: no mismatch
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST, cfg.TEST.DETECTIONS_PER_IMAGE = 0.9, 10
    assert c.mismatches(cfg) == []
    cfg.INPUT.FORMAT, cfg.INPUT.MIN_SIZE_TEST = "BGR", 1
    assert c.mismatches(cfg) == ["INPUT.FORMAT: model RGB, config BGR", "INPUT.MIN_SIZE_TEST: model 320, config 1"]


def test_metadata_holds_the_json_and_each_field():
    c = _contract()
    props = c.metadata()
    assert json.loads(props[KEY]) == dataclasses.asdict(c)
    assert props["resnext_det.input_format"] == "RGB"  # strings as they are
    assert props["resnext_det.pixel_mean"] == "[1.0, 2.0, 3.0]"  # the rest as JSON
    assert props["resnext_det.num_classes"] == "7" and props["resnext_det.class_names"] == '["a", "b"]'
    assert "resnext_det.config" not in props  # the YAML only inside the JSON
    assert len(props) == 1 + len(dataclasses.fields(Contract)) - 1


# ----------------------------------------------------------------------------- ONNX files
def test_load_onnx_returns_the_stored_contract(tmp_path):
    c = _contract()
    path = _write(_graph(), tmp_path / "m.onnx", c)
    model, got = load_onnx(path)
    assert got == c and [o.name for o in model.graph.output] == ["boxes", "scores", "classes"]
    assert read_contract(path) == c
    assert read_contract_bytes(open(path, "rb").read()) == c
    # keys a newer writer adds are ignored (an older reader still reads the file)
    text = json.dumps(dict(dataclasses.asdict(c), added_later=1))
    assert load_onnx(_write(_graph(), tmp_path / "newer.onnx", text=text))[1] == c


@pytest.mark.parametrize("case,error,match", [
    ("missing", FileNotFoundError, r"exported model '.*missing\.onnx' not found; export one with tools/export\.py"),
    ("empty", DeployError, r"empty\.onnx: the file is empty; give a model written by tools/export\.py"),
    ("garbage", DeployError, r"garbage\.onnx: not a readable ONNX file \(truncated or another format: "),
    ("no nodes", DeployError, r"no nodes\.onnx: not a readable ONNX file \(no graph"),
    ("no contract", DeployError, r"without resnext_det's preprocessing contract .*'resnext_det\.contract'"),
    ("bad json", DeployError, r"its 'resnext_det\.contract' metadata is unreadable"),
    ("bad field", DeployError, r"its 'resnext_det\.contract' metadata is unreadable"),
    ("outputs", DeployError, r"graph inputs \['image'\] / outputs \['b', 's', 'c'\]; expected \['image'\] / "
                             r"\['boxes', 'scores', 'classes'\]"),
    ("inputs", DeployError, r"graph inputs \['x'\] / outputs"),
    ("checker", DeployError, r"onnx\.checker rejects it: "),
])
def test_load_onnx_refusals_name_the_file_and_the_fix(case, error, match, tmp_path):
    path = tmp_path / f"{case}.onnx"
    c = _contract()
    if case == "empty":
        path.write_bytes(b"")
    elif case == "garbage":
        path.write_bytes(b"\x12\x34 not a protobuf at all \xff" * 8)
    elif case == "no nodes":
        _write(_graph(nodes=False), path, c)
    elif case == "no contract":
        _write(_graph(), path)
    elif case == "bad json":
        _write(_graph(), path, text="{not json")
    elif case == "bad field":
        _write(_graph(), path, text=json.dumps({"input_format": "RGB"}))  # required fields missing
    elif case == "outputs":
        _write(_graph(outputs=("b", "s", "c")), path, c)
    elif case == "inputs":
        _write(_graph(inputs=("x",)), path, c)
    elif case == "checker":
        model = _graph()
        model.graph.node[0].op_type = "NoSuchOp"
        _write(model, path, c)
    with pytest.raises(error, match=match) as e:
        load_onnx(str(path))
    assert str(path) in str(e.value)
    if case in ("garbage", "checker"):  # the library's own error, by its type and first line
        assert re.search(r"(format|rejects it): \w+(Error|Exception): \S", str(e.value)), str(e.value)
    if case == "empty":
        assert str(e.value) == f"{path}: the file is empty" + FIX
    if case == "no contract":
        assert str(e.value) == (f"{path}: an ONNX model without resnext_det's preprocessing contract in its metadata "
                                "('resnext_det.contract': not exported by this project)" + FIX)
        with pytest.raises(DeployError) as e:
            read_contract_bytes(path.read_bytes())
        assert str(e.value).startswith("<exported bytes>: an ONNX model without resnext_det's preprocessing contract")


def test_model_format_by_suffix():
    assert model_format("a/model.onnx") == "onnx"
    assert model_format("a/model_int8.XML") == "openvino_ir"
    with pytest.raises(DeployError) as e:
        model_format("model.pt")
    assert str(e.value) == ("model.pt: not an exported model file; give model.onnx (tools/export.py) or an OpenVINO "
                            "IR model_int8.xml (tools/export.py --int8)")
    with pytest.raises(DeployError, match="model.pt"):
        read_contract("model.pt")


# ----------------------------------------------------------------------------- OpenVINO IR
def test_openvino_ir_round_trip_and_refusals(tmp_path):
    c = _contract(precision="int8")
    model = ov.Core().read_model(_write(_graph(), tmp_path / "m.onnx", c))
    xml = str(tmp_path / "ir" / "model_int8.xml")
    assert save_openvino_ir(model, c, xml) == xml
    assert sorted(p.name for p in (tmp_path / "ir").iterdir()) == ["model_int8.bin", "model_int8.xml"]
    ir, got = load_openvino_ir(xml)
    assert got == c and read_contract(xml) == c
    assert [o.get_any_name() for o in ir.outputs] == ["boxes", "scores", "classes"]
    import numpy as np

    boxes = ov.Core().compile_model(ir, "CPU")(np.ones((3, 4, 5), np.float32))["boxes"]  # mean 1: the constant
    assert boxes.tolist() == [np.float32(BOX).tolist()]  # fp32 weights, not rounded to fp16
    assert not [p for p in (tmp_path / "ir").iterdir() if p.name.startswith(".")]  # no temporary left
    with pytest.raises(DeployError, match=r"an OpenVINO IR is written to a \.xml path"):
        save_openvino_ir(model, c, str(tmp_path / "model.onnx"))
    with pytest.raises(FileNotFoundError, match=r"nothing\.xml' not found; write one with tools/export\.py --int8"):
        load_openvino_ir(str(tmp_path / "nothing.xml"))
    (tmp_path / "ir" / "model_int8.bin").rename(tmp_path / "ir" / "moved.bin")
    with pytest.raises(FileNotFoundError) as e:
        load_openvino_ir(xml)
    bin_path = str(tmp_path / "ir" / "model_int8.bin")
    assert str(e.value) == (f"{xml}: its weights file {bin_path!r} is missing (an IR is the .xml and the .bin "
                            "beside it)")
    plain = str(tmp_path / "plain.xml")  # an IR without the contract
    ov.save_model(ov.Core().read_model(_write(_graph(), tmp_path / "p.onnx")), plain)
    with pytest.raises(DeployError, match=r"plain\.xml: an OpenVINO IR without resnext_det's preprocessing "
                                          r"contract in its rt_info \(resnext_det/contract"):
        load_openvino_ir(plain)
    (tmp_path / "junk.xml").write_text("<net>")
    (tmp_path / "junk.bin").write_bytes(b"")
    with pytest.raises(DeployError, match=r"junk\.xml: OpenVINO cannot read it \(\w+: \S"):
        load_openvino_ir(str(tmp_path / "junk.xml"))
    bad = ov.Core().read_model(_write(_graph(), tmp_path / "b.onnx"))
    bad.set_rt_info("{not json", ["resnext_det", "contract"])
    ov.save_model(bad, str(tmp_path / "bad.xml"))
    with pytest.raises(DeployError, match=r"bad\.xml: its 'resnext_det\.contract' metadata is unreadable"):
        load_openvino_ir(str(tmp_path / "bad.xml"))
    other = ov.Core().read_model(_write(_graph(outputs=("b", "s", "c")), tmp_path / "o.onnx"))
    save_openvino_ir(other, c, str(tmp_path / "other.xml"))
    with pytest.raises(DeployError, match=r"other\.xml: graph inputs \['image'\] / outputs \['b', 's', 'c'\]"):
        load_openvino_ir(str(tmp_path / "other.xml"))


# ----------------------------------------------------------------------------- messages
def test_short_error_and_expected_image_message():
    assert short_error(ValueError("first line\n  at frame 1\n  at frame 2")) == "ValueError: first line"
    assert short_error(RuntimeError("  padded  ")) == "RuntimeError: padded"
    assert short_error(KeyError()) == "KeyError: "
    bgr, rgb = expected_image_message("BGR"), expected_image_message("RGB")
    assert bgr == ("an HxWx3 uint8 numpy array in BGR channel order (cv2.imread's order; "
                   "input_format='RGB' for RGB arrays; H, W >= 1)")
    assert rgb == ("an HxWx3 uint8 numpy array in RGB channel order (as set by input_format='RGB'; the "
                   "default is BGR, cv2.imread's order; H, W >= 1)")
