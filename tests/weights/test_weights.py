"""ImageNet weights from every source -> the project's backbone, checked numerically.

Every source file is made here from a randomly initialised torchvision model (BN statistics
randomised too, so a swapped mean/var or scale/bias shows): torchvision ``.pth``, timm-named
``.pth``/``.safetensors``, a Caffe2 ``.pkl`` (blob names, BN folded into an affine, BGR conv1),
and Torch7 ``.t7`` files written by the small Torch7 serializer below (fb.resnet.torch /
facebookresearch/ResNeXt layout, forms C and B). After conversion, res2..res5 of the
project's backbone must equal torchvision's layer1..layer4 on the same image, with the
input normalisation the converted metadata prescribes.
"""
from __future__ import annotations

import logging
import os
import pickle
import struct

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.resnet import Bottleneck, ResNet

import resnext_det
from resnext_det import build_backbone_from_preset
from resnext_det.weights import (
    ForbiddenGlobalError,
    InputFormatMismatchError,
    ResNeXtCheckpointer,
    WeightsError,
    check_input_format,
    convert_to_detectron2,
    read_checkpoint,
    safe_load,
    save_converted,
)

# one pytest-xdist worker runs this module: its module-scoped fixtures are costly (tools/install.sh
# passes --dist loadgroup)
pytestmark = pytest.mark.xdist_group("test_weights")

FEATURES = ["res2", "res3", "res4", "res5"]

# The input conventions as their sources publish them (shared/REFERENCE.md), written out here
# and not read from the code's table: torchvision / timm / the ResNeXt authors' Torch7 models
# take RGB in 0..1 normalised by the ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224,
# 0.225), i.e. x 255 in detectron2's 0..255 units; Caffe2 (Detectron) models take BGR minus the
# BGR mean 103.530, 116.280, 123.675, divided by 1 (MSRA ResNets, stride on the first 1x1; FAIR
# GN models, stride on the 3x3) or by the BGR std 57.375, 57.120, 58.395 (FAIR ResNeXt
# X-101-32x8d, stride on the 3x3).
_TV = dict(input_format="RGB", pixel_mean=[round(v * 255, 3) for v in (0.485, 0.456, 0.406)],
           pixel_std=[round(v * 255, 3) for v in (0.229, 0.224, 0.225)], stride_in_1x1=False)
_C2_BGR_MEAN = [103.530, 116.280, 123.675]
PUBLISHED = {
    "torchvision": _TV,
    "timm": _TV,
    "torch7": _TV,
    "caffe2-msra": dict(input_format="BGR", pixel_mean=_C2_BGR_MEAN, pixel_std=[1.0, 1.0, 1.0], stride_in_1x1=True),
    "caffe2-fair": dict(input_format="BGR", pixel_mean=_C2_BGR_MEAN, pixel_std=[57.375, 57.120, 58.395],
                        stride_in_1x1=False),
    "caffe2-fair-gn": dict(input_format="BGR", pixel_mean=_C2_BGR_MEAN, pixel_std=[1.0, 1.0, 1.0],
                           stride_in_1x1=False),
}


def _assert_convention(meta, convention):
    """``meta`` carries the published convention of ``convention`` (floats to 1e-9)."""
    want = PUBLISHED[convention]
    assert meta["input_format"] == want["input_format"]
    assert meta["pixel_mean"] == pytest.approx(want["pixel_mean"], abs=1e-9)
    assert meta["pixel_std"] == pytest.approx(want["pixel_std"], abs=1e-9)
    assert meta["stride_in_1x1"] is want["stride_in_1x1"]
TINY = dict(depth=50, cardinality=4, bottleneck_width=4)  # torchvision widths: stem 64, res2 256


