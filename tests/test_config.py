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


def test_demo_settings_only_in_a_demos_config(train_net):
    """RESNEXT_PLAN.DEMO (what the --demo report shows) is not in the core config; train_net
    adds it for a demo's config, where an override of it then works."""
    import resnext_det

    assert "DEMO" not in resnext_det.get_cfg().RESNEXT_PLAN
    args = train_net.get_parser().parse_args(["--config", "demo_tiny_X_FPN_synthetic.yaml",
                                              "RESNEXT_PLAN.DEMO.NUM_IMAGES", "2"])
    assert train_net.setup_cfg(args).RESNEXT_PLAN.DEMO.NUM_IMAGES == 2
    args = train_net.get_parser().parse_args(["--config", "faster_rcnn_X101_32x4d.yaml"])
    assert "DEMO" not in train_net.setup_cfg(args).RESNEXT_PLAN


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


# ---- every default, every resolved field and every message, written out ---------------------

def test_defaults_written_out():
    r = _cfg().MODEL.RESNEXT
    want = {"PRESET": "", "DEPTH": 0, "CARDINALITY": 0, "BOTTLENECK_WIDTH": 0, "NORM": "FrozenBN",
            "STRIDE_IN_1X1": False, "OUT_FEATURES": ["res2", "res3", "res4", "res5"], "RES5_DILATION": 1,
            "STEM_OUT_CHANNELS": 64, "RES2_OUT_CHANNELS": 256, "BLOCK_FORM": "grouped"}
    for key, value in want.items():
        assert r[key] == value and type(r[key]) is type(value), key
    fast = {"INFERENCE": False, "PRECISION": "fp32", "CHANNELS_LAST_TRAIN": "auto", "FOLD_FROZEN_BN_TRAIN": "auto",
            "AUTOCAST_TRAIN": "", "MATRIX_ROI_ALIGN_TRAIN": "auto"}
    assert dict(r.FAST) == fast and type(r.FAST.INFERENCE) is bool


def test_every_resolved_field():
    from resnext_det.config import ResNeXtSpec

    assert resolve_resnext_spec(_cfg()) == ResNeXtSpec(
        depth=50, cardinality=32, bottleneck_width=4, norm="FrozenBN", stride_in_1x1=False,
        out_features=("res2", "res3", "res4", "res5"), res5_dilation=1, stem_out_channels=64,
        res2_out_channels=256, block_form="grouped", freeze_at=2, preset="")  # detectron2's FREEZE_AT 2
    cfg = _cfg(PRESET="X-101-32x8d", NORM="BN", STRIDE_IN_1X1=True, OUT_FEATURES=["res3", "res5"],
               RES5_DILATION=2, STEM_OUT_CHANNELS=1, RES2_OUT_CHANNELS=128, BLOCK_FORM="split")
    cfg.MODEL.BACKBONE.FREEZE_AT = 5
    assert resolve_resnext_spec(cfg) == ResNeXtSpec(
        depth=101, cardinality=32, bottleneck_width=8, norm="BN", stride_in_1x1=True,
        out_features=("res3", "res5"), res5_dilation=2, stem_out_channels=1, res2_out_channels=128,
        block_form="split", freeze_at=5, preset="X-101-32x8d")
    # the C4 head asks for res4 only, whatever OUT_FEATURES says
    assert resolve_resnext_spec(cfg, out_features=["res4"]).out_features == ("res4",)
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    assert resolve_resnext_spec(cfg).freeze_at == 0


_FEATS = "('stem', 'res2', 'res3', 'res4', 'res5')"
_PRESETS = ("X-50-32x4d, X-101-32x4d, X-101-32x8d, X-101-64x4d, X-152-32x4d, X-152-32x8d, X-50-2x40d, "
            "X-50-4x24d, X-50-8x14d, R-50, R-101, R-152")


