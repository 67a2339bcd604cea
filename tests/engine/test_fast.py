"""engine.fast: the fast inference path equals the default path (fp32), training switches
give the stock path's first-iteration losses, and the config switch does what it says."""
import copy
import json
import warnings

import pytest
import torch
from conftest import train_batch
import torch.nn.functional as F

from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers

from resnext_det.engine.fast import (
    FrozenBNFoldedConv2d,
    apply_training_switches,
    apply_training_switches_with_report,
    fold_frozen_bn,
    prepare_for_inference,
    prepare_for_inference_with_report,
    check_autocast_train,
    training_autocast,
)
from resnext_det.config import ResNeXtConfigError
from resnext_det.apps.stock import randomize_frozen_bn, stock_equivalent_cfg, training_iteration


def _randomize_frozen_bn(model, seed=0):
    """Give every FrozenBN non-trivial statistics (fresh ones are the identity map)."""
    return randomize_frozen_bn(model, torch.Generator().manual_seed(seed))


def _model(cfg, seed=0, spread_scores=True):
    torch.manual_seed(seed)
    model = build_model(cfg)
    _randomize_frozen_bn(model, seed)
    if not spread_scores:
        return model.eval()
    # random detector heads give near-equal scores; spread them so rounding cannot reorder NMS
    box_pred = model.roi_heads.box_predictor
    with torch.no_grad():
        box_pred.cls_score.weight.normal_(0, 0.5)
        box_pred.bbox_pred.weight.normal_(0, 0.05)
    return model.eval()


def _inputs(sizes=((96, 128), (112, 80)), seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3, h, w), generator=g).float(), "height": h, "width": w}
            for h, w in sizes]


def _rel_err(a, b):
    return ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item()


def test_fold_frozen_bn_matches_conv_then_norm():
    torch.manual_seed(0)
    conv = Conv2d(8, 16, 3, padding=1, groups=4, bias=False, norm=FrozenBatchNorm2d(16))
    _randomize_frozen_bn(conv)
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        ref = conv(x)
        assert fold_frozen_bn(conv) == 1
        out = conv(x)
    assert conv.norm is None and conv.bias is not None
    assert _rel_err(ref, out) < 1e-5


def test_backbone_fast_equals_default(tiny_resnext_cfg):
    cfg = tiny_resnext_cfg()
    default = _model(cfg).backbone
    fast, report = prepare_for_inference_with_report(copy.deepcopy(default))
    assert report.folded > 0 and report.fused_blocks > 0
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in fast.modules())
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        ref, out = default(x), fast(x)
    assert set(ref) == set(out)
    for k in ref:
        assert out[k].dtype == torch.float32
        assert _rel_err(ref[k], out[k]) < 1e-4, k


@pytest.mark.parametrize("config_name", ["faster_rcnn_X50_32x4d_FPN.yaml", "faster_rcnn_X50_32x4d.yaml"])
def test_detector_fast_equals_default(tiny_resnext_cfg, config_name):
    cfg = tiny_resnext_cfg(config_name, **{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0})
    default = _model(cfg)
    fast = prepare_for_inference(copy.deepcopy(default))
    # post-processing is detectron2's own (the project's copy was not measurably faster)
    assert type(fast.roi_heads.box_predictor) is FastRCNNOutputLayers
    assert "inference" not in vars(fast.roi_heads.box_predictor)
    inputs = _inputs()
    with torch.no_grad():
        ref, out = default(inputs), fast(inputs)
    for r, o in zip(ref, out):
        r, o = r["instances"], o["instances"]
        assert len(r) > 0 and len(r) == len(o)
        assert torch.equal(r.pred_classes, o.pred_classes)
        # boxes in pixels; random heads amplify the ~1e-6 relative feature rounding
        torch.testing.assert_close(o.pred_boxes.tensor, r.pred_boxes.tensor, atol=1e-2, rtol=1e-4)
        torch.testing.assert_close(o.scores, r.scores, atol=1e-3, rtol=1e-3)