# ----------------------------------------------------------------------------- models and helpers
def _randomize_bn(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.rand(n, generator=g) * 0.4 - 0.2
            m.running_mean.data = torch.rand(n, generator=g) * 0.4 - 0.2
            m.running_var.data = torch.rand(n, generator=g) * 1.5 + 0.5
    return model.eval()


@pytest.fixture(scope="module")
def x50():
    """torchvision resnext50_32x4d, random weights and BN statistics."""
    torch.manual_seed(0)
    return _randomize_bn(torchvision.models.resnext50_32x4d(), 1)


@pytest.fixture(scope="module")
def tiny():
    """A small torchvision ResNeXt: depth 50, C=4, d=4 (so it has downsampling stages)."""
    torch.manual_seed(2)
    return _randomize_bn(ResNet(Bottleneck, [3, 4, 6, 3], groups=4, width_per_group=4, num_classes=10), 3)


@pytest.fixture(scope="module")
def image():
    """An RGB image in 0..255, as detectron2 reads it."""
    return torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(4)) * 255


@pytest.fixture(scope="module")
def x50_backbone():
    """The project's X-50-32x4d bottom-up backbone (built once; every load must overwrite it)."""
    return build_backbone_from_preset("X-50-32x4d", norm="FrozenBN", out_features=FEATURES).eval()


