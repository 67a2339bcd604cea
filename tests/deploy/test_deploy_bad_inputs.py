"""Bad input to the deploy tools: each fails with one error naming what and why, and nothing
is left at the output path."""
import os

import numpy as np
import pytest
import torch
from torch import nn

from resnext_det.deploy import DeployError, DeployedPredictor

# one pytest-xdist worker runs this module: its module-scoped fixtures are costly (tools/install.sh
# passes --dist loadgroup)
pytestmark = pytest.mark.xdist_group("test_deploy_bad_inputs")

TINY_FPN = [
    "RESNEXT_PLAN.MODE", "joint",
    "MODEL.RESNEXT.DEPTH", "50", "MODEL.RESNEXT.CARDINALITY", "4", "MODEL.RESNEXT.BOTTLENECK_WIDTH", "4",
    "MODEL.RESNEXT.STEM_OUT_CHANNELS", "16", "MODEL.RESNEXT.RES2_OUT_CHANNELS", "32",
    "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "TEST.DETECTIONS_PER_IMAGE", "10",
]


def _cfg(*extra):
    import resnext_det

    cfg = resnext_det.get_cfg()
    cfg.merge_from_file(resnext_det.get_config_file("Base-ResNeXt-FPN.yaml"))
    cfg.merge_from_list(TINY_FPN + list(extra))
    return cfg


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny random-weights FPN export (bad-input tests need a real file to spoil)."""
    from resnext_det.deploy import export_onnx

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("export")
    return export_onnx(_cfg(), str(out))["path"]


@pytest.fixture(scope="module")
def converted(exported):
    """The export as an OpenVINO model (ov.convert_model: seconds), each test taking a clone."""
    import openvino as ov

    return ov.convert_model(exported)


def _only_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


# ------------------------------------------------------------------ cannot export
class _CumulativeMaxBoxHead(nn.Module):
    """The box head followed by a running max over features: an op ONNX has no export for."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.cummax(self.inner(x), dim=1)[0]


def test_unsupported_op_is_named_and_nothing_written(tmp_path, capfd):
    from detectron2.modeling import build_model

    from resnext_det.deploy import export_onnx

    model = build_model(_cfg()).eval()
    model.roi_heads.box_head = _CumulativeMaxBoxHead(model.roi_heads.box_head)
    with pytest.raises(DeployError, match=r"aten::cummax.*not supported") as err:
        export_onnx(_cfg(), str(tmp_path / "out"), model=model)
    assert "\n" not in str(err.value)
    assert "Torch IR graph" not in capfd.readouterr().err  # the exporter's graph dump is held back
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


@pytest.mark.parametrize("opts, named", [
    (["MODEL.MASK_ON", "True"], "MODEL.MASK_ON=True is not supported by the export (the graph returns boxes, "
                                "scores and classes only); set MODEL.MASK_ON False"),
    (["MODEL.META_ARCHITECTURE", "ProposalNetwork"], "MODEL.META_ARCHITECTURE"),
    (["MODEL.WEIGHTS", "/nonexistent/model_final.pth"], "/nonexistent/model_final.pth"),
])
def test_export_tool_refuses_with_one_line(tmp_path, capsys, opts, named):
    from resnext_det.apps import export as export_cli

    out = tmp_path / "out"
    rc = export_cli.cli(["--config-file", "Base-ResNeXt-FPN.yaml", "--output", str(out)]
                        + TINY_FPN + ["OUTPUT_DIR", str(tmp_path)] + opts)
    assert rc == 2
    line = _only_line(capsys.readouterr().err)
    assert line.startswith("export.py: error:") and named in line
    assert not (out / "model.onnx").exists()


def test_disagreeing_export_is_not_written(tmp_path, monkeypatch):
    """A graph that does not reproduce eager stops the export; no file, no temporary left."""
    from resnext_det.deploy import export as export_mod

    monkeypatch.setattr(export_mod, "compare_detections",
                        lambda *a, **k: {"ok": False, "why": "3 detections instead of 4"})
    out = tmp_path / "out"
    with pytest.raises(DeployError, match="disagrees with eager.*3 detections instead of 4"):
        export_mod.export_onnx(_cfg(), str(out))
    assert not out.exists() or os.listdir(out) == []


def test_low_opset_refused(tmp_path):
    from resnext_det.deploy import export_onnx

    with pytest.raises(DeployError, match="opset 13.*RoiAlign.*>= 16"):
        export_onnx(_cfg(), str(tmp_path), opset=13)


# ------------------------------------------------------------------ bad model files
def _foreign_onnx(path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), str(path))


