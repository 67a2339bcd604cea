"""Backbones: registration, output shapes, parameter counts, names, freezing."""
import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY

import resnext_det
from resnext_det import build_backbone_from_preset

FC_PARAMS = 2048 * 1000 + 1000  # the 1000-class classifier torchvision counts


def test_registered():
    assert BACKBONE_REGISTRY.get("build_resnext_backbone") is resnext_det.modeling.build_resnext_backbone
    assert BACKBONE_REGISTRY.get("build_resnext_fpn_backbone") is resnext_det.modeling.build_resnext_fpn_backbone
    assert ROI_HEADS_REGISTRY.get("ResNeXtRes5ROIHeads") is resnext_det.modeling.ResNeXtRes5ROIHeads


def test_bottom_up_output_shape_matches_outputs(tiny_resnext_cfg):
    cfg = tiny_resnext_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnext_backbone"
    cfg.MODEL.RESNEXT.OUT_FEATURES = ["stem", "res2", "res3", "res4", "res5"]
    model = build_backbone(cfg).eval()
    shapes = model.output_shape()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        out = model(x)
    assert set(out) == set(shapes) == {"stem", "res2", "res3", "res4", "res5"}
    expected = {"stem": (16, 4), "res2": (32, 4), "res3": (64, 8), "res4": (128, 16), "res5": (256, 32)}
    for name, (channels, stride) in expected.items():
        assert shapes[name].channels == channels == out[name].shape[1]
        assert shapes[name].stride == stride
        assert out[name].shape[2:] == (96 // stride, 128 // stride)


def test_fpn_output_shape_matches_outputs(tiny_resnext_cfg):
    model = build_backbone(tiny_resnext_cfg()).eval()
    shapes = model.output_shape()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 128))
    assert list(shapes) == ["p2", "p3", "p4", "p5", "p6"]
    for name, stride in zip(shapes, [4, 8, 16, 32, 64]):
        assert shapes[name].stride == stride
        assert shapes[name].channels == out[name].shape[1] == 32
        assert out[name].shape[2:] == (128 // stride, 128 // stride)
    assert model.size_divisibility == 32


def test_c4_backbone_stops_at_res4(tiny_resnext_cfg):
    cfg = tiny_resnext_cfg("faster_rcnn_X50_32x4d.yaml")
    model = build_backbone(cfg)
    assert list(model.output_shape()) == ["res4"]
    assert not hasattr(model, "res5")  # res5 lives in the RoI head
    assert model.output_shape()["res4"].stride == 16


def test_res5_dilation(tiny_resnext_cfg):
    cfg = tiny_resnext_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnext_backbone"
    cfg.MODEL.RESNEXT.RES5_DILATION = 2
    model = build_backbone(cfg).eval()
    assert model.output_shape()["res5"].stride == 16
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64))["res5"].shape[2:] == (4, 4)


@pytest.mark.parametrize("preset,expected", [
    ("X-50-32x4d", 25_028_904),
    ("X-101-32x8d", 88_791_336),
    ("X-101-64x4d", 83_455_272),
    ("X-101-32x4d", 44_177_704),
    ("R-50", 25_557_032),
])
def test_parameter_counts_equal_torchvision(preset, expected):
    model = build_backbone_from_preset(preset, norm="BN", out_features=["res5"])
    n = sum(p.numel() for p in model.parameters())
    assert n + FC_PARAMS == expected


def test_parameter_count_equals_live_torchvision_model():
    import torchvision

    tv = torchvision.models.resnext50_32x4d()
    ours = build_backbone_from_preset("X-50-32x4d", norm="BN", out_features=["res5"])
    assert sum(p.numel() for p in ours.parameters()) + FC_PARAMS == sum(p.numel() for p in tv.parameters())
    # shapes agree stage by stage (layerN <-> res{N+1})
    ours_shapes = sorted(tuple(p.shape) for n, p in ours.named_parameters())
    tv_shapes = sorted(tuple(p.shape) for n, p in tv.named_parameters() if not n.startswith("fc."))
    assert ours_shapes == tv_shapes


def test_detectron2_parameter_names():
    model = build_backbone_from_preset("X-50-32x4d", norm="FrozenBN")
    names = set(model.state_dict())
    for key in ["stem.conv1.weight", "stem.conv1.norm.weight", "res2.0.conv1.weight",
                "res2.0.conv1.norm.running_mean", "res2.0.conv2.weight", "res2.0.shortcut.weight",
                "res2.0.shortcut.norm.bias", "res3.0.conv3.norm.weight", "res5.2.conv3.weight"]:
        assert key in names, key
    # the grouped 3x3 has C groups of d channels
    assert model.res2[0].conv2.groups == 32
    assert tuple(model.res2[0].conv2.weight.shape) == (128, 4, 3, 3)


def test_names_equal_detectron2_stock_resnet():
    """Same names and shapes as detectron2's own grouped ResNet: its checkpoints load as-is."""
    from detectron2.config import get_cfg
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.NUM_GROUPS = 32
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 4
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False  # ResNeXt convention (detectron2 defaults to MSRA)
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    stock = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    ours = build_backbone_from_preset("X-50-32x4d", out_features=["res2", "res3", "res4", "res5"])
    s_stock, s_ours = stock.state_dict(), ours.state_dict()
    assert {k: tuple(v.shape) for k, v in s_stock.items()} == {k: tuple(v.shape) for k, v in s_ours.items()}
    ours.load_state_dict(s_stock)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = stock.eval()(x), ours.eval()(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_stride_placement():
    msra = build_backbone_from_preset("X-50-32x4d", stride_in_1x1=True)
    fb = build_backbone_from_preset("X-50-32x4d", stride_in_1x1=False)
    assert msra.res3[0].conv1.stride == (2, 2) and msra.res3[0].conv2.stride == (1, 1)
    assert fb.res3[0].conv1.stride == (1, 1) and fb.res3[0].conv2.stride == (2, 2)


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 5])
def test_freeze_at(freeze_at):
    model = build_backbone_from_preset("", depth=50, cardinality=4, bottleneck_width=4,
                                       res2_out_channels=32, stem_out_channels=16,
                                       norm="BN", freeze_at=freeze_at)
    frozen = {"stem": freeze_at >= 1, "res2": freeze_at >= 2, "res3": freeze_at >= 3,
              "res4": freeze_at >= 4, "res5": freeze_at >= 5}
    for stage, is_frozen in frozen.items():
        module = getattr(model, stage)
        params = list(module.parameters())
        assert all(p.requires_grad != is_frozen for p in params), stage
        has_frozen_bn = any(isinstance(m, FrozenBatchNorm2d) for m in module.modules())
        assert has_frozen_bn == is_frozen, stage