def _tv_features(tv, image):
    mean = torch.tensor(_TV["pixel_mean"]).view(1, 3, 1, 1)
    std = torch.tensor(_TV["pixel_std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        h = tv.maxpool(tv.relu(tv.bn1(tv.conv1((image - mean) / std))))
        out = []
        for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
            h = layer(h)
            out.append(h)
    return out


def _d2_input(image_rgb, meta):
    """Normalise an RGB 0..255 image the way the converted metadata says."""
    x = image_rgb.flip(1) if meta["input_format"] == "BGR" else image_rgb
    mean = torch.tensor(meta["pixel_mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(meta["pixel_std"], dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


def _rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _assert_features_equal(backbone, tv, image, meta, tol=1e-5):
    with torch.no_grad():
        out = backbone(_d2_input(image, meta))
    for name, ref in zip(FEATURES, _tv_features(tv, image)):
        assert out[name].shape == ref.shape, name
        assert _rel_err(out[name], ref) <= tol, (name, _rel_err(out[name], ref))


def _poison(model):
    """NaN every trunk tensor, so anything a load fails to overwrite shows in the outputs."""
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.fill_(float("nan"))


def _load(model, path, **kw):
    ck = ResNeXtCheckpointer(model, strict_backbone=True, **kw)
    ck.load(path)
    return ck.last_report


def _cfg(name):
    """A project config as every entry point reads it (resnext_det.get_cfg())."""

    cfg = resnext_det.get_cfg()
    cfg.merge_from_file(resnext_det.get_config_file(name))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def _tiny_cfg(name="faster_rcnn_X50_32x4d_FPN.yaml"):
    """A small detector around the tiny torchvision-compatible trunk (C=4, d=4)."""
    cfg = _cfg(name)
    r = cfg.MODEL.RESNEXT
    r.PRESET = ""
    r.DEPTH, r.CARDINALITY, r.BOTTLENECK_WIDTH = 50, 4, 4
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    return cfg


def _tiny_backbone(norm="FrozenBN", **opts):
    return build_backbone_from_preset("", norm=norm, out_features=FEATURES, **{**TINY, **opts}).eval()


# ----------------------------------------------------------------------------- writers
def write_timm(tv, path):
    """timm's resnet naming is torchvision's; its .safetensors hold the flat state dict."""
    sd = {k: v.clone() for k, v in tv.state_dict().items()}
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(sd, path)
    else:  # a timm training checkpoint wraps it
        torch.save({"arch": "resnext_tiny", "epoch": 3, "state_dict": sd}, path)
    return path


def caffe2_blobs(tv):
    """Caffe2 ImageNet blobs: BGR conv1, BN folded into AffineChannel (_bn_s, _bn_b)."""
    sd = {k: v.double().numpy() for k, v in tv.state_dict().items()}

    def affine(prefix, bn):
        s = sd[bn + ".weight"] / np.sqrt(sd[bn + ".running_var"] + 1e-5)
        blobs[prefix + "_bn_s"] = s.astype(np.float32)
        blobs[prefix + "_bn_b"] = (sd[bn + ".bias"] - sd[bn + ".running_mean"] * s).astype(np.float32)

    blobs = {"conv1_w": sd["conv1.weight"][:, ::-1].astype(np.float32).copy()}
    affine("res_conv1", "bn1")
    for layer in range(1, 5):
        for i in range(len(getattr(tv, f"layer{layer}"))):
            pre, tvp = f"res{layer + 1}_{i}", f"layer{layer}.{i}"
            for k, br in zip((1, 2, 3), "abc"):
                blobs[f"{pre}_branch2{br}_w"] = sd[f"{tvp}.conv{k}.weight"].astype(np.float32)
                affine(f"{pre}_branch2{br}", f"{tvp}.bn{k}")
            if f"{tvp}.downsample.0.weight" in sd:
                blobs[f"{pre}_branch1_w"] = sd[f"{tvp}.downsample.0.weight"].astype(np.float32)
                affine(f"{pre}_branch1", f"{tvp}.downsample.1")
    blobs["pred_w"] = sd["fc.weight"].astype(np.float32)
    blobs["pred_b"] = sd["fc.bias"].astype(np.float32)
    blobs["res2_0_branch2a_w_momentum"] = np.zeros_like(blobs["res2_0_branch2a_w"])
    return blobs


def write_caffe2(tv, path):
    with open(path, "wb") as f:
        pickle.dump(caffe2_blobs(tv), f, protocol=2)  # Detectron wrote protocol-2 pickles
    return path


class T7:
    """A Torch7 class instance (``torch.class`` object): type name + field table."""

    def __init__(self, typename, **fields):
        self.typename = typename
        self.fields = {k: v for k, v in fields.items() if v is not None}  # Lua tables hold no nil


class T7Writer:
    """Enough of Torch7's binary serialization (torch/File.lua writeObject) for nn models:
    nil, numbers, booleans, strings, tables, torch classes, FloatTensor/FloatStorage."""

    def __init__(self, f):
        self.f, self.index = f, 0

    def _int(self, v):
        self.f.write(struct.pack("<i", v))

    def _long(self, v):
        self.f.write(struct.pack("<q", v))

    def _string(self, s):
        b = s.encode() if isinstance(s, str) else s
        self._int(len(b))
        self.f.write(b)

    def _new_index(self):
        self.index += 1
        return self.index

    def _torch_header(self, typename):
        self._int(4)  # TYPE_TORCH
        self._int(self._new_index())
        self._string("V 1")
        self._string(typename)

    def write(self, obj):
        if obj is None:
            self._int(0)
        elif isinstance(obj, bool):
            self._int(5)
            self._int(int(obj))
        elif isinstance(obj, (int, float)):
            self._int(1)
            self.f.write(struct.pack("<d", float(obj)))
        elif isinstance(obj, (str, bytes)):
            self._int(2)
            self._string(obj)
        elif isinstance(obj, (list, tuple)):
            self.write({i + 1: v for i, v in enumerate(obj)})
        elif isinstance(obj, dict):
            self._int(3)  # TYPE_TABLE
            self._int(self._new_index())
            self._int(len(obj))
            for k, v in obj.items():
                self.write(k)
                self.write(v)
        elif isinstance(obj, np.ndarray):
            a = np.ascontiguousarray(obj, dtype=np.float32)
            self._torch_header("torch.FloatTensor")
            self._int(a.ndim)
            for s in a.shape:
                self._long(s)
            for s in a.strides:
                self._long(s // a.itemsize)
            self._long(1)  # 1-based storage offset
            self._torch_header("torch.FloatStorage")
            self._long(a.size)
            self.f.write(a.tobytes())
        elif isinstance(obj, T7):
            self._torch_header(obj.typename)
            self.write(obj.fields)
        else:
            raise TypeError(type(obj))


def _np(t):
    return t.detach().double().numpy().astype(np.float32)


def _t7_conv(w, stride=1, pad=0, groups=1):
    w = _np(w)
    return T7("cudnn.SpatialConvolution", nInputPlane=w.shape[1] * groups, nOutputPlane=w.shape[0],
              kW=w.shape[3], kH=w.shape[2], dW=stride, dH=stride, padW=pad, padH=pad,
              groups=groups, weight=w, bias=None, train=False)


def _t7_bn(bn, sl=slice(None)):
    return T7("nn.SpatialBatchNormalization", weight=_np(bn.weight[sl]), bias=_np(bn.bias[sl]),
              running_mean=_np(bn.running_mean[sl]), running_var=_np(bn.running_var[sl]),
              eps=1e-5, momentum=0.1, affine=True, train=False)


def _t7_seq(*mods, typename="nn.Sequential"):
    return T7(typename, modules=list(mods), train=False)


def _relu():
    return T7("cudnn.ReLU", inplace=True, train=False)


def t7_model(tv, form="C"):
    """facebookresearch/ResNeXt models/resnext.lua (ImageNet) with tv's weights."""
    stages = []
    for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
        blocks = []
        for blk in layer:
            stride = blk.conv2.stride[0]
            groups = blk.conv2.groups
            if form == "C":
                main = _t7_seq(_t7_conv(blk.conv1.weight), _t7_bn(blk.bn1), _relu(),
                               _t7_conv(blk.conv2.weight, stride, 1, groups), _t7_bn(blk.bn2), _relu(),
                               _t7_conv(blk.conv3.weight), _t7_bn(blk.bn3))
            else:  # form B: C separate 1x1-3x3 paths, concatenated, one 1x1
                d = blk.conv1.out_channels // groups
                paths = []
                for p in range(groups):
                    sl = slice(p * d, (p + 1) * d)
                    paths.append(_t7_seq(_t7_conv(blk.conv1.weight[sl]), _t7_bn(blk.bn1, sl), _relu(),
                                         _t7_conv(blk.conv2.weight[sl], stride, 1), _t7_bn(blk.bn2, sl),
                                         _relu()))
                main = _t7_seq(_t7_seq(*paths, typename="nn.ConcatTable"),
                               T7("nn.JoinTable", dimension=2, train=False),
                               _t7_conv(blk.conv3.weight), _t7_bn(blk.bn3))
            if blk.downsample is not None:
                shortcut = _t7_seq(_t7_conv(blk.downsample[0].weight, stride), _t7_bn(blk.downsample[1]))
            else:
                shortcut = T7("nn.Identity", train=False)
            blocks.append(_t7_seq(_t7_seq(main, shortcut, typename="nn.ConcatTable"),
                                  T7("nn.CAddTable", inplace=True, train=False), _relu()))
        stages.append(_t7_seq(*blocks))
    return _t7_seq(
        _t7_conv(tv.conv1.weight, 2, 3), _t7_bn(tv.bn1), _relu(),
        T7("nn.SpatialMaxPooling", kW=3, kH=3, dW=2, dH=2, padW=1, padH=1, train=False),
        *stages,
        T7("cudnn.SpatialAveragePooling", kW=7, kH=7, dW=1, dH=1, train=False),
        T7("nn.View", size=np.array([2048.0]), numInputDims=3, train=False),
        T7("nn.Linear", weight=_np(tv.fc.weight), bias=_np(tv.fc.bias), train=False),
    )


def write_t7(tv, path, form="C"):
    with open(path, "wb") as f:
        T7Writer(f).write(t7_model(tv, form))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, x50, tiny):
    """Source files, written once per module."""
    d = tmp_path_factory.mktemp("weights")
    out = {}
    torch.save(x50.state_dict(), d / "resnext50_32x4d.pth")
    out["x50_tv"] = str(d / "resnext50_32x4d.pth")
    torch.save(tiny.state_dict(), d / "tiny.pth")
    out["tiny_tv"] = str(d / "tiny.pth")
    return d, out


# ----------------------------------------------------------------------------- equality per source
def test_torchvision_x50_converted_checkpoint_matches_torchvision(files, x50, image, tmp_path):
    """torchvision resnext50_32x4d -> convert_weights output (.pkl) -> X-50-32x4d backbone, BN."""
    sd, meta = convert_to_detectron2(files[1]["x50_tv"], preset="X-50-32x4d")
    assert meta["source"] == "torchvision" and meta["input_format"] == "RGB"
    assert meta["pixel_mean"] == [123.675, 116.28, 103.53] and meta["stride_in_1x1"] is False
    _assert_convention(meta, "torchvision")
    assert meta["architecture"]["preset"] == "X-50-32x4d"
    assert "res2.0.conv1.norm.running_var" in sd and "res5.0.shortcut.weight" in sd
    out = save_converted(sd, meta, str(tmp_path / "x50_d2.pkl"))
    backbone = build_backbone_from_preset("X-50-32x4d", norm="BN", out_features=FEATURES).eval()
    report = _load(backbone, out)
    assert report.backbone_loaded == report.backbone_total > 0
    assert not report.unexpected and not report.wrong_shape
    _assert_features_equal(backbone, x50, image, read_checkpoint(out)["meta"])


@pytest.mark.parametrize("fmt", ["timm.pth", "timm.safetensors", "caffe2.pkl", "torch7.t7"])
def test_x50_sources_match_torchvision(fmt, files, x50, x50_backbone, image):
    """timm (.pth, .safetensors), Caffe2 .pkl and Torch7 .t7 holding resnext50_32x4d."""
    d, _ = files
    path = str(d / f"x50_{fmt}")
    if not os.path.exists(path):
        {"timm": write_timm, "caffe2": write_caffe2, "torch7": write_t7}[fmt.split(".")[0]](x50, path)
    sd, meta = convert_to_detectron2(path, preset="X-50-32x4d")
    expected = {"timm.pth": "timm", "timm.safetensors": "timm", "caffe2.pkl": "caffe2-fair",
                "torch7.t7": "torch7"}[fmt]
    assert meta.get("convention", meta["source"]) == expected
    _assert_convention(meta, expected)
    _poison(x50_backbone)
    report = _load(x50_backbone, path)
    assert report.backbone_loaded == report.backbone_total
    _assert_features_equal(x50_backbone, x50, image, meta)


@pytest.mark.parametrize("fmt", ["torchvision.pth", "caffe2.pkl", "torch7-formB.t7"])
def test_tiny_sources_match_torchvision_frozen_bn(fmt, files, tiny, image):
    """C=4 d=4 ResNeXt: Caffe2 BGR pkl and the Torch7 split form (B) as well."""
    d, named = files
    path = named["tiny_tv"] if fmt == "torchvision.pth" else str(d / f"tiny_{fmt}")
    if fmt == "caffe2.pkl":
        write_caffe2(tiny, path)
    elif fmt.startswith("torch7"):
        write_t7(tiny, path, form="B")
    sd, meta = convert_to_detectron2(path)
    assert meta["architecture"]["cardinality"] == 4 and meta["architecture"]["bottleneck_width"] == 4
    _assert_convention(meta, {"torchvision.pth": "torchvision", "caffe2.pkl": "caffe2-fair",
                              "torch7-formB.t7": "torch7"}[fmt])
    backbone = _tiny_backbone()
    _poison(backbone)
    _load(backbone, path)
    _assert_features_equal(backbone, tiny, image, meta)


def test_faster_rcnn_through_model_weights(files, x50, image):
    """Full X-50-32x4d FPN Faster R-CNN: MODEL.WEIGHTS is the raw torchvision file."""
    from detectron2.modeling import build_model

    cfg = _cfg("faster_rcnn_X50_32x4d_FPN_torchvision.yaml")
    cfg.MODEL.WEIGHTS = files[1]["x50_tv"]
    model = build_model(cfg).eval()
    ck = ResNeXtCheckpointer(model, cfg=cfg, strict_backbone=True)
    ck.load(cfg.MODEL.WEIGHTS)
    report = ck.last_report
    assert report.format_check == "ok"
    assert report.backbone_loaded == report.backbone_total == len(
        [k for k in model.state_dict() if k.startswith("backbone.bottom_up.") and "num_batches" not in k])
    assert any(k.startswith("backbone.fpn_lateral") for k in report.missing)  # not in ImageNet weights
    with torch.no_grad():
        images = model.preprocess_image([{"image": image[0]}])  # RGB, as INPUT.FORMAT says
        out = model.backbone.bottom_up(images.tensor)
    for name, ref in zip(FEATURES, _tv_features(x50, image)):
        assert _rel_err(out[name], ref) <= 1e-5, name


def test_c4_res5_lands_in_roi_heads(files, tiny, image):
    """C4: trunk res2..res4 in backbone.*, ImageNet res5 in roi_heads.res5.*."""
    from detectron2.modeling import build_model

    cfg = _tiny_cfg("faster_rcnn_X50_32x4d.yaml")
    model = build_model(cfg).eval()
    ck = ResNeXtCheckpointer(model, cfg=cfg, strict_backbone=True)
    ck.load(files[1]["tiny_tv"])
    assert ck.last_report.backbone_loaded == ck.last_report.backbone_total
    sd = model.state_dict()
    assert torch.equal(sd["roi_heads.res5.0.conv2.weight"], tiny.layer4[0].conv2.weight)
    assert torch.equal(sd["roi_heads.res5.2.conv3.norm.running_var"], tiny.layer4[2].bn3.running_var)
    assert torch.equal(sd["backbone.res4.5.conv1.weight"], tiny.layer3[5].conv1.weight)
    with torch.no_grad():
        images = model.preprocess_image([{"image": image[0]}])
        res4 = model.backbone(images.tensor)["res4"]
        res5 = model.roi_heads.res5(res4)
    ref = _tv_features(tiny, image)
    assert _rel_err(res4, ref[2]) <= 1e-5 and _rel_err(res5, ref[3]) <= 1e-5


# ----------------------------------------------------------------------------- round trip, report
def test_detectron2_checkpoint_round_trip(files, tmp_path):
    from detectron2.modeling import build_model

    cfg = _tiny_cfg()
    first = build_model(cfg)
    ResNeXtCheckpointer(first, cfg=cfg).load(files[1]["tiny_tv"])
    ResNeXtCheckpointer(first, str(tmp_path), cfg=cfg).save("model_final")
    saved = str(tmp_path / "model_final.pth")
    data = safe_load(saved)
    assert data["meta"]["input_format"] == "RGB"  # written so later loads re-check the config
    second = build_model(cfg)
    _poison(second)
    ck = ResNeXtCheckpointer(second, str(tmp_path), cfg=cfg, strict_backbone=True)
    ck.load(saved)
    assert ck.last_report.format_check == "ok" and not ck.last_report.missing
    ck.save("again")
    third = build_model(cfg)
    ResNeXtCheckpointer(third, cfg=cfg).load(str(tmp_path / "again.pth"))
    for k, v in first.state_dict().items():
        assert torch.equal(v, second.state_dict()[k]) and torch.equal(v, third.state_dict()[k]), k
    # converted .pkl / .pth round trip: identical tensors
    sd, meta = convert_to_detectron2(files[1]["tiny_tv"])
    for ext in (".pkl", ".pth"):
        again, meta2 = convert_to_detectron2(save_converted(sd, meta, str(tmp_path / f"c{ext}")))
        assert meta2 == meta and sorted(again) == sorted(sd)
        assert all(torch.equal(torch.as_tensor(again[k]), sd[k]) for k in sd)


def test_model_zoo_checkpoint_without_metadata_is_loaded_unchecked(files, tmp_path, caplog):
    from detectron2.modeling import build_model

    cfg = _tiny_cfg()
    src = build_model(cfg)
    ResNeXtCheckpointer(src).load(files[1]["tiny_tv"])
    path = tmp_path / "model_final_abc.pkl"  # the detectron2 model-zoo layout
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in src.state_dict().items()},
                     "__author__": "Detectron2 Model Zoo"}, f)
    dst = build_model(cfg)
    ck = ResNeXtCheckpointer(dst, cfg=cfg, strict_backbone=True)
    with caplog.at_level(logging.WARNING, logger="resnext_det.weights.checkpointer"):
        ck.load(str(path))
    assert ck.last_report.format_check == "no metadata in the file"
    assert "could not be checked" in caplog.text
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in src.state_dict().items())