def _spoil(kind, exported, tmp_path):
    path = tmp_path / f"{kind}.onnx"
    if kind == "missing":
        return str(path)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = open(exported, "rb").read()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "foreign":
        _foreign_onnx(path)
    elif kind == "not_onnx":
        path.write_bytes(b"PK\x03\x04 a zip file, not a model" * 10)
    return str(path)


BAD_FILES = {"missing": "not found", "empty": "empty", "truncated": "not a readable ONNX",
             "foreign": "without resnext_det's preprocessing contract", "not_onnx": "not a readable ONNX"}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_predictor_names_bad_file(exported, tmp_path, kind, runtime):
    path = _spoil(kind, exported, tmp_path)
    with pytest.raises((FileNotFoundError, DeployError)) as err:
        DeployedPredictor(path, runtime=runtime)
    assert path in str(err.value) and BAD_FILES[kind] in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["missing", "truncated", "foreign"])
def test_eval_only_names_bad_file(exported, tmp_path, capsys, kind):
    from resnext_det import cli

    path = _spoil(kind, exported, tmp_path)
    rc = cli.cli(["--config", "Base-ResNeXt-FPN.yaml", "--eval-only"] + TINY_FPN + [
        "RESNEXT_PLAN.SYNTHETIC.ENABLED", "True", "RESNEXT_PLAN.SYNTHETIC.NUM_TRAIN", "4",
        "RESNEXT_PLAN.SYNTHETIC.NUM_VAL", "2", "RESNEXT_PLAN.SYNTHETIC.IMAGE_SIZE", "64",
        "OUTPUT_DIR", str(tmp_path / "eval"), "MODEL.WEIGHTS", path])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("train_net.py: error:") and path in err
    assert not (tmp_path / "eval" / "inference" / "eval_results.json").exists()


def test_eval_only_refuses_other_contract(exported, tmp_path):
    """An export evaluated with a config of another input format/size is refused, named."""
    from resnext_det.apps.evaluate import check_exported_model

    with pytest.raises(DeployError, match=r"INPUT.FORMAT: model RGB, config BGR.*INPUT.MIN_SIZE_TEST"):
        check_exported_model(_cfg("INPUT.FORMAT", "BGR", "INPUT.MIN_SIZE_TEST", "80"), exported)


# ------------------------------------------------------------------ bad images / settings
@pytest.mark.parametrize("image, shown", [
    (np.zeros((64, 64, 3), dtype=np.float32), "dtype float32"),
    (np.zeros((64, 64), dtype=np.uint8), "shape (64, 64)"),
    (np.zeros((64, 64, 4), dtype=np.uint8), "shape (64, 64, 4)"),
    (np.zeros((3, 64, 64), dtype=np.uint8), "shape (3, 64, 64)"),
    (np.zeros((0, 64, 3), dtype=np.uint8), "shape (0, 64, 3)"),
    (torch.zeros(64, 64, 3, dtype=torch.uint8), "Tensor"),
])
def test_predictor_names_expected_image(exported, image, shown):
    predictor = DeployedPredictor(exported, runtime="onnxruntime", num_threads=1)
    # the caller's order (BGR by default, as DefaultPredictor), not the RGB model's
    with pytest.raises(DeployError, match=r"expects an HxWx3 uint8 numpy array in BGR channel order "
                                          r"\(cv2.imread's order; input_format='RGB'") as err:
        predictor(image)
    assert shown in str(err.value)
    with pytest.raises(DeployError, match=r"array in RGB channel order \(as set by input_format='RGB'"):
        DeployedPredictor(exported, runtime="onnxruntime", num_threads=1, input_format="RGB")(image)


@pytest.mark.parametrize("kwargs, named", [
    ({"runtime": "tensorrt"}, "runtime='tensorrt'"),
    ({"runtime": "onnxruntime", "precision": "bf16"}, "precision='bf16'"),
    ({"runtime": "openvino", "precision": "int4"}, "precision='int4'"),
    ({"runtime": "onnxruntime", "num_threads": 0}, "num_threads=0"),
    ({"input_format": "YUV"}, "input_format='YUV' is not valid; use 'BGR'.*or 'RGB'"),
    ({"input_format": None}, "input_format=None is not valid"),
])
def test_predictor_names_bad_setting(exported, kwargs, named):
    with pytest.raises(DeployError, match=named.replace("(", r"\(").replace("[", r"\[")):
        DeployedPredictor(exported, **kwargs)


