"""resnext_det.weights.sources on small state dicts, in milliseconds: each rule of the reader on
its own (wrappers, DataParallel names, classifier and BN bookkeeping, architecture inference,
preset checks, metadata), with the expected names and values written out here.
test_weights.py checks the numbers end to end (converted trunks equal torchvision's features).
"""
import pickle

import numpy as np
import pytest
import torch
from torchvision.models.resnet import Bottleneck, ResNet

from resnext_det.weights import WeightsError, read_checkpoint, save_converted
from resnext_det.weights.sources import infer_architecture


def _tiny_tv():
    """torchvision ResNeXt, one block per stage, C=2, d=4 (grouped 3x3: 8 channels, 2 groups)."""
    torch.manual_seed(0)
    return ResNet(Bottleneck, [1, 1, 1, 1], groups=2, width_per_group=4, num_classes=3).eval()


# names detectron2's convert-torchvision-to-d2.py gives (written out: stem, first block, shortcut)
EXPECTED = {
    "conv1.weight": "stem.conv1.weight",
    "bn1.running_var": "stem.conv1.norm.running_var",
    "layer1.0.conv2.weight": "res2.0.conv2.weight",
    "layer1.0.bn3.bias": "res2.0.conv3.norm.bias",
    "layer1.0.downsample.0.weight": "res2.0.shortcut.weight",
    "layer4.0.downsample.1.running_mean": "res5.0.shortcut.norm.running_mean",
}


def _assert_converted(model, tv_sd):
    for tv_name, d2_name in EXPECTED.items():
        assert torch.equal(model[d2_name], tv_sd[tv_name]), d2_name
    n_tensors = len([k for k in tv_sd if not k.endswith("num_batches_tracked") and not k.startswith("fc.")])
    assert len(model) == n_tensors


# ----------------------------------------------------------------------------- DataParallel
@pytest.mark.parametrize("wrap", ["plain", "training checkpoint"])
def test_dataparallel_saved_checkpoint_loads(wrap, tmp_path):
    """A model trained under nn.DataParallel saves every name with 'module.'; it converts like
    the bare model (DistributedDataParallel saves the same prefix)."""
    tv = _tiny_tv()
    dp = torch.nn.DataParallel(tv)
    sd = dp.state_dict()
    assert all(k.startswith("module.") for k in sd)  # what users' files hold
    path = str(tmp_path / "dp.pth")
    torch.save(sd if wrap == "plain" else {"state_dict": sd, "epoch": 90}, path)
    ckpt = read_checkpoint(path)
    _assert_converted(ckpt["model"], tv.state_dict())
    assert ckpt["meta"]["source"] == "torchvision"
    assert sorted(ckpt["meta"]["dropped"]) == ["fc.bias", "fc.weight"]


def test_a_partly_prefixed_state_dict_is_not_stripped(tmp_path):
    """Only a prefix on every name is DataParallel's: a stray 'module.' name stays and is named."""
    sd = dict(_tiny_tv().state_dict())
    sd["module.extra.weight"] = torch.zeros(1)
    path = str(tmp_path / "mixed.pth")
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"1 tensors have names outside the torchvision/timm ResNet layout "
                                           r"\(e\.g\. \['module\.extra\.weight'\]\)"):
        read_checkpoint(path)


