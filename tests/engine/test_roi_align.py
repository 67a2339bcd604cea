"""MatrixROIAlign (engine/fast/roi_align.py) computes torchvision's RoIAlign: the same outputs
and input gradients up to float summation order, on random and edge-case boxes, both
``aligned`` settings, fixed and adaptive sampling, both memory formats; and the swap reaches
detectron2's RoI poolers only."""
import pytest
import torch
from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes, Instances

from resnext_det.engine.fast.roi_align import MatrixROIAlign, roi_align_matrix, use_matrix_roi_align


def _boxes(n_img, r, seed, extent=200.0):
    g = torch.Generator().manual_seed(seed)
    batch = torch.randint(0, n_img, (r, 1), generator=g).float()
    xy = torch.rand(r, 2, generator=g) * (extent + 40) - 30  # some start left of / above the map
    wh = torch.rand(r, 2, generator=g) * 140
    rois = torch.cat([batch, xy, xy + wh], 1)
    rois[0, 3:] = rois[0, 1:3]  # an empty box
    rois[1, 1:] = torch.tensor([-50.0, -50.0, -20.0, -20.0])  # outside the map
    rois[2, 1:] = torch.tensor([150.0, 150.0, 400.0, 400.0])  # past the far edge
    return rois


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matrix_roi_align_equals_torchvision(aligned, sampling_ratio, channels_last):
    torch.manual_seed(0)
    n, c, h, w = 3, 16, 13, 11
    rois = _boxes(n, 40, seed=1)
    x = torch.randn(n, c, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref_mod = ROIAlign((5, 4), 1 / 16, sampling_ratio, aligned)
    mine = MatrixROIAlign((5, 4), 1 / 16, sampling_ratio, aligned)
    grad = torch.randn(40, c, 5, 4)
    outs, grads = [], []
    for mod in (ref_mod, mine):
        xi = x.clone().requires_grad_(True)
        out = mod(xi, rois)
        out.backward(grad)
        outs.append(out)
        grads.append(xi.grad)
    assert outs[1].shape == outs[0].shape and grads[1].shape == x.shape
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-5)
    assert grads[0].abs().sum() > 0  # the boxes do reach the map
    # the layout of what goes in is the layout of what comes out
    assert outs[1].is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_matrix_roi_align_is_deterministic_and_sparse():
    rois = _boxes(2, 64, seed=3)
    a1 = roi_align_matrix(rois, 1 / 8, (7, 7), 0, True, (2, 8, 30, 30))
    a2 = roi_align_matrix(rois, 1 / 8, (7, 7), 0, True, (2, 8, 30, 30))
    assert a1.shape == (64 * 49, 2 * 30 * 30)
    assert torch.equal(a1.indices(), a2.indices()) and torch.equal(a1.values(), a2.values())
    assert a1.values().numel() < 0.1 * a1.shape[0] * a1.shape[1]


def test_no_grad_calls_are_detectron2s():
    mod = MatrixROIAlign((2, 2), 0.5, 0, True)
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    rois = torch.tensor([[0.0, 1.0, 1.0, 8.0, 9.0]])
    with torch.no_grad():
        out = mod(x, rois)
    torch.testing.assert_close(out, ROIAlign((2, 2), 0.5, 0, True)(x, rois).detach(), rtol=0, atol=0)


def test_swap_reaches_the_roi_poolers_only():
    pooler = ROIPooler((7, 7), (1 / 4, 1 / 8), 0, "ROIAlignV2")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), pooler)
    assert use_matrix_roi_align(model) == 2
    assert all(type(p) is MatrixROIAlign for p in pooler.level_poolers)
    assert use_matrix_roi_align(model) == 0  # already swapped
    # the pooler still routes boxes to levels: same result as before the swap, with a gradient
    fresh = ROIPooler((7, 7), (1 / 4, 1 / 8), 0, "ROIAlignV2")
    feats = [torch.randn(2, 8, 32, 32, requires_grad=True), torch.randn(2, 8, 16, 16, requires_grad=True)]
    boxes = [Boxes(torch.tensor([[4.0, 4.0, 40.0, 60.0], [10.0, 10.0, 120.0, 100.0]])),
             Boxes(torch.tensor([[0.0, 0.0, 20.0, 20.0]]))]
    torch.testing.assert_close(pooler(feats, boxes), fresh(feats, boxes), rtol=0, atol=1e-5)


@pytest.mark.parametrize("config_name", ["faster_rcnn_X50_32x4d_FPN.yaml", "faster_rcnn_X50_32x4d.yaml"])
def test_training_switch_gives_detectron2s_losses_and_gradients(tiny_resnext_cfg, config_name):
    """MATRIX_ROI_ALIGN_TRAIN: ``auto`` swaps the RoI poolers on the CPU, ``off`` leaves them;
    one training forward/backward of the same model gives the same losses and gradients either
    way (FPN: four levels; C4: the res5 head's pooler)."""
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from resnext_det.engine.fast import apply_training_switches_with_report

    results = {}
    for value in ("off", "auto"):
        cfg = tiny_resnext_cfg(config_name, **{"MODEL.RESNEXT.FAST.MATRIX_ROI_ALIGN_TRAIN": value,
                                               "MODEL.RESNEXT.FAST.CHANNELS_LAST_TRAIN": "off",
                                               "MODEL.RESNEXT.FAST.FOLD_FROZEN_BN_TRAIN": "off"})
        cfg.MODEL.WEIGHTS = ""
        torch.manual_seed(0)
        model = build_model(cfg).train()
        model, report = apply_training_switches_with_report(model, cfg)
        swapped = sum(type(m) is MatrixROIAlign for m in model.modules())
        assert report.matrix_roi_align == swapped and (swapped > 0) == (value == "auto")
        g = torch.Generator().manual_seed(1)
        image = (torch.rand(3, 96, 128, generator=g) * 255)
        inst = Instances((96, 128))
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 60.0, 70.0], [50.0, 20.0, 120.0, 90.0]]))
        inst.gt_classes = torch.tensor([0, 2])
        torch.manual_seed(2)  # the RPN / RoI samplers draw from the global stream
        with EventStorage(0):
            losses = model([{"image": image, "instances": inst, "height": 96, "width": 128}])
        sum(losses.values()).backward()
        results[value] = (losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (l_off, g_off), (l_on, g_on) = results["off"], results["auto"]
    for k in l_off:
        torch.testing.assert_close(l_on[k], l_off[k], rtol=1e-5, atol=1e-6)
    assert g_on.keys() == g_off.keys()
    for k in g_off:
        torch.testing.assert_close(g_on[k], g_off[k], rtol=1e-3, atol=1e-5)