def test_bgr_default_flips_channels(exported):
    """On an RGB model, the default (BGR, cv2.imread's order) = the RGB image reversed given
    with input_format='RGB'."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
    rgb = DeployedPredictor(exported, num_threads=1, input_format="RGB")(img)["instances"]
    bgr = DeployedPredictor(exported, num_threads=1)(img[:, :, ::-1].copy())["instances"]
    torch.testing.assert_close(bgr.pred_boxes.tensor, rgb.pred_boxes.tensor)


# ------------------------------------------------------------------ runtime options, IR files
@pytest.mark.parametrize("kwargs, named", [
    ({"runtime": "openvino", "shape_mode": "fixed"}, r"shape_mode='fixed'.*'dynamic'.*'static'"),
    ({"runtime": "onnxruntime", "shape_mode": "static"}, r"shape_mode do not apply to runtime 'onnxruntime'"),
    ({"runtime": "openvino", "allow_spinning": True}, r"allow_spinning do not apply to runtime 'openvino'"),
    ({"runtime": "onnxruntime", "allow_spinning": "yes"}, r"allow_spinning='yes'"),
    ({"runtime": "openvino", "cache_size": 0}, r"cache_size=0"),
    ({"runtime": "tensorrt"}, r"runtime='tensorrt'.*'auto'"),
    ({"num_threads": 0}, r"num_threads=0"),
])
def test_bad_runtime_options_are_named(exported, kwargs, named):
    with pytest.raises(DeployError, match=named):
        DeployedPredictor(exported, **kwargs)


def test_static_shapes_equal_dynamic_and_the_cache_is_bounded(exported):
    from resnext_det.deploy.runtimes import make_runtime

    dyn = make_runtime("openvino", exported, 1, shape_mode="dynamic")
    st = make_runtime("openvino", exported, 1, shape_mode="static", cache_size=2)
    g = np.random.default_rng(0)
    shapes = [(64, 96), (64, 80), (64, 96), (64, 70), (64, 96)]
    for h, w in shapes:
        x = g.integers(0, 256, (3, h, w)).astype(np.float32)
        a, b = dyn.run(x), st.run(x)
        assert a[0].shape == b[0].shape and np.abs(a[0] - b[0]).max() <= 1e-3
    # least recently used goes: 64x80 is dropped for 64x70, 64x96 (used again) stays;
    # compiles: the dynamic model at start + 64x96, 64x80, 64x70
    assert [k[0][1][1:] for k in st._static] == [(64, 70), (64, 96)]
    assert st.compiles == 4


def test_ir_files_bad_input(exported, converted, tmp_path):
    import openvino as ov

    from resnext_det.deploy import read_contract
    from resnext_det.deploy.contract import model_format

    with pytest.raises(DeployError, match=r"model\.pt: not an exported model file.*model_int8\.xml"):
        model_format(str(tmp_path / "model.pt"))
    foreign = str(tmp_path / "foreign.xml")
    ov.save_model(converted.clone(), foreign)  # no contract in rt_info
    with pytest.raises(DeployError, match=r"foreign\.xml: an OpenVINO IR without resnext_det's"):
        read_contract(foreign)
    lonely = tmp_path / "lonely.xml"
    lonely.write_text("<net/>")
    with pytest.raises(FileNotFoundError, match=r"lonely\.bin"):
        read_contract(str(lonely))


def test_int8_ir_refuses_onnxruntime(exported, converted, tmp_path):
    """An OpenVINO IR as --int8 writes it (model_int8.xml + .bin, the contract with precision
    int8) is refused by ONNX Runtime and run in OpenVINO by default. The refusal goes by the
    file's format, so the IR is the export converted as it is, without NNCF's quantization
    (seconds of work; test_deploy_parity checks NNCF's int8 IR from tools/export.py --int8)."""
    from resnext_det.deploy import read_contract
    from resnext_det.deploy.contract import save_openvino_ir
    from resnext_det.deploy.quantize import quantize_int8_nncf

    contract = read_contract(exported)
    contract.precision = "int8"
    xml = save_openvino_ir(converted.clone(), contract, str(tmp_path / "model_int8.xml"))
    with pytest.raises(DeployError, match=r"runs in OpenVINO only"):
        DeployedPredictor(xml, runtime="onnxruntime")
    p = DeployedPredictor(xml)
    assert p.runtime == "openvino" and "OpenVINO IR" in p.runtime_reason
    assert p.contract.precision == "int8"
    g = np.random.default_rng(0)
    images = [g.integers(0, 256, (3, 64, w)).astype(np.float32) for w in (64, 96)]
    with pytest.raises(DeployError, match=r"--int8-preset 'fast'"):
        quantize_int8_nncf(exported, images, str(tmp_path / "x.xml"), preset="fast")
    assert not (tmp_path / "x.xml").exists()
