"""``auto`` for MODEL.RESNEXT.FAST.CHANNELS_LAST_TRAIN / FOLD_FROZEN_BN_TRAIN: both machine
kinds' branches (injected CPU features and probe times), the one-line log, the probe itself,
and first-iteration losses equal to stock's whatever ``auto`` picks."""
import logging

import pytest
import torch
from conftest import train_batch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from resnext_det.engine.fast import (
    CpuFeatures,
    FrozenBNFoldedConv2d,
    apply_training_switches,
    apply_training_switches_with_report,
    choose_training_layout,
    probe_training_layouts,
)
from resnext_det.engine.fast.auto import CANDIDATES, parse_switch
from resnext_det.engine.stock import randomize_frozen_bn, stock_equivalent_cfg

AVX2 = CpuFeatures(avx2=True)
AVX512_BF16 = CpuFeatures(avx2=True, avx512f=True, avx512_bf16=True, amx=True)


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg)
    randomize_frozen_bn(model, torch.Generator().manual_seed(seed))
    return model


def _is_channels_last(model):
    return model.backbone.bottom_up.res3[0].conv2.weight.is_contiguous(memory_format=torch.channels_last)


def _folded(model):
    return any(isinstance(m, FrozenBNFoldedConv2d) for m in model.modules())


def test_config_default_is_auto(tiny_resnext_cfg):
    fast = tiny_resnext_cfg().MODEL.RESNEXT.FAST
    assert fast.CHANNELS_LAST_TRAIN == "auto" and fast.FOLD_FROZEN_BN_TRAIN == "auto"
    assert fast.AUTOCAST_TRAIN == ""  # reduced precision stays opt-in


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), ("auto", None), ("AUTO", None),
                                             ("on", True), ("off", False), ("true", True), ("False", False)])
def test_parse_switch(value, expected):
    assert parse_switch(value, "CHANNELS_LAST_TRAIN") is expected


@pytest.mark.parametrize("value", ["fast", 2, None])
def test_bad_switch_value_is_one_clear_error(tiny_resnext_cfg, value):
    cfg = tiny_resnext_cfg(**{"MODEL.RESNEXT.FAST.FOLD_FROZEN_BN_TRAIN": value})
    with pytest.raises(ValueError, match=r"MODEL\.RESNEXT\.FAST\.FOLD_FROZEN_BN_TRAIN=.*'auto'"):
        apply_training_switches(_model(cfg), cfg, probe=False)


def test_features_decide_without_probe():
    avx2 = choose_training_layout(None, None, device_type="cpu", features=AVX2)
    assert (avx2.channels_last, avx2.fold_frozen_bn) == (False, True)
    assert "avx2" in avx2.reason and "0.80x" in avx2.reason
    fast = choose_training_layout(None, None, device_type="cpu", features=AVX512_BF16)
    assert (fast.channels_last, fast.fold_frozen_bn) == (True, True)
    assert "avx512_bf16" in fast.reason
    cuda = choose_training_layout(None, None, device_type="cuda", features=AVX512_BF16)
    assert (cuda.channels_last, cuda.fold_frozen_bn) == (False, False)  # not measured there
    # explicit values are kept whatever the machine
    kept = choose_training_layout(True, False, device_type="cpu", features=AVX2)
    assert (kept.channels_last, kept.fold_frozen_bn) == (True, False)
    one = choose_training_layout(None, False, device_type="cpu", features=AVX512_BF16)
    assert (one.channels_last, one.fold_frozen_bn) == (True, False)


# probe times (s) per candidate; the probe compares the fold under the layout chosen
FOLD_FASTER = {"stock": 14.0, "channels_last": 17.6, "fold": 13.3, "channels_last+fold": 16.7}
FOLD_SLOWER = {"stock": 1.0, "channels_last": 1.0, "fold": 1.1, "channels_last+fold": 1.1}
FOLD_EVEN = {"stock": 1.0, "channels_last": 1.0, "fold": 1.02, "channels_last+fold": 1.02}  # within noise