# ----------------------------------------------------------------------------- torchvision / timm
def test_torchvision_rules(tmp_path):
    tv = _tiny_tv()
    sd = tv.state_dict()
    assert any(k.endswith("num_batches_tracked") for k in sd)
    torch.save(sd, tmp_path / "tv.pth")
    ckpt = read_checkpoint(str(tmp_path / "tv.pth"))
    model, meta = ckpt["model"], ckpt["meta"]
    _assert_converted(model, sd)
    assert not any("num_batches_tracked" in k for k in model)  # skipped, not dropped
    assert meta["dropped"] == ["fc.bias", "fc.weight"]
    assert meta["original_file"] == "tv.pth" and meta["convention"] == "torchvision"
    assert ckpt["matching_heuristics"] is True and ckpt["__author__"] == "torchvision"
    arch = meta["architecture"]
    assert (arch["cardinality"], arch["bottleneck_width"], arch["blocks_per_stage"]) == (2, 4, [1, 1, 1, 1])
    # timm: a .safetensors file, or a training checkpoint naming its arch or carrying an EMA copy
    for name, obj in [("arch.pth", {"arch": "resnext", "state_dict": sd}),
                      ("ema.pth", {"state_dict": sd, "state_dict_ema": {"x": 1}})]:
        torch.save(obj, tmp_path / name)
        ckpt = read_checkpoint(str(tmp_path / name))
        assert ckpt["meta"]["source"] == "timm" and ckpt["__author__"] == "timm", name


@pytest.mark.parametrize("change,match", [
    (lambda sd: sd.update({"layer1.0.se.fc1.weight": torch.zeros(1)}),
     r"names outside the torchvision/timm ResNet layout .*'layer1\.0\.se\.fc1\.weight'.* Deep-stem / SE / BasicBlock"),
    (lambda sd: [sd.pop(k) for k in list(sd) if ".conv3." in k or ".bn3." in k],
     r"no bottleneck blocks found \(BasicBlock ResNet-18/34 is not supported\)"),
    (lambda sd: sd.update({"layer1.0.conv1.weight": "not a tensor"}),
     r"entries \['layer1\.0\.conv1\.weight'\] of the state dict are not tensors/arrays"),
])
def test_torchvision_refusals(change, match, tmp_path):
    sd = dict(_tiny_tv().state_dict())
    change(sd)
    path = str(tmp_path / "bad.pth")
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=match) as e:
        read_checkpoint(path)
    assert path in str(e.value)


def test_wrappers_and_non_dicts(tmp_path):
    sd = _tiny_tv().state_dict()
    for key in ("model", "state_dict", "model_state", "module"):
        torch.save({key: sd, "note": "kept"}, tmp_path / f"{key}.pth")
        _assert_converted(read_checkpoint(str(tmp_path / f"{key}.pth"))["model"], sd)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match=r"list\.pth: holds a list, not a state dict; expected one of: "):
        read_checkpoint(str(tmp_path / "list.pth"))
    torch.save({"model": {}, "x": torch.zeros(1)}, tmp_path / "empty_model.pth")  # an empty inner dict is no wrapper
    with pytest.raises(WeightsError, match="match no known layout"):
        read_checkpoint(str(tmp_path / "empty_model.pth"))


# ----------------------------------------------------------------------------- Caffe2
def test_caffe2_affine_becomes_bn_with_neutral_statistics(tmp_path):
    """AffineChannel blobs (_bn_s/_bn_b) -> BN weight/bias with mean 0 and var 1 - 1e-5, so that
    detectron2's x * w / sqrt(var + eps) is x * w exactly (eps: detectron2's FrozenBN 1e-5)."""
    n = 8
    blobs = {"conv1_w": np.ones((n, 3, 7, 7), np.float32), "res_conv1_bn_s": np.full(n, 2.0, np.float32),
             "res_conv1_bn_b": np.full(n, 0.5, np.float32), "res2_0_branch2a_w": np.ones((n, n, 1, 1), np.float32),
             "res2_0_branch2a_bn_s": np.full(n, 3.0, np.float32), "res2_0_branch2a_bn_b": np.zeros(n, np.float32),
             "res2_0_branch2a_w_momentum": np.zeros((n, n, 1, 1), np.float32),
             "pred_w": np.zeros((3, n), np.float32), "pred_b": np.zeros(3, np.float32)}
    with open(tmp_path / "c2.pkl", "wb") as f:
        pickle.dump(blobs, f, protocol=2)
    ckpt = read_checkpoint(str(tmp_path / "c2.pkl"))
    model, meta = ckpt["model"], ckpt["meta"]
    assert torch.equal(model["stem.conv1.norm.weight"], torch.full((n,), 2.0))
    assert torch.equal(model["stem.conv1.norm.bias"], torch.full((n,), 0.5))
    assert torch.equal(model["stem.conv1.norm.running_mean"], torch.zeros(n))
    assert torch.equal(model["stem.conv1.norm.running_var"], torch.full((n,), 1.0 - 1e-5))
    assert torch.equal(model["res2.0.conv1.norm.running_var"], torch.full((n,), 1.0 - 1e-5))
    assert not any("momentum" in k for k in model)
    assert not any(k.startswith(("linear.", "pred")) for k in model) and len(meta["dropped"]) == 2
    assert meta["source"] == "caffe2" and ckpt["__author__"] == "Caffe2"
    assert meta["convention"] == "caffe2-msra"  # no grouped 3x3, no GN