@pytest.mark.parametrize("values,freeze_at,message", [
    ({"DEPTH": -1}, 2, "MODEL.RESNEXT.DEPTH=-1 is not valid; use a positive integer, or 0 to take it from PRESET"),
    ({"PRESET": "X-7"}, 2, f"MODEL.RESNEXT.PRESET='X-7' is not valid; known presets: {_PRESETS} (or '' for "
                           "explicit values)"),
    ({"OUT_FEATURES": []}, 2, f"MODEL.RESNEXT.OUT_FEATURES=[] is not valid; name at least one of {_FEATS}"),
    ({"OUT_FEATURES": ["res6"]}, 2, "MODEL.RESNEXT.OUT_FEATURES=['res6'] is not valid; 'res6' is unknown; "
                                    f"allowed: {_FEATS}"),
    ({"RES5_DILATION": 3}, 2, "MODEL.RESNEXT.RES5_DILATION=3 is not valid; use 1 or 2"),
    ({"STEM_OUT_CHANNELS": 0}, 2, "MODEL.RESNEXT.STEM_OUT_CHANNELS=0 is not valid; use a positive integer"),
    ({"RES2_OUT_CHANNELS": -4}, 2, "MODEL.RESNEXT.RES2_OUT_CHANNELS=-4 is not valid; use a positive integer"),
    ({}, 6, "MODEL.BACKBONE.FREEZE_AT=6 is not valid; use 0 (train all) .. 5 (1 freezes the stem, k freezes "
            "the stem and res2..res{k})"),
])
def test_error_messages_exactly(values, freeze_at, message):
    cfg = _cfg(**values)
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    with pytest.raises(ResNeXtConfigError) as e:
        resolve_resnext_spec(cfg)
    assert str(e.value) == message


def test_missing_node_and_device_messages_exactly(monkeypatch):
    import torch

    with pytest.raises(ResNeXtConfigError) as e:
        resolve_resnext_spec(get_cfg())
    assert str(e.value) == ("cfg.MODEL.RESNEXT is missing: call resnext_det.add_resnext_config(cfg) before "
                            "merge_from_file() (or start from resnext_det.get_cfg())")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = _cfg()
    cfg.MODEL.DEVICE = "cuda:1"
    with pytest.raises(ResNeXtConfigError) as e:
        resolve_resnext_spec(cfg)
    assert str(e.value) == ("MODEL.DEVICE='cuda:1' but this machine has no usable CUDA device; set MODEL.DEVICE "
                            "cpu (or leave it unset: resnext_det picks cuda when present, else cpu)")


def test_no_cuda_is_logged_once_per_process(monkeypatch, caplog):
    import logging

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(resnext_det.config, "_DEVICE_LOGGED", False)
    with caplog.at_level(logging.INFO, logger="resnext_det.config"):
        assert resnext_det.config.default_device() == "cpu"
        assert resnext_det.config.default_device() == "cpu"
    assert [r.getMessage() for r in caplog.records] == ["MODEL.DEVICE: no CUDA device found, using cpu"]


def test_config_file_lookup_order_and_messages(tmp_path):
    here = os.path.dirname(os.path.abspath(resnext_det.config.__file__))
    shipped = os.path.join(os.path.dirname(here), "configs")  # a source checkout's configs/
    path = resnext_det.get_config_file("Base-ResNeXt-FPN.yaml")
    assert os.path.isabs(path) and path == os.path.join(shipped, "Base-ResNeXt-FPN.yaml")
    with pytest.raises(FileNotFoundError) as e:
        resnext_det.get_config_file("nope.yaml")
    assert str(e.value) == (f"config 'nope.yaml' not found; looked in: {os.path.join(here, 'model_configs', 'nope.yaml')}"
                            f", {os.path.join(shipped, 'nope.yaml')}")
    from resnext_det.config import load_config, resolve_config_file

    assert resolve_config_file("some/dir/Base-ResNeXt-FPN.yaml") == path  # a shipped config's bare name
    own = tmp_path / "own.yaml"
    own.write_text("MODEL:\n  RESNEXT:\n    DEPTH: 101\n")
    assert resolve_config_file(str(own)) == str(own)
    with pytest.raises(FileNotFoundError) as e:
        resolve_config_file("nope.yaml")
    assert str(e.value) == (f"config file 'nope.yaml' not found (neither as a path nor as a shipped config in "
                            f"{shipped})")
    assert load_config(str(own), ["MODEL.RESNEXT.CARDINALITY", "8"]).MODEL.RESNEXT.CARDINALITY == 8
    with pytest.raises(ResNeXtConfigError) as e:
        load_config(str(own), ["MODEL.RESNEXT.CARDINALITY", "8", "SOLVER.BASE_LR"])
    assert str(e.value) == "trailing options must be KEY VALUE pairs; 'SOLVER.BASE_LR' has no value"
    with pytest.raises(ResNeXtConfigError) as e:
        load_config(str(own), ["SOLVER.NO_SUCH_KEY", "1"])
    assert str(e.value).startswith("command-line option: ") and str(e.value).endswith(
        "(trailing options are KEY VALUE pairs of existing config keys, e.g. SOLVER.BASE_LR 0.01)")
    assert "SOLVER.NO_SUCH_KEY" in str(e.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  NO_SUCH_KEY: 1\n")
    with pytest.raises(ResNeXtConfigError) as e:
        load_config(str(bad))
    assert str(e.value).startswith(f"config file {str(bad)!r}: ") and "NO_SUCH_KEY" in str(e.value)
