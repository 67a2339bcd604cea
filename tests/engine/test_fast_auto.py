"""``auto`` for MODEL.RESNEXT.FAST.CHANNELS_LAST_TRAIN / FOLD_FROZEN_BN_TRAIN: the rule's logic on
hand-made measured tables (per kind, noisy and uncontrolled records, unmeasured kinds), the probe
guard, the one-line log naming the record, the probe itself, and first-iteration losses equal to
stock's whatever ``auto`` picks."""
import json
import logging

import pytest
import torch
from conftest import train_batch
from saved_cpuinfo import features

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
from resnext_det.engine.fast import auto
from resnext_det.engine.fast.auto import CANDIDATES, parse_switch
from resnext_det.hardware import CPU_KINDS
from resnext_det.apps.stock import randomize_frozen_bn, stock_equivalent_cfg

AVX2 = CpuFeatures(avx2=True)


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


def _entry(ratios, *, control="aa", noise=0.05, noisy=False, kind="avx2"):
    return {"record": f"benchmarks/{kind}/train-layouts.json", "preset": "X-101-32x4d", "image": [800, 1333],
            "control": control, "aa_ratio": 1.0 if control == "aa" else None, "noisy": noisy, "noise": noise,
            "ratios": ratios}


# hand-made tables: the rule's logic, whatever the shipped figures are
DISAGREE = {"kinds": {
    "avx2": _entry({"channels_last": 0.71, "fold": 1.02, "channels_last+fold": 0.74}),
    "avx512_bf16": _entry({"channels_last": 1.2, "fold": 1.1, "channels_last+fold": 1.3}, kind="avx512_bf16"),
}}


def _choose(cl=None, fold=None, *, kind, table=DISAGREE, device_type="cpu", probe=None):
    return choose_training_layout(cl, fold, device_type=device_type, features=AVX2, kind=kind, table=table,
                                  probe=probe)


def test_the_rule_picks_per_kind_from_the_table():
    avx2 = _choose(kind="avx2")  # nothing beats stock by more than the 5 % noise (fold: 1.02x)
    assert (avx2.channels_last, avx2.fold_frozen_bn) == (False, False)
    assert "benchmarks/avx2/train-layouts.json" in avx2.reason
    fast = _choose(kind="avx512_bf16")  # the fastest candidate
    assert (fast.channels_last, fast.fold_frozen_bn) == (True, True)
    assert "benchmarks/avx512_bf16/train-layouts.json" in fast.reason
    # the fastest by more than the noise, not merely the fastest
    only_fold = {"kinds": {"avx2": _entry({"channels_last": 0.71, "fold": 1.08, "channels_last+fold": 0.74})}}
    assert (_choose(kind="avx2", table=only_fold).fold_frozen_bn, _choose(kind="avx2", table=only_fold).channels_last) \
        == (True, False)


def test_unmeasured_kind_noisy_record_and_cuda_fall_back_to_stock():
    for choice in (_choose(kind="avx512"), _choose(kind="other"), _choose(kind="avx2", table={"kinds": {}})):
        assert (choice.channels_last, choice.fold_frozen_bn) == (False, False)
        assert "no measurement on CPU kind" in choice.reason
    noisy = {"kinds": {"avx512_bf16": _entry({"channels_last+fold": 1.5}, noisy=True, kind="avx512_bf16")}}
    n = _choose(kind="avx512_bf16", table=noisy)
    assert (n.channels_last, n.fold_frozen_bn) == (False, False) and "noisy" in n.reason
    cuda = _choose(kind="avx512_bf16", device_type="cuda")
    assert (cuda.channels_last, cuda.fold_frozen_bn) == (False, False)


def test_a_record_without_control_needs_more_than_stocks_own_spread():
    within = {"kinds": {"avx2": _entry({"channels_last+fold": 1.10}, control="none", noise=0.14)}}
    beyond = {"kinds": {"avx2": _entry({"channels_last+fold": 1.31}, control="none", noise=0.14)}}
    assert not _choose(kind="avx2", table=within).channels_last
    chosen = _choose(kind="avx2", table=beyond)
    assert (chosen.channels_last, chosen.fold_frozen_bn) == (True, True)
    assert "no A/A control" in chosen.reason


def test_explicit_switches_are_kept_and_restrict_the_candidates():
    kept = _choose(True, False, kind="avx2")
    assert (kept.channels_last, kept.fold_frozen_bn) == (True, False) and kept.reason == "set in the config"
    # channels_last forced on where it is slow: the fold is judged against channels_last alone
    forced = _choose(True, None, kind="avx512_bf16")
    assert (forced.channels_last, forced.fold_frozen_bn) == (True, True)  # 1.3 > 1.2 x 1.05
    no_fold = _choose(None, False, kind="avx512_bf16")
    assert (no_fold.channels_last, no_fold.fold_frozen_bn) == (True, False)