# ----------------------------------------------------------------------------- detectron2 checkpoints
def test_detectron2_checkpoint_entries(tmp_path):
    sd = {"backbone.bottom_up.stem.conv1.weight": torch.ones(4, 3, 7, 7), "roi_heads.x": torch.zeros(2)}
    torch.save({"model": sd, "iteration": 7, "matching_heuristics": True, "__author__": "me",
                "meta": {"source": "timm", "input_format": "RGB"}}, tmp_path / "d2.pth")
    ckpt = read_checkpoint(str(tmp_path / "d2.pth"))
    assert sorted(ckpt["model"]) == sorted(sd) and ckpt["iteration"] == 7
    assert ckpt["matching_heuristics"] is True and ckpt["__author__"] == "me"
    assert ckpt["meta"] == {"source": "timm", "input_format": "RGB"}
    assert sorted(ckpt) == ["__author__", "iteration", "matching_heuristics", "meta", "model"]
    # detectron2's own converter output (no meta, author torchvision): torchvision's convention
    with open(tmp_path / "conv.pkl", "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in sd.items()}, "__author__": "torchvision"}, f)
    ckpt = read_checkpoint(str(tmp_path / "conv.pkl"))
    assert isinstance(ckpt["model"]["roi_heads.x"], torch.Tensor)
    assert ckpt["meta"]["via"] == "convert-torchvision-to-d2" and ckpt["meta"]["input_format"] == "RGB"
    assert ckpt["matching_heuristics"] is False
    torch.save({"model": sd}, tmp_path / "bare.pth")  # no metadata at all
    ckpt = read_checkpoint(str(tmp_path / "bare.pth"))
    assert ckpt["meta"] is None and ckpt["__author__"] == "detectron2"


# ----------------------------------------------------------------------------- architecture
def _d2_names(blocks=(3, 4, 6, 3), card=32, width=4, res2=256, stem=64, prefix=""):
    sd = {}
    if stem:
        sd[prefix + "stem.conv1.weight"] = torch.empty(stem, 3, 7, 7)
    for s, n in zip(range(2, 6), blocks):
        for i in range(n):
            sd[f"{prefix}res{s}.{i}.conv1.weight"] = torch.empty(1)
    sd[prefix + "res2.0.conv2.weight"] = torch.empty(card * width, width, 3, 3)
    sd[prefix + "res2.0.conv3.weight"] = torch.empty(res2, card * width, 1, 1)
    sd[prefix + "res2.0.shortcut.weight"] = torch.empty(res2, stem or 64, 1, 1)
    return sd


def test_infer_architecture():
    x50 = {"blocks_per_stage": [3, 4, 6, 3], "cardinality": 32, "bottleneck_width": 4, "res2_out_channels": 256,
           "stem_out_channels": 64, "depth": 50, "preset": "X-50-32x4d"}
    assert infer_architecture(_d2_names()) == x50
    assert infer_architecture(_d2_names(prefix="backbone.bottom_up.")) == x50
    assert infer_architecture(_d2_names(blocks=(3, 4, 23, 3), card=64))["preset"] == "X-101-64x4d"
    assert infer_architecture(_d2_names(blocks=(3, 8, 36, 3), width=8))["preset"] == "X-152-32x8d"
    odd = infer_architecture(_d2_names(blocks=(2, 2, 2, 2)))
    assert odd["depth"] is None and odd["preset"] == "" and odd["blocks_per_stage"] == [2, 2, 2, 2]
    assert infer_architecture(_d2_names(res2=128))["preset"] == ""  # not torchvision's widths
    no_stem = infer_architecture(_d2_names(stem=0))
    assert no_stem["stem_out_channels"] is None and no_stem["preset"] == ""
    assert infer_architecture(_d2_names(stem=32))["preset"] == ""
    incomplete = _d2_names()
    del incomplete["res2.0.conv3.weight"]
    assert infer_architecture(incomplete) == {}
    flat = _d2_names()
    flat["res2.0.conv2.weight"] = torch.empty(128, 4)  # not a conv kernel
    assert infer_architecture(flat) == {}
    assert infer_architecture({}) == {}


@pytest.mark.parametrize("change,preset,match", [
    ({}, "X-50-32x4d", None),
    ({}, "X-7", r"--preset 'X-7' is unknown; known presets: X-50-32x4d, X-101-32x4d"),
    ({"res2": 128}, "X-50-32x4d", r"res2 width 128, not preset 'X-50-32x4d' \(depth 50, C=32, d=4\)"),
    ({"stem": 32}, "X-50-32x4d", r"not preset 'X-50-32x4d'"),
    ({"card": 64}, "X-50-32x4d", r"depth 50 \(blocks \[3, 4, 6, 3\]\), C=64, d=4, res2 width 256, not preset"),
    ({"blocks": (3, 4, 23, 3)}, "X-50-32x4d", r"the weights are X-101-32x4d, not preset 'X-50-32x4d'.*"
                                              r"pass the matching --preset or none"),
])
def test_preset_check(change, preset, match, tmp_path):
    path = str(tmp_path / "w.pth")
    torch.save({"model": _d2_names(**change)}, path)
    if match is None:
        assert read_checkpoint(path, preset)["model"]
        return
    with pytest.raises(WeightsError, match=match):
        read_checkpoint(path, preset)


def test_preset_needs_an_architecture(tmp_path):
    path = str(tmp_path / "w.pth")
    torch.save({"model": {"stem.conv1.weight": torch.empty(64, 3, 7, 7)}}, path)
    assert read_checkpoint(path)["model"]  # without a preset, fine
    with pytest.raises(WeightsError) as e:
        read_checkpoint(path, "X-50-32x4d")
    assert str(e.value) == (f"{path}: cannot tell the architecture of these weights to compare with preset "
                            "'X-50-32x4d'")


# ----------------------------------------------------------------------------- writing, progress
def test_save_converted_formats(tmp_path):
    sd = {"b.weight": torch.arange(3.0), "a.weight": np.ones(2, np.float32)}
    meta = {"source": "torch7", "input_format": "RGB"}
    pkl = save_converted(sd, meta, str(tmp_path / "c.pkl"), matching_heuristics=False)
    with open(pkl, "rb") as f:
        data = pickle.load(f)
    assert data["__author__"] == "resnext_det (from torch7)" and data["matching_heuristics"] is False
    assert data["meta"] == meta and all(isinstance(v, np.ndarray) for v in data["model"].values())
    assert np.array_equal(data["model"]["b.weight"], [0.0, 1.0, 2.0])
    pth = save_converted(sd, None, str(tmp_path / "c.pth"))
    data = torch.load(pth, weights_only=True)
    assert data["__author__"] == "resnext_det (from unknown)" and data["matching_heuristics"] is True
    assert all(isinstance(v, torch.Tensor) for v in data["model"].values())
    assert torch.equal(data["model"]["a.weight"], torch.ones(2))


def test_progress_output_changes_nothing(tmp_path, caplog):
    import logging

    sd = _tiny_tv().state_dict()
    torch.save(sd, tmp_path / "tv.pth")
    with caplog.at_level(logging.INFO, logger="resnext_det.weights.sources"):
        loud = read_checkpoint(str(tmp_path / "tv.pth"), progress=True)
    assert "Reading " in caplog.text and "torch-zip" in caplog.text and "converting" in caplog.text
    quiet = read_checkpoint(str(tmp_path / "tv.pth"))
    assert sorted(loud["model"]) == sorted(quiet["model"]) and loud["meta"] == quiet["meta"]
    out = save_converted(quiet["model"], quiet["meta"], str(tmp_path / "p.pth"), progress=True)
    assert sorted(read_checkpoint(out)["model"]) == sorted(quiet["model"])


# ----------------------------------------------------------------------------- more layouts and metadata
def _c2_blobs(n=8):
    return {"conv1_w": np.ones((n, 3, 7, 7), np.float32), "res_conv1_bn_s": np.full(n, 2.0, np.float32),
            "res_conv1_bn_b": np.full(n, 0.5, np.float32)}


def test_caffe2_stem_only_detection_wrapper_and_heads(tmp_path):
    """A Caffe2 file is known by its stem blobs alone; a Detectron detection model ('blobs'
    wrapper, a cls_score head) keeps its heads and gets the same neutral BN statistics."""
    with open(tmp_path / "stem.pkl", "wb") as f:
        pickle.dump(_c2_blobs(), f, protocol=2)
    ckpt = read_checkpoint(str(tmp_path / "stem.pkl"))
    assert ckpt["meta"]["source"] == "caffe2" and ckpt["matching_heuristics"] is True
    det = dict(_c2_blobs(), cls_score_w=np.zeros((3, 8), np.float32), cls_score_b=np.zeros(3, np.float32))
    with open(tmp_path / "det.pkl", "wb") as f:
        pickle.dump({"blobs": det, "cfg": "MODEL: {}"}, f, protocol=2)
    ckpt = read_checkpoint(str(tmp_path / "det.pkl"))
    model = ckpt["model"]
    assert any("cls_score" in k for k in model) and ckpt["meta"]["dropped"] == []
    (var,) = [k for k in model if k.endswith("stem.conv1.norm.running_var")]
    assert torch.equal(model[var], torch.full((8,), 1.0 - 1e-5))


def test_wrapper_with_non_text_keys_is_passed_over(tmp_path):
    sd = _tiny_tv().state_dict()
    torch.save({"model": {0: torch.zeros(1)}, "state_dict": sd}, tmp_path / "w.pth")
    _assert_converted(read_checkpoint(str(tmp_path / "w.pth"))["model"], sd)


def test_detectron2_layout_refuses_non_tensors_and_names_five_keys(tmp_path):
    torch.save({"model": {"stem.conv1.weight": torch.zeros(1), "res2.0.conv1.weight": torch.zeros(1), "x": "text"}},
               tmp_path / "d2.pth")
    with pytest.raises(WeightsError, match=r"entries \['x'\] of the state dict are not tensors/arrays"):
        read_checkpoint(str(tmp_path / "d2.pth"))
    torch.save({k: torch.zeros(1) for k in "abcdefg"}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match=r"match no known layout \(e\.g\. \['a', 'b', 'c', 'd', 'e'\]\); "):
        read_checkpoint(str(tmp_path / "other.pth"))


def test_converter_output_gets_torchvision_meta_and_tables_stay_intact(tmp_path):
    with open(tmp_path / "conv.pkl", "wb") as f:  # detectron2's convert-torchvision-to-d2.py output
        pickle.dump({"model": {k: v.numpy() for k, v in _d2_names().items()}, "__author__": "torchvision"}, f)
    meta = read_checkpoint(str(tmp_path / "conv.pkl"))["meta"]
    assert meta["source"] == "torchvision" and meta["architecture"]["preset"] == "X-50-32x4d"
    meta["pixel_mean"][0] = -1.0  # a caller changing its copy does not change the next file's
    assert read_checkpoint(str(tmp_path / "conv.pkl"))["meta"]["pixel_mean"][0] == pytest.approx(123.675)


# ----------------------------------------------------------------------------- progress bars, log lines
def test_progress_bars_name_their_step(tmp_path, capsys):
    """progress=True shows a bar named for its step (tqdm, on stderr) while renaming a torchvision
    or Caffe2 file and while writing one; progress=False shows none."""
    torch.save(_tiny_tv().state_dict(), tmp_path / "tv.pth")
    with open(tmp_path / "c2.pkl", "wb") as f:
        pickle.dump(_c2_blobs(), f, protocol=2)
    for name in ("tv.pth", "c2.pkl"):
        capsys.readouterr()
        read_checkpoint(str(tmp_path / name))
        assert capsys.readouterr().err == "", name
        ckpt = read_checkpoint(str(tmp_path / name), progress=True)
        err = capsys.readouterr().err
        assert "renaming: " in err and "tensor" in err, name
    save_converted(ckpt["model"], ckpt["meta"], str(tmp_path / "out.pth"), progress=True)
    assert "writing: " in capsys.readouterr().err


def test_progress_log_gives_the_size_in_mib_and_the_reading_time(tmp_path, caplog):
    import logging
    import re
    import time

    path = str(tmp_path / "big.pth")
    # 2**18 float32 = 1 MiB of data (the file holds a little more: the zip's headers)
    torch.save({"model": {"stem.conv1.weight": torch.zeros(2 ** 18)}}, path)
    t0 = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="resnext_det.weights.sources"):
        read_checkpoint(path, progress=True)
    wall = time.perf_counter() - t0
    assert f"Reading {path} (1.0 MiB, torch-zip) ..." in caplog.text
    (seconds,) = re.findall(r"Read in (\d+\.\d)s; converting \.\.\.", caplog.text)
    assert 0.0 <= float(seconds) <= wall + 0.05  # the time it took (rounded to 0.1 s)


