"""Every shipped YAML builds; FPN and C4 Faster R-CNN train a step and infer on CPU."""
import glob
import os

import pytest
import torch
from detectron2.modeling import build_model

import resnext_det

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))


def _load(name):
    cfg = resnext_det.get_cfg()
    cfg.merge_from_file(os.path.join(CONFIG_DIR, name))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_builds_a_model(name):
    cfg = _load(name)
    model = build_model(cfg)
    spec = resnext_det.resolve_resnext_spec(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert n > 1_000_000 or spec.res2_out_channels < 256
    if cfg.MODEL.ROI_HEADS.NAME == "ResNeXtRes5ROIHeads":
        # res5 in the head uses the same C and d as the backbone
        conv2 = model.roi_heads.res5[0].conv2
        assert conv2.groups == spec.cardinality
        assert conv2.out_channels == spec.cardinality * spec.bottleneck_width * 8


def _images(n=2, size=(96, 128)):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        img = torch.randint(0, 255, (3, *size), generator=g).float()
        from detectron2.structures import Boxes, Instances

        inst = Instances(size)
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 60.0, 70.0], [50.0, 20.0, 120.0, 90.0]]))
        inst.gt_classes = torch.tensor([0, 2])
        out.append({"image": img, "instances": inst, "height": size[0], "width": size[1]})
    return out


@pytest.mark.parametrize("config", ["faster_rcnn_X50_32x4d_FPN.yaml", "faster_rcnn_X50_32x4d.yaml"])
def test_train_step_and_inference(tiny_resnext_cfg, config):
    cfg = tiny_resnext_cfg(config)
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    model = build_model(cfg)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    from detectron2.utils.events import EventStorage

    with EventStorage(0):
        losses = model(_images())
    assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    opt.step()
    changed = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert any(k.startswith("backbone.") for k in changed)
    if "FPN" not in config:  # C4: res5 is trained inside the RoI head
        assert any(k.startswith("roi_heads.res5") for k in changed)
    model.eval()
    with torch.no_grad():
        out = model([{"image": _images(1)[0]["image"]}])
    inst = out[0]["instances"]
    assert inst.pred_boxes.tensor.shape[1] == 4
    assert inst.image_size == (96, 128)