def test_c4_res5_head_is_prepared_too(tiny_resnext_cfg):
    model = prepare_for_inference(_model(tiny_resnext_cfg("faster_rcnn_X50_32x4d.yaml")))
    res5 = model.roi_heads.res5
    assert all(c.norm is None for c in res5.modules() if isinstance(c, Conv2d))
    assert res5[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_bf16_runs_and_keeps_postprocessing_fp32(tiny_resnext_cfg):
    cfg = tiny_resnext_cfg()
    default = _model(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "no native bf16 on this CPU"
        fast = prepare_for_inference(copy.deepcopy(default), precision="bf16")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = fast.backbone(x)
        ref = default.backbone(x)
        out = fast(_inputs(((64, 64),)))
    assert all(v.dtype == torch.float32 for v in feats.values())
    assert all(_rel_err(ref[k], feats[k]) < 0.1 for k in ref)  # bf16 has 8 mantissa bits
    inst = out[0]["instances"]
    assert inst.pred_boxes.tensor.dtype == torch.float32 and inst.scores.dtype == torch.float32


def test_invalid_precision_is_an_error(tiny_resnext_cfg):
    model = _model(tiny_resnext_cfg())
    with pytest.raises(ResNeXtConfigError, match="fp16"):
        prepare_for_inference(model, precision="fp16")  # CPU
    with pytest.raises(ResNeXtConfigError, match="PRECISION"):
        prepare_for_inference(model, precision="int8")


def _first_losses(model):
    from detectron2.utils.events import EventStorage

    model.train()
    torch.manual_seed(123)  # proposal / RoI sampling
    with EventStorage(0):
        losses = model(train_batch())
    total = sum(losses.values())
    total.backward()
    return {k: v.item() for k, v in losses.items()}


@pytest.mark.parametrize("config_name", ["faster_rcnn_X50_32x4d_FPN.yaml", "faster_rcnn_X50_32x4d.yaml"])
def test_training_switches_match_stock_first_iteration(tiny_resnext_cfg, config_name):
    cfg = tiny_resnext_cfg(config_name, **{"MODEL.RESNEXT.FAST.CHANNELS_LAST_TRAIN": True})
    ours = _model(cfg, spread_scores=False)
    stock = build_model(stock_equivalent_cfg(cfg))
    assert type(stock.backbone).__name__ in ("ResNet", "FPN")
    stock.load_state_dict(ours.state_dict())  # same names, same shapes
    keys_before = set(ours.state_dict())
    apply_training_switches(ours, cfg)  # what the trainer applies to the model it trains
    assert set(ours.state_dict()) == keys_before  # checkpoints stay interchangeable
    assert ours.backbone.bottom_up.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last) \
        if hasattr(ours.backbone, "bottom_up") else ours.backbone.stem.conv1.weight.is_contiguous(
            memory_format=torch.channels_last)
    ref, got = _first_losses(stock), _first_losses(ours)
    assert set(ref) == set(got)
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-5), k
    for p in ours.parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all()