@pytest.mark.parametrize("features, channels_last", [(AVX2, False), (AVX512_BF16, True)])
def test_probe_guards_the_fold_on_either_machine_kind(features, channels_last):
    on = choose_training_layout(None, None, device_type="cpu", features=features, probe=FOLD_FASTER)
    assert (on.channels_last, on.fold_frozen_bn) == (channels_last, True)
    expected = "16700.0 ms folded vs 17600.0 ms" if channels_last else "13300.0 ms folded vs 14000.0 ms"
    assert "fold on (probe" in on.reason and expected in on.reason
    off = choose_training_layout(None, None, device_type="cpu", features=features, probe=FOLD_SLOWER)
    assert (off.channels_last, off.fold_frozen_bn) == (channels_last, False)
    even = choose_training_layout(None, None, device_type="cpu", features=features, probe=FOLD_EVEN)
    assert even.fold_frozen_bn  # does strictly less work; off only when measured slower
    # channels_last set explicitly against the CPU's preference: the probe pair follows it
    forced = choose_training_layout(not channels_last, None, device_type="cpu", features=features,
                                    probe={**FOLD_SLOWER, "stock": 2.0, "channels_last": 2.0})
    assert (forced.channels_last, forced.fold_frozen_bn) == (not channels_last, True)


@pytest.mark.parametrize("features, expected", [(AVX2, (False, True)), (AVX512_BF16, (True, True))])
def test_apply_auto_with_injected_features(tiny_resnext_cfg, caplog, features, expected):
    cfg = tiny_resnext_cfg()
    model = _model(cfg)
    keys = set(model.state_dict())
    with caplog.at_level(logging.INFO, logger="resnext_det.engine.fast"):
        apply_training_switches(model, cfg, cpu_features=features, probe=False)
    assert (_is_channels_last(model), _folded(model)) == expected
    assert set(model.state_dict()) == keys
    lines = [r.getMessage() for r in caplog.records if "auto" in r.getMessage()]
    assert len(lines) == 1
    assert f"CHANNELS_LAST_TRAIN={expected[0]}" in lines[0] and f"FOLD_FROZEN_BN_TRAIN={expected[1]}" in lines[0]


def test_apply_auto_with_injected_probe(tiny_resnext_cfg):
    cfg = tiny_resnext_cfg()
    model = _model(cfg)
    _, report = apply_training_switches_with_report(model, cfg, cpu_features=AVX2, probe=FOLD_SLOWER)
    assert (_is_channels_last(model), _folded(model)) == (False, False)  # stock, as the probe says
    assert "fold off (probe" in report.layout_reason


def test_probe_times_every_candidate_and_leaves_the_model_alone(tiny_resnext_cfg):
    cfg = tiny_resnext_cfg()
    model = _model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    threads = torch.get_num_threads()
    times = probe_training_layouts(model, cfg, rounds=1)
    assert set(times) == set(CANDIDATES)
    assert all(0 < t < float("inf") for t in times.values())
    assert torch.get_num_threads() == threads
    assert not _folded(model) and not _is_channels_last(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def _first_losses(model):
    model.train()
    torch.manual_seed(123)  # proposal / RoI sampling
    with EventStorage(0):
        losses = model(train_batch())
    sum(losses.values()).backward()
    return {k: v.item() for k, v in losses.items()}


@pytest.mark.parametrize("layout", ["auto", "fold", "channels_last+fold"])
def test_first_iteration_loss_equals_stock(tiny_resnext_cfg, layout):
    """The trainer's call with the config default (``auto``, real probe on this machine), and
    the layouts ``auto`` can pick on the other machine kind, give stock's losses."""
    cfg = tiny_resnext_cfg()
    ours = _model(cfg)
    stock = build_model(stock_equivalent_cfg(cfg))
    stock.load_state_dict(ours.state_dict())
    if layout == "auto":
        _, report = apply_training_switches_with_report(ours, cfg)  # what the trainer runs
    else:
        cl, fold = CANDIDATES[layout]
        _, report = apply_training_switches_with_report(ours, cfg, channels_last=cl, fold_frozen_bn=fold)
    assert (_is_channels_last(ours), _folded(ours)) == (report.channels_last, report.folded_on_the_fly > 0)
    ref, got = _first_losses(stock), _first_losses(ours)
    assert set(ref) == set(got)
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-5), k
