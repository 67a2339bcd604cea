"""MODEL.RESNEXT: presets, explicit values, and clear errors for every bad value."""
import os

import pytest
from detectron2.config import get_cfg

import resnext_det
from resnext_det import PRESETS, ResNeXtConfigError, add_resnext_config, resolve_resnext_spec


def _cfg(**resnext):
    cfg = get_cfg()
    add_resnext_config(cfg)
    for k, v in resnext.items():
        cfg.MODEL.RESNEXT[k] = v
    return cfg


def test_node_has_all_keys():
    r = _cfg().MODEL.RESNEXT
    for key in ["PRESET", "DEPTH", "CARDINALITY", "BOTTLENECK_WIDTH", "NORM", "STRIDE_IN_1X1",
                "OUT_FEATURES", "RES5_DILATION", "STEM_OUT_CHANNELS", "RES2_OUT_CHANNELS",
                "BLOCK_FORM"]:
        assert key in r, key
    assert r.BLOCK_FORM == "grouped"


@pytest.mark.parametrize("name,expected", [
    ("X-50-32x4d", (50, 32, 4)), ("X-101-32x4d", (101, 32, 4)), ("X-101-32x8d", (101, 32, 8)),
    ("X-101-64x4d", (101, 64, 4)), ("X-152-32x8d", (152, 32, 8)),
])
def test_presets_resolve(name, expected):
    spec = resolve_resnext_spec(_cfg(PRESET=name))
    assert (spec.depth, spec.cardinality, spec.bottleneck_width) == expected
    assert spec.name == name
    # res2 bottleneck is C*d; widths double per stage
    assert spec.stage_channels(2) == (expected[1] * expected[2], 256)
    assert spec.stage_channels(5) == (expected[1] * expected[2] * 8, 2048)


def test_explicit_values_without_preset():
    spec = resolve_resnext_spec(_cfg(DEPTH=101, CARDINALITY=8, BOTTLENECK_WIDTH=14))
    assert (spec.depth, spec.cardinality, spec.bottleneck_width) == (101, 8, 14)
    assert spec.name == "X-101-8x14d"
    # unset values fall back to the ResNeXt-50 32x4d template
    spec = resolve_resnext_spec(_cfg())
    assert (spec.depth, spec.cardinality, spec.bottleneck_width) == (50, 32, 4)


def test_preset_agreeing_explicit_value_is_fine():
    spec = resolve_resnext_spec(_cfg(PRESET="X-101-32x8d", DEPTH=101, BOTTLENECK_WIDTH=8))
    assert spec.bottleneck_width == 8


def _assert_error(cfg, *fragments, out_features=None):
    with pytest.raises(ResNeXtConfigError) as e:
        resolve_resnext_spec(cfg, out_features=out_features)
    msg = str(e.value)
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


def test_unknown_preset():
    _assert_error(_cfg(PRESET="X-99-32x4d"), "MODEL.RESNEXT.PRESET", "X-99-32x4d", "X-101-32x4d")


@pytest.mark.parametrize("key,value,preset_value", [
    ("DEPTH", 50, "101"), ("CARDINALITY", 64, "32"), ("BOTTLENECK_WIDTH", 8, "4"),
])
def test_contradicting_preset(key, value, preset_value):
    msg = _assert_error(_cfg(PRESET="X-101-32x4d", **{key: value}),
                        f"MODEL.RESNEXT.{key}={value}", "X-101-32x4d", preset_value)
    assert "contradicts" in msg


def test_unsupported_depth():
    _assert_error(_cfg(DEPTH=34), "MODEL.RESNEXT.DEPTH", "34", "50", "101", "152")


def test_negative_cardinality():
    _assert_error(_cfg(CARDINALITY=-2), "MODEL.RESNEXT.CARDINALITY", "-2")


def test_unknown_out_feature():
    _assert_error(_cfg(OUT_FEATURES=["res4", "res6"]), "MODEL.RESNEXT.OUT_FEATURES", "res6", "res5")


def test_unknown_block_form():
    _assert_error(_cfg(BLOCK_FORM="grouped_fast"), "MODEL.RESNEXT.BLOCK_FORM", "grouped_fast", "split", "concat")