def test_load_report_missing_wrong_shape_and_strict(files, tmp_path):
    sd, meta = convert_to_detectron2(files[1]["tiny_tv"])
    dropped = [k for k in sd if k.startswith("res3.1.")]
    partial = save_converted({k: v for k, v in sd.items() if k not in dropped}, meta, str(tmp_path / "p.pth"))
    backbone = _tiny_backbone()
    with pytest.raises(WeightsError, match=r"backbone tensors were not loaded.*strict_backbone"):
        ResNeXtCheckpointer(backbone, strict_backbone=True).load(partial)
    ck = ResNeXtCheckpointer(_tiny_backbone())
    ck.load(partial)
    r = ck.last_report
    assert sorted(r.missing_backbone) == sorted(f"{k}" for k in dropped)
    assert r.backbone_loaded == r.backbone_total - len(dropped)
    # a model with another cardinality: grouped 3x3 weights have the wrong shape
    ck = ResNeXtCheckpointer(_tiny_backbone(cardinality=2, bottleneck_width=8))
    ck.load(files[1]["tiny_tv"])
    wrong = {k for k, _, _ in ck.last_report.wrong_shape}
    assert "res2.0.conv2.weight" in wrong and "res2.0.conv2.weight" in ck.last_report.missing_backbone
    assert "wrong shape" in ck.last_report.summary()


