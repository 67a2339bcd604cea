"""deploy.torchscript: the TorchScript-traced detector (default and fast path) returns what the eager
model returns: the same post-processed Instances, in the requested image coordinates."""
import copy

import pytest
import torch

from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model

from resnext_det.deploy.torchscript import export_torchscript, run_traced, trace_detector
from resnext_det.engine.fast import prepare_for_inference


def _detector(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.5)
    return model.eval()


def _eager(model, image, **size):
    """What a user gets from the eager model: post-processed Instances."""
    with torch.no_grad():
        return model([{"image": image, **size}])[0]["instances"]


@pytest.mark.parametrize("fast", [False, True], ids=["default", "fast"])
def test_traced_boxes_equal_eager(tiny_resnext_cfg, fast, tmp_path):
    cfg = tiny_resnext_cfg(**{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0})
    model = _detector(cfg)
    if fast:
        prepare_for_inference(model)
    image = torch.randint(0, 256, (3, 96, 128), generator=torch.Generator().manual_seed(2)).float()
    traced, adapter = trace_detector(model, image)
    ref = _eager(model, image)
    got = run_traced(traced, adapter, image)
    assert len(ref) > 0 and len(got) == len(ref)
    torch.testing.assert_close(got.pred_boxes.tensor, ref.pred_boxes.tensor)
    torch.testing.assert_close(got.scores, ref.scores)
    assert torch.equal(got.pred_classes, ref.pred_classes)
    # another image of the same size goes through the traced graph as through eager
    image2 = torch.randint(0, 256, (3, 96, 128), generator=torch.Generator().manual_seed(5)).float()
    torch.testing.assert_close(run_traced(traced, adapter, image2).pred_boxes.tensor,
                               _eager(model, image2).pred_boxes.tensor)
    # saved and reloaded
    path = tmp_path / "model.ts"
    if fast:
        export_torchscript(model, image, str(path))
    else:
        traced.save(str(path))
    loaded = torch.jit.load(str(path))
    torch.testing.assert_close(run_traced(loaded, adapter, image).pred_boxes.tensor, ref.pred_boxes.tensor)


def test_fast_trace_matches_default_eager(tiny_resnext_cfg):
    cfg = tiny_resnext_cfg(**{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0})
    default = _detector(cfg)
    fast = prepare_for_inference(copy.deepcopy(default))
    image = torch.randint(0, 256, (3, 96, 128), generator=torch.Generator().manual_seed(2)).float()
    traced, adapter = trace_detector(fast, image)
    got, ref = run_traced(traced, adapter, image), _eager(default, image)
    assert len(got) == len(ref)
    torch.testing.assert_close(got.pred_boxes.tensor, ref.pred_boxes.tensor, atol=1e-2, rtol=1e-4)


def test_trace_rejects_non_detector(tiny_resnext_cfg):
    model = _detector(tiny_resnext_cfg())
    with pytest.raises(TypeError, match="GeneralizedRCNN"):
        trace_detector(model.backbone, torch.zeros(3, 64, 64))


def test_traced_instances_equal_eager_in_original_coordinates(tiny_resnext_cfg):
    """model(inputs) with height/width rescales to the original image; run_traced does the same:
    same count, boxes within 1e-3 px, including boxes that post-processing clips or drops."""
    cfg = tiny_resnext_cfg(**{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0})
    model = _detector(cfg)
    image = torch.randint(0, 256, (3, 96, 128), generator=torch.Generator().manual_seed(3)).float()
    traced, adapter = trace_detector(model, image)
    for size in ({}, {"height": 192, "width": 256}, {"height": 150, "width": 201}):
        ref = _eager(model, image, **size)
        got = run_traced(traced, adapter, image, **size)
        assert len(ref) > 0 and len(got) == len(ref), size
        assert got.image_size == ref.image_size
        torch.testing.assert_close(got.pred_boxes.tensor, ref.pred_boxes.tensor, atol=1e-3, rtol=0)
        torch.testing.assert_close(got.scores, ref.scores)
        assert torch.equal(got.pred_classes, ref.pred_classes)