def test_unknown_norm():
    _assert_error(_cfg(NORM="InstanceNorm"), "MODEL.RESNEXT.NORM", "InstanceNorm", "FrozenBN")


@pytest.mark.parametrize("freeze_at", [-1, 6])
def test_freeze_at_out_of_range(freeze_at):
    cfg = _cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    _assert_error(cfg, "MODEL.BACKBONE.FREEZE_AT", str(freeze_at), "0", "5")


def test_bad_dilation():
    _assert_error(_cfg(RES5_DILATION=3), "MODEL.RESNEXT.RES5_DILATION", "3")


def test_missing_node_is_explained():
    with pytest.raises(ResNeXtConfigError, match="add_resnext_config"):
        resolve_resnext_spec(get_cfg())


def test_fpn_in_features_not_produced(tiny_resnext_cfg):
    from detectron2.modeling import build_backbone

    cfg = tiny_resnext_cfg()
    cfg.MODEL.RESNEXT.OUT_FEATURES = ["res4", "res5"]
    with pytest.raises(ResNeXtConfigError, match=r"MODEL.FPN.IN_FEATURES.*res2"):
        build_backbone(cfg)


def test_config_files_resolve_from_package():
    import os

    path = resnext_det.get_config_file("faster_rcnn_X101_32x4d.yaml")
    assert os.path.isfile(path)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        resnext_det.get_config_file("nope.yaml")


def test_all_paper_presets_present():
    for name in ["X-50-32x4d", "X-101-32x4d", "X-101-32x8d", "X-101-64x4d", "X-152-32x8d",
                 "X-50-2x40d", "X-50-4x24d", "X-50-8x14d", "R-50", "R-101"]:
        assert name in PRESETS


# ---- one entry point; CPU by default ------------------------------------------------------

def test_get_cfg_adds_every_node_the_project_configs_use():
    import resnext_det

    for name in sorted(os.listdir(os.path.dirname(resnext_det.get_config_file("Base-ResNeXt-FPN.yaml")))):
        if name.endswith(".yaml"):
            cfg = resnext_det.get_cfg()
            cfg.merge_from_file(resnext_det.get_config_file(name))  # KeyError on a missing node
            assert "RESNEXT" in cfg.MODEL and "RESNEXT_PLAN" in cfg
    # the same through add_resnext_config on detectron2's own get_cfg (the README's route)
    cfg = resnext_det.add_resnext_config(get_cfg())
    cfg.merge_from_file(resnext_det.get_config_file("faster_rcnn_X101_32x4d.yaml"))
    assert cfg.RESNEXT_PLAN.MODE == "two_stage"


def test_device_defaults_to_cpu_without_cuda_and_explicit_cuda_is_a_clear_error(monkeypatch, caplog):
    import logging

    import torch

    import resnext_det
    from detectron2.modeling import build_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="resnext_det"):
        monkeypatch.setattr(resnext_det.config, "_DEVICE_LOGGED", False)
        cfg = resnext_det.get_cfg()
    assert cfg.MODEL.DEVICE == "cpu"
    assert "no CUDA device found, using cpu" in caplog.text
    cfg.merge_from_file(resnext_det.get_config_file("demo_tiny_X_FPN_synthetic.yaml"))
    assert cfg.MODEL.DEVICE == "cpu"  # the project's configs leave the device to the machine
    assert next(build_model(cfg).parameters()).device.type == "cpu"
    cfg.MODEL.DEVICE = "cuda"
    with pytest.raises(ResNeXtConfigError, match=r"MODEL\.DEVICE='cuda' but this machine has no usable CUDA"):
        build_model(cfg)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resnext_det.get_cfg().MODEL.DEVICE == "cuda"


def test_train_net_explicit_cuda_without_gpu_is_one_line_error(train_net, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = train_net.cli(["--config", "demo_tiny_X_FPN_synthetic.yaml", "--dry-run", "MODEL.DEVICE", "cuda"])
    err = capsys.readouterr().err
    assert rc == 2 and "train_net.py: error: MODEL.DEVICE='cuda'" in err and "Traceback" not in err