# ----------------------------------------------------------------------------- input-format check
def test_format_mismatch_names_both_sides_and_keys(files):
    from detectron2.modeling import build_model

    cfg = _tiny_cfg("faster_rcnn_X101_32x8d_FPN_caffe2.yaml")  # BGR, Caffe2 mean/std
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputFormatMismatchError) as e:
        ResNeXtCheckpointer(model, cfg=cfg).load(files[1]["tiny_tv"])
    msg = str(e.value)
    for part in ("INPUT.FORMAT", "'BGR'", "'RGB'", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD",
                 "123.675", "103.53", files[1]["tiny_tv"]):
        assert part in msg, part
    assert "STRIDE_IN_1X1" not in msg.split("differs:")[1].split("Set in")[0]  # stride agrees
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # nothing loaded
    # stride placement alone
    meta = dict(PUBLISHED["torchvision"], source="torchvision")
    cfg2 = _tiny_cfg()
    cfg2.MODEL.RESNEXT.STRIDE_IN_1X1 = True
    with pytest.raises(InputFormatMismatchError, match=r"MODEL\.RESNEXT\.STRIDE_IN_1X1: config has True, weights need False"):
        check_input_format(cfg2, meta)


SHIPPED = {
    "faster_rcnn_X50_32x4d_FPN_torchvision.yaml": "torchvision",
    "faster_rcnn_X101_32x8d_FPN_torchvision.yaml": "torchvision",
    "faster_rcnn_X101_64x4d_FPN_torchvision.yaml": "torchvision",
    "faster_rcnn_X50_32x4d_FPN_torch7.yaml": "torch7",
    "faster_rcnn_X101_32x4d_FPN_torch7.yaml": "torch7",
    "faster_rcnn_X101_32x4d_torch7.yaml": "torch7",
    "faster_rcnn_X101_64x4d_FPN_torch7.yaml": "torch7",
    "faster_rcnn_X101_32x8d_FPN_caffe2.yaml": "caffe2-fair",
    "faster_rcnn_R50_FPN_caffe2_msra.yaml": "caffe2-msra",
    "Base-ResNeXt-FPN.yaml": "torchvision",
    "Base-ResNeXt-C4.yaml": "torchvision",
}