def test_unknown_torchvision_names_message_in_full(tmp_path):
    sd = dict(_tiny_tv().state_dict())
    sd["layer1.0.se.fc1.weight"] = torch.zeros(1)
    path = str(tmp_path / "se.pth")
    torch.save(sd, path)
    with pytest.raises(WeightsError) as e:
        read_checkpoint(path)
    assert str(e.value) == (
        f"{path}: 1 tensors have names outside the torchvision/timm ResNet layout (e.g. ['layer1.0.se.fc1.weight']); "
        "only plain ResNet/ResNeXt bottleneck models (conv1, bn1, layerN.i.convK/bnK, downsample.0/1, fc) "
        "convert. Deep-stem / SE / BasicBlock variants are not ResNeXt backbones this project builds.")


# ----------------------------------------------------------------------------- Torch7 (reader stubbed)
def _t7_file(tmp_path):
    """The smallest Torch7 file (the Lua table {[1] = 7}): sniffed and read as Torch7."""
    import struct

    path = tmp_path / "m.t7"
    path.write_bytes(struct.pack("<iii", 3, 1, 1) + struct.pack("<id", 1, 1.0) + struct.pack("<id", 1, 7.0))
    return str(path)


@pytest.mark.parametrize("stride_in_1x1", [True, False, None])
def test_torch7_branch(stride_in_1x1, tmp_path, monkeypatch):
    """A .t7 file goes to the Torch7 reader (stubbed here: test_weights.py converts real ones);
    its names are kept as they come, with torchvision's convention and the stride the file
    tells (None: the convention's False)."""
    from resnext_det.weights import sources

    seen = []
    sd = _d2_names()

    def reader(obj, path):
        seen.append((obj, path))
        return sd, stride_in_1x1

    monkeypatch.setattr(sources, "torch7_to_detectron2", reader)
    path = _t7_file(tmp_path)
    ckpt = read_checkpoint(path, "X-50-32x4d")
    assert seen == [([7], path)]
    assert ckpt["model"] is sd and ckpt["matching_heuristics"] is True and ckpt["__author__"] == "torch7"
    meta = ckpt["meta"]
    assert (meta["source"], meta["convention"], meta["original_file"]) == ("torch7", "torch7", "m.t7")
    assert meta["input_format"] == "RGB" and meta["pixel_mean"] == [123.675, 116.28, 103.53]
    assert meta["stride_in_1x1"] is (stride_in_1x1 is True)
    assert meta["architecture"]["preset"] == "X-50-32x4d"
    with pytest.raises(WeightsError, match=r"m\.t7: the weights are X-50-32x4d, not preset 'X-101-32x4d'"):
        read_checkpoint(path, "X-101-32x4d")