# probe times (s) per candidate; the probe compares the fold under the layout chosen
FOLD_FASTER = {"stock": 14.0, "channels_last": 17.6, "fold": 13.3, "channels_last+fold": 16.7}
FOLD_SLOWER = {"stock": 1.0, "channels_last": 1.0, "fold": 1.1, "channels_last+fold": 1.1}
FOLD_EVEN = {"stock": 1.0, "channels_last": 1.0, "fold": 1.02, "channels_last+fold": 1.02}  # within noise


@pytest.mark.parametrize("machine, measured", [("amx", "avx512_bf16"), ("avx512_bf16", "amx")])
def test_a_machine_never_takes_another_kinds_choice(monkeypatch, machine, measured):
    """An AMX Sapphire Rapids (also avx512_bf16 by its flags) with only an avx512_bf16 entry gets
    stock, and the reverse: the kind is read from the saved cpuinfo, the table holds the other."""
    monkeypatch.delenv("RESNEXT_DET_CPU_KIND", raising=False)
    table = {"kinds": {measured: _entry({"channels_last+fold": 1.5}, kind=measured)}}
    choice = choose_training_layout(None, None, device_type="cpu", features=features(machine), table=table, probe={})
    assert (choice.channels_last, choice.fold_frozen_bn) == (False, False)
    assert f"no measurement on CPU kind {machine}" in choice.reason and f"benchmarks/{measured}/" not in choice.reason
    own = choose_training_layout(None, None, device_type="cpu", features=features(measured), table=table, probe={})
    assert (own.channels_last, own.fold_frozen_bn) == (True, True)


def test_probe_only_guards_a_fold_the_table_chose():
    on = _choose(kind="avx512_bf16", probe=FOLD_FASTER)
    assert (on.channels_last, on.fold_frozen_bn) == (True, True)
    assert "16700.0 ms folded vs 17600.0 ms" in on.reason
    off = _choose(kind="avx512_bf16", probe=FOLD_SLOWER)
    assert (off.channels_last, off.fold_frozen_bn) == (True, False)
    assert _choose(kind="avx512_bf16", probe=FOLD_EVEN).fold_frozen_bn  # within the probe's noise
    # where the table chose no fold, a probe showing it faster does not turn it on
    assert not _choose(kind="avx2", probe=FOLD_FASTER).fold_frozen_bn


def _write_table(tmp_path, monkeypatch, table):
    path = tmp_path / "measured_layouts.json"
    path.write_text(json.dumps(table))
    monkeypatch.setattr(auto, "MEASURED_LAYOUTS", str(path))


@pytest.mark.parametrize("kind, expected", [("avx2", (False, False)), ("avx512_bf16", (True, True))])
def test_apply_auto_follows_the_table_and_logs_one_line(tiny_resnext_cfg, caplog, monkeypatch, tmp_path,
                                                       kind, expected):
    _write_table(tmp_path, monkeypatch, DISAGREE)
    monkeypatch.setenv("RESNEXT_DET_CPU_KIND", kind)
    cfg = tiny_resnext_cfg()
    model = _model(cfg)
    keys = set(model.state_dict())
    with caplog.at_level(logging.INFO, logger="resnext_det.engine.fast"):
        apply_training_switches(model, cfg, probe=False)
    assert (_is_channels_last(model), _folded(model)) == expected
    assert set(model.state_dict()) == keys
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("MODEL.RESNEXT.FAST auto")]  # the layout decision
    assert len(lines) == 1
    assert f"CHANNELS_LAST_TRAIN={expected[0]}" in lines[0] and f"FOLD_FROZEN_BN_TRAIN={expected[1]}" in lines[0]
    assert f"benchmarks/{kind}/train-layouts.json" in lines[0]


def test_apply_auto_with_injected_probe(tiny_resnext_cfg, monkeypatch, tmp_path):
    _write_table(tmp_path, monkeypatch, DISAGREE)
    monkeypatch.setenv("RESNEXT_DET_CPU_KIND", "avx512_bf16")
    cfg = tiny_resnext_cfg()
    model = _model(cfg)
    _, report = apply_training_switches_with_report(model, cfg, probe=FOLD_SLOWER)
    assert (_is_channels_last(model), _folded(model)) == (True, False)  # the probe vetoes the fold
    assert "fold off" in report.layout_reason


def test_the_shipped_table_is_well_formed():
    table = auto.load_measured_layouts()
    assert "benchmarks" in table["about"] and "do not edit" in table["about"]  # rendered, not typed
    assert set(table["kinds"]) <= set(CPU_KINDS)
    for kind, entry in table["kinds"].items():
        assert entry["record"].startswith(f"benchmarks/{kind}/") and entry["control"] in ("aa", "none")
        assert set(entry["ratios"]) <= set(CANDIDATES) - {"stock"}


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