@pytest.mark.parametrize("name,convention", sorted(SHIPPED.items()))
def test_shipped_configs_match_their_source(name, convention):
    cfg = _cfg(name)
    assert check_input_format(cfg, dict(PUBLISHED[convention], source=convention)) is True
    others = {c for c, v in PUBLISHED.items() if v != PUBLISHED[convention]}
    for other in others:  # and every other convention is refused
        with pytest.raises(InputFormatMismatchError):
            check_input_format(cfg, dict(PUBLISHED[other], source=other))


def test_caffe2_conventions_msra_and_gn(tmp_path):
    torch.manual_seed(5)
    plain = _randomize_bn(ResNet(Bottleneck, [3, 4, 6, 3], width_per_group=16, num_classes=10), 6)
    blobs = caffe2_blobs(plain)
    path = tmp_path / "R-50-like.pkl"
    with open(path, "wb") as f:
        pickle.dump(blobs, f, protocol=2)
    _, meta = convert_to_detectron2(str(path))
    assert meta["convention"] == "caffe2-msra"
    _assert_convention(meta, "caffe2-msra")
    assert meta["pixel_std"] == [1.0, 1.0, 1.0] and meta["input_format"] == "BGR"
    assert meta["architecture"]["cardinality"] == 1
    gn = {k.replace("_bn_", "_gn_"): v for k, v in blobs.items()}
    with open(path, "wb") as f:
        pickle.dump(gn, f, protocol=2)
    sd, meta = convert_to_detectron2(str(path))
    assert meta["convention"] == "caffe2-fair-gn"
    _assert_convention(meta, "caffe2-fair-gn")
    assert "res2.0.conv1.norm.weight" in sd and "res2.0.conv1.norm.running_mean" not in sd