# ----------------------------------------------------------------------------- wrappers, writing
def test_blobs_wrapper_entries_are_carried_without_the_blobs(tmp_path):
    """A 'blobs' wrapper holding detectron2 names: its other entries come with the checkpoint,
    the blobs only as the model."""
    blobs = {k: v.numpy() for k, v in _d2_names().items()}
    with open(tmp_path / "b.pkl", "wb") as f:
        pickle.dump({"blobs": blobs, "iteration": 3}, f, protocol=2)
    ckpt = read_checkpoint(str(tmp_path / "b.pkl"))
    assert sorted(ckpt) == ["__author__", "iteration", "matching_heuristics", "meta", "model"]
    assert ckpt["iteration"] == 3 and sorted(ckpt["model"]) == sorted(blobs)


def test_save_converted_keeps_tensors_as_they_are(tmp_path):
    """A .pth keeps each tensor itself: bfloat16 (which numpy cannot hold) stays bfloat16."""
    sd = {"w": torch.tensor([1.5, -2.0], dtype=torch.bfloat16)}
    data = torch.load(save_converted(sd, None, str(tmp_path / "bf16.pth")), weights_only=True)
    assert data["model"]["w"].dtype == torch.bfloat16
    assert data["model"]["w"].tolist() == [1.5, -2.0]