def test_autocast_training_loss_close_to_fp32(tiny_resnext_cfg):
    cfg = tiny_resnext_cfg(**{"MODEL.RESNEXT.FAST.AUTOCAST_TRAIN": "bf16"})
    ref_model = _model(cfg, spread_scores=False)
    fast_model = copy.deepcopy(ref_model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        apply_training_switches(fast_model, cfg)
    ref, got = _first_losses(ref_model), _first_losses(fast_model)
    assert all(torch.isfinite(torch.tensor(v)) for v in got.values())
    # RPN losses score fixed, seed-sampled anchors: comparable. The RoI losses depend on which
    # proposals survive top-k/NMS, which bf16 rounding legitimately changes.
    for k in ("loss_rpn_cls", "loss_rpn_loc"):
        assert got[k] == pytest.approx(ref[k], rel=0.05, abs=0.01), k


def test_autocast_train_is_not_a_second_solver_amp(tiny_resnext_cfg):
    """Mixed precision where detectron2 has it (CUDA, fp16 with a grad scaler) is
    SOLVER.AMP.ENABLED; AUTOCAST_TRAIN is bf16 on CPU only."""
    with pytest.raises(ResNeXtConfigError, match="SOLVER.AMP.ENABLED"):
        apply_training_switches(_model(tiny_resnext_cfg()),
                                tiny_resnext_cfg(**{"MODEL.RESNEXT.FAST.AUTOCAST_TRAIN": "fp16"}))
    with pytest.raises(ResNeXtConfigError, match="SOLVER.AMP.ENABLED"):
        check_autocast_train("bf16", "cuda")
    assert check_autocast_train("bf16", "cpu") == "bf16" and check_autocast_train("", "cuda") == ""


def test_bf16_training_checkpoints_load_both_ways(tiny_resnext_cfg):
    """The autocast wrapper adds a module level but no state_dict key: checkpoints of a model
    trained with AUTOCAST_TRAIN load into a plain model and back."""
    cfg = tiny_resnext_cfg(**{"MODEL.RESNEXT.FAST.AUTOCAST_TRAIN": "bf16"})
    plain = _model(cfg, seed=1)
    wrapped = _model(cfg, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        apply_training_switches(wrapped, cfg, channels_last=False, fold_frozen_bn=False)
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    wrapped.load_state_dict(plain.state_dict())  # strict
    for (k, a), b in zip(plain.state_dict().items(), wrapped.state_dict().values()):
        assert torch.equal(a, b), k
    fresh = _model(cfg, seed=3)
    fresh.load_state_dict(wrapped.state_dict())
    assert torch.equal(fresh.backbone.bottom_up.stem.conv1.weight, plain.backbone.bottom_up.stem.conv1.weight)


def test_training_iteration_leaves_the_global_rng_alone(tiny_resnext_cfg):
    model = _model(tiny_resnext_cfg(), spread_scores=False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    data = train_batch()
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    first = training_iteration(model, opt, data)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(99)  # another caller state: the iteration still draws the same samples
    assert training_iteration(model, opt, data) == pytest.approx(first, rel=1e-6)


def test_prepare_leaves_process_settings_alone(tiny_resnext_cfg):
    before = torch.backends.cudnn.benchmark
    model = prepare_for_inference(_model(tiny_resnext_cfg()))
    assert torch.backends.cudnn.benchmark == before
    assert not [k for k in vars(model) if k.startswith("_resnext")]  # the report is returned, not attached


def test_training_autocast_context(tiny_resnext_cfg):
    cfg = tiny_resnext_cfg()
    with training_autocast(cfg):
        assert not torch.is_autocast_enabled("cpu")
    with training_autocast(precision="bf16"):
        assert torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError):
        apply_training_switches(_model(cfg), autocast="int4")


def test_prepared_model_is_folded_and_can_be_copied(tiny_resnext_cfg):
    cfg = tiny_resnext_cfg()
    model = _model(cfg)
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert prepare_for_inference(model) is model
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())  # folded
    # prepared models can still be copied (the demo / evaluator may deepcopy)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        a, b = model(_inputs(((64, 96),))), clone(_inputs(((64, 96),)))
    torch.testing.assert_close(a[0]["instances"].pred_boxes.tensor, b[0]["instances"].pred_boxes.tensor)


def test_training_fold_frozen_bn_matches_stock(tiny_resnext_cfg):
    cfg = tiny_resnext_cfg()
    ours = _model(cfg, spread_scores=False)
    stock = build_model(stock_equivalent_cfg(cfg))
    stock.load_state_dict(ours.state_dict())
    keys_before = {k: v.shape for k, v in ours.state_dict().items()}
    _, report = apply_training_switches_with_report(ours, channels_last=True, fold_frozen_bn=True)
    assert report.folded_on_the_fly > 0
    assert {k: v.shape for k, v in ours.state_dict().items()} == keys_before
    assert any(isinstance(m, FrozenBatchNorm2d) for m in ours.modules())  # kept, inside the folded convs
    ref, got = _first_losses(stock), _first_losses(ours)
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-5), k
    # gradients reach the real (unfolded) weights and equal stock's up to rounding
    grads = dict(stock.named_parameters())
    n = 0
    for name, p in ours.named_parameters():
        if p.grad is not None and "bottom_up" in name and name.endswith("conv2.weight"):
            torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-3,
                                       atol=1e-5 * grads[name].grad.abs().max().item())
            n += 1
    assert n > 0
    # the fold is live: FrozenBN statistics loaded later (a checkpoint) are used
    conv = ours.backbone.bottom_up.res3[0].conv1
    x = torch.randn(1, conv.in_channels, 8, 8)
    with torch.no_grad():
        conv.norm.running_var.mul_(4.0)
        expected = F.relu(conv.norm(F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)))
        torch.testing.assert_close(F.relu(conv(x)), expected, rtol=1e-4, atol=1e-5)


def test_trainer_applies_training_switches_from_config(tmp_path, tiny_resnext_cfg):
    """ResNeXtTrainer wires MODEL.RESNEXT.FAST.*_TRAIN in; training still steps and the
    checkpoint keys stay those of the plain model."""
    from resnext_det.data.synthetic import register_synthetic_coco
    from resnext_det.engine.trainer import ResNeXtTrainer

    train, _ = register_synthetic_coco("fast_train_unit", str(tmp_path / "data"), num_train=4,
                                       num_val=1, image_size=32)
    cfg = tiny_resnext_cfg()
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train,), ()
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.SOLVER.REFERENCE_WORLD_SIZE = 2, 2, 0
    cfg.SOLVER.STEPS = (1,)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (32,), 32
    cfg.TEST.EVAL_PERIOD = 0
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.MODEL.RESNEXT.FAST.CHANNELS_LAST_TRAIN = True
    cfg.MODEL.RESNEXT.FAST.FOLD_FROZEN_BN_TRAIN = True
    trainer = ResNeXtTrainer(cfg)
    record = json.load(open(tmp_path / "out" / "training_layout.json"))
    assert record["channels_last"] and record["fold_frozen_bn"]
    conv = trainer.model.backbone.bottom_up.res3[0].conv2
    assert isinstance(conv, FrozenBNFoldedConv2d)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    plain_keys = set(build_model(tiny_resnext_cfg()).state_dict())
    assert set(trainer.model.state_dict()) == plain_keys
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == 2