def test_preset_mismatch_is_refused(files):
    with pytest.raises(WeightsError, match=r"C=4, d=4.*not preset 'X-50-32x4d'"):
        convert_to_detectron2(files[1]["tiny_tv"], preset="X-50-32x4d")
    with pytest.raises(WeightsError, match="unknown"):
        convert_to_detectron2(files[1]["tiny_tv"], preset="X-7")


# ----------------------------------------------------------------------------- safety and bad files
class _CreatesFile:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, path, how):
        self.path, self.how = path, how

    def __reduce__(self):
        if self.how == "open":
            return (open, (self.path, "w"))
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("how", ["open", "system"])
@pytest.mark.parametrize("ext", [".pkl", ".pth", ".legacy.pth"])
def test_pickle_payload_is_refused_and_never_runs(how, ext, tmp_path):
    target = tmp_path / "pwned"
    path = str(tmp_path / f"evil{ext}")
    payload = {"model": {"res2.0.conv1.weight": np.zeros(3, np.float32)}, "x": _CreatesFile(str(target), how)}
    if ext == ".pkl":
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=ext == ".pth")
    with pytest.raises(WeightsError) as e:
        safe_load(path)
    assert path in str(e.value)
    # one message for .pkl and torch files: the file, the global that would have run, that
    # nothing was executed, and never torch's advice to load with weights_only=False
    assert isinstance(e.value, ForbiddenGlobalError)
    assert e.value.name == ("open" if how == "open" else "system")  # io.open / posix.system
    assert f"'{e.value.module}.{e.value.name}'" in str(e.value)
    assert "nothing from the file was executed" in str(e.value)
    assert "weights_only" not in str(e.value)
    with pytest.raises(WeightsError):
        ResNeXtCheckpointer(torch.nn.Linear(1, 1)).load(path)
    assert not target.exists()