# ----------------------------------------------------------------------------- more edges
def test_infer_architecture_needs_real_kernels():
    no_width = _d2_names()
    no_width["res2.0.conv2.weight"] = torch.empty(128, 0, 3, 3)  # no input channel per group
    assert infer_architecture(no_width) == {}
    scalar = _d2_names()
    scalar["res2.0.conv3.weight"] = torch.tensor(1.0)  # a 0-d tensor has no output channels
    assert infer_architecture(scalar) == {}


def test_every_caffe2_classifier_blob_is_dropped(tmp_path):
    """pred_w/pred_b become linear.* and any other pred_* blob pred.*: all of the classifier goes."""
    blobs = dict(_c2_blobs(), pred_w=np.zeros((3, 8), np.float32), pred_b=np.zeros(3, np.float32),
                 pred_aux_w=np.zeros((3, 8), np.float32))
    with open(tmp_path / "c2.pkl", "wb") as f:
        pickle.dump(blobs, f, protocol=2)
    ckpt = read_checkpoint(str(tmp_path / "c2.pkl"))
    assert sorted(ckpt["meta"]["dropped"]) == ["linear.bias", "linear.weight", "pred.aux.weight"]
    assert not any(k.startswith(("linear.", "pred.")) for k in ckpt["model"])


def test_save_converted_pkl_takes_parameters_that_require_grad(tmp_path):
    """A model's parameters (requires_grad, not detached) are written as their values."""
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    with open(save_converted({"w": weight}, None, str(tmp_path / "p.pkl")), "rb") as f:
        data = pickle.load(f)
    assert isinstance(data["model"]["w"], np.ndarray) and data["model"]["w"].tolist() == [1.0, 2.0]
