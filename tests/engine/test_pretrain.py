"""resnext_det.engine.pretrain: the miniature "ImageNet" writes a torchvision-format file that
the project's checkpointer loads as torchvision weights, with their input convention checked."""
import os

import pytest
import torch

import resnext_det
from resnext_det.engine.plan import build_plan
from resnext_det.engine.plan_runner import prepare_datasets
from resnext_det.engine.pretrain import build_classifier, pretrain_classifier, to_torchvision_state_dict
from resnext_det.weights import InputFormatMismatchError, ResNeXtCheckpointer
from resnext_det.weights.sources import read_checkpoint


def _tiny_cfg(out, *opts):
    cfg = resnext_det.get_cfg()
    cfg.merge_from_file(resnext_det.get_config_file("demo_tiny_X_C4_two_stage_synthetic.yaml"))
    cfg.merge_from_list([
        "OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu",
        "MODEL.RESNEXT.CARDINALITY", "4", "MODEL.RESNEXT.BOTTLENECK_WIDTH", "4",
        "MODEL.RESNEXT.STEM_OUT_CHANNELS", "16", "MODEL.RESNEXT.RES2_OUT_CHANNELS", "32",
        "RESNEXT_PLAN.SYNTHETIC.NUM_TRAIN", "8", "RESNEXT_PLAN.SYNTHETIC.NUM_VAL", "3",
        "RESNEXT_PLAN.SYNTHETIC.IMAGE_SIZE", "64", "RESNEXT_PLAN.SYNTHETIC.NAME", "pre_shapes",
        "RESNEXT_PLAN.PRETRAIN.EPOCHS", "2", "RESNEXT_PLAN.PRETRAIN.IMS_PER_BATCH", "16",
    ] + list(opts))
    return cfg


def test_classifier_names_are_torchvisions():
    import torchvision

    cfg = resnext_det.get_cfg()
    cfg.merge_from_file(resnext_det.get_config_file("faster_rcnn_X50_32x4d.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    ours = to_torchvision_state_dict(build_classifier(cfg, num_classes=1000))
    theirs = torchvision.models.resnext50_32x4d().state_dict()
    assert sorted(ours) == sorted(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in theirs)  # same architecture, too


@pytest.mark.slow
def test_pretraining_writes_torchvision_weights_both_stages_load(tmp_path):
    cfg = _tiny_cfg(tmp_path)
    first = prepare_datasets(cfg)
    path = first["weights"]
    assert path == str(tmp_path / "pretrain" / "tiny_resnext_torchvision.pth") and not first["reused"]
    assert 0 <= first["top1"] <= 100 and first["num_classes"] == 4  # 3 shapes + background
    sd = torch.load(path, weights_only=True)  # a bare state dict, as torchvision ships
    assert {"conv1.weight", "bn1.running_var", "layer4.2.conv3.weight", "layer1.0.downsample.0.weight",
            "fc.weight"} <= set(sd)
    ckpt = read_checkpoint(path)
    assert ckpt["meta"]["source"] == "torchvision" and ckpt["meta"]["input_format"] == "RGB"

    # both stages of the plan start from it, through MODEL.WEIGHTS
    stages = build_plan(cfg)
    assert [s.cfg.MODEL.WEIGHTS for s in stages if s.kind == "train"] == [path, path]
    from resnext_det.engine.trainer import ResNeXtTrainer

    for stage in (stages[0], stages[2]):
        model = ResNeXtTrainer.build_model(stage.cfg)
        checkpointer = ResNeXtCheckpointer(model, cfg=stage.cfg)
        checkpointer.load(path)
        report = checkpointer.last_report
        assert (report.source, report.format_check) == ("torchvision", "ok")
        assert report.backbone_loaded == report.backbone_total > 0  # stem..res4 (+ res5 head)
        assert torch.equal(model.backbone.stem.conv1.weight, sd["conv1.weight"])
        if stage.name == "fast_rcnn":  # C4: torchvision's layer4 is the RoI head's res5
            assert torch.equal(model.roi_heads.res5[0].conv2.weight, sd["layer4.0.conv2.weight"])

    # a BGR / Caffe2-mean config is refused for these weights
    bgr = stages[0].cfg.clone()
    bgr.defrost()
    bgr.INPUT.FORMAT = "BGR"
    with pytest.raises(InputFormatMismatchError, match="INPUT.FORMAT"):
        ResNeXtCheckpointer(ResNeXtTrainer.build_model(bgr), cfg=bgr).load(path)

    # a pure function of the settings: made again elsewhere, the same tensors
    again = _tiny_cfg(tmp_path, "RESNEXT_PLAN.PRETRAIN.OUTPUT", str(tmp_path / "again.pth"))
    assert not pretrain_classifier(_resolved(again))["reused"]
    other = torch.load(tmp_path / "again.pth", weights_only=True)
    assert all(torch.equal(sd[k], other[k]) for k in sd)

    # the same settings reuse the file; a changed schedule makes a new one
    stamp = os.stat(path).st_mtime_ns
    assert pretrain_classifier(_resolved(cfg))["reused"]
    assert os.stat(path).st_mtime_ns == stamp
    assert not pretrain_classifier(_resolved(_tiny_cfg(tmp_path, "RESNEXT_PLAN.PRETRAIN.EPOCHS", "1")))["reused"]


def _resolved(cfg):
    from resnext_det.engine.plan import resolve_datasets

    return resolve_datasets(cfg)


def test_explicit_weights_win_over_pretraining(tmp_path):
    """--eval-only MODEL.WEIGHTS model_final.pth on the demo config evaluates that file."""
    stages = build_plan(_tiny_cfg(tmp_path, "MODEL.WEIGHTS", "x.pth"))
    assert [s.cfg.MODEL.WEIGHTS for s in stages if s.kind == "train"] == ["x.pth", "x.pth"]