def test_bad_files_give_clear_errors(files, tmp_path, tiny):
    d, named = files
    cases = {}
    (tmp_path / "empty.pth").write_bytes(b"")
    cases["empty.pth"] = "empty"
    (tmp_path / "notes.pth").write_text("these are not weights\n")
    cases["notes.pth"] = "not a checkpoint"
    data = open(named["tiny_tv"], "rb").read()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    cases["cut.pth"] = "truncated"
    pkl = pickle.dumps(caffe2_blobs(tiny), protocol=2)
    (tmp_path / "cut.pkl").write_bytes(pkl[: len(pkl) // 3])
    cases["cut.pkl"] = "truncated"
    write_timm(tiny, str(tmp_path / "full.safetensors"))
    st = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(st[: len(st) // 2])
    cases["cut.safetensors"] = "truncated|not a checkpoint"
    t7 = (d / "tiny_torch7-formB.t7") if (d / "tiny_torch7-formB.t7").exists() else None
    if t7 is None:
        t7 = tmp_path / "tiny.t7"
        with open(t7, "wb") as f:
            T7Writer(f).write(_t7_seq(_t7_conv(torch.ones(4, 3, 3, 3))))
    raw = t7.read_bytes()
    (tmp_path / "cut.t7").write_bytes(raw[: len(raw) // 2])
    cases["cut.t7"] = "truncated"
    torch.save({"optimizer": {"lr": 0.1}, "epoch": 3}, tmp_path / "other.pth")
    cases["other.pth"] = "match no known layout"
    with open(tmp_path / "other.pkl", "wb") as f:
        pickle.dump({"weights": np.zeros(3)}, f)
    cases["other.pkl"] = "match no known layout"
    (tmp_path / "missing.pth").unlink(missing_ok=True)
    cases["missing.pth"] = "no such file"
    for name, pattern in cases.items():
        path = str(tmp_path / name)
        with pytest.raises(WeightsError, match=pattern) as e:
            convert_to_detectron2(path)
        assert path in str(e.value), name
        assert isinstance(e.value, ValueError)
