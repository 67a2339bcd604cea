"""The benchmark protocol (resnext_det.apps.benchmark.protocol) with a scripted clock: rotation
of the order, the A/A control deciding how many rounds run and whether ratios are published,
the pooled reference, and records that never land in another CPU kind's folder."""
import json

import pytest

from resnext_det.apps.benchmark.protocol import (
    STOCK_A,
    STOCK_B,
    Protocol,
    check_record_path,
    default_record_name,
    run_rounds,
    spread,
)


class ScriptedClock:
    """Each path call lasts what ``durations(name, call_index)`` says; the clock only moves then."""

    def __init__(self, durations):
        self.now, self.durations, self.calls, self.order = 0.0, durations, {}, []

    def __call__(self):
        return self.now

    def path(self, name):
        def call():
            i = self.calls.get(name, 0)
            self.calls[name] = i + 1
            self.order.append(name)
            self.now += self.durations(name, i)
            return name
        return call


def _run(durations, names=(STOCK_A, STOCK_B, "fast"), **kw):
    clock = ScriptedClock(durations)
    res = run_rounds({n: clock.path(n) for n in names}, Protocol(warmup=0, **kw), clock=clock)
    return res, clock


def test_rounds_rotate_and_a_settled_control_stops_at_min_rounds():
    res, clock = _run(lambda n, i: {"fast": 1.0}.get(n, 2.0), min_rounds=3)
    assert res.rounds == 3 and res.settled and res.aa_ratio == 1.0
    assert clock.order == [STOCK_A, STOCK_B, "fast", STOCK_B, "fast", STOCK_A, "fast", STOCK_A, STOCK_B]
    assert res.ratio("fast") == pytest.approx(2.0) and res.ratio(STOCK_B) == pytest.approx(1.0)


def test_rounds_are_added_until_the_control_settles():
    # stock_b is 20 % slow for its first three calls (a neighbour's burst), then equal
    res, _ = _run(lambda n, i: 1.2 if (n == STOCK_B and i < 3) else 1.0, min_rounds=3, max_seconds=100)
    assert res.settled and res.rounds > 3
    assert 0.95 <= res.aa_ratio <= 1.05


def test_a_control_that_never_settles_stops_at_the_time_limit_and_publishes_nothing():
    res, clock = _run(lambda n, i: 1.5 if n == STOCK_B else 1.0, min_rounds=3, max_seconds=20)
    assert not res.settled and res.aa_ratio == pytest.approx(1.5)
    assert clock.now <= 20 and res.rounds >= 3
    assert res.ratio("fast") is None and res.control()["noisy"]


def test_reference_is_both_stocks_pooled():
    res, _ = _run(lambda n, i: {STOCK_A: 1.0, STOCK_B: 1.04, "fast": 0.5}[n], min_rounds=3)
    assert res.settled and res.stock_s == pytest.approx(1.02)  # median of 1.0 x3 and 1.04 x3
    assert res.ratio("fast") == pytest.approx(1.02 / 0.5)


def test_without_a_control_nothing_is_published():
    res, _ = _run(lambda n, i: 1.0, names=("fp32", "bf16"), min_rounds=2)
    assert res.rounds == 2 and res.aa_ratio is None and res.ratio("bf16") is None


def test_spread():
    sp = spread([3.0, 1.0, 2.0, 10.0])
    assert (sp["min"], sp["median"], sp["max"], sp["n"]) == (1.0, 2.5, 10.0, 4)
    assert sp["q1"] <= sp["median"] <= sp["q3"] and sp["times"] == [3.0, 1.0, 2.0, 10.0]


def test_records_never_replace_another_kinds(tmp_path):
    check_record_path(str(tmp_path / "benchmarks" / "avx2" / "x.json"), "avx2")
    with pytest.raises(ValueError, match="avx512_bf16"):
        check_record_path(str(tmp_path / "benchmarks" / "avx512_bf16" / "x.json"), "avx2")
    other = tmp_path / "elsewhere.json"
    other.write_text(json.dumps({"environment": {"cpu_kind": "avx512_bf16"}}))
    with pytest.raises(ValueError, match="holds a avx512_bf16 record"):
        check_record_path(str(other), "avx2")


def test_default_record_names():
    assert default_record_name(["train"], ["X-101-32x4d"], [800, 1333]) == "train-layouts"
    assert default_record_name(["backbone", "fpn", "c4"], ["X-101-32x4d"], [800, 1333]) == "inference"
    # a small check run never replaces the full-size record
    assert default_record_name(["train"], ["X-50-32x4d"], [64, 96]) == "train-layouts-X-50-32x4d-64x96"


def test_a_named_control_pair_drives_the_rounds_too():
    """Comparing runtime options, the control is two identical sessions of the reference path
    (benchmarks/measure_deploy.py: spin-off twice, dynamic-shape OpenVINO twice, stock twice)."""
    clock = ScriptedClock(lambda n, i: 1.3 if (n == "off-b" and i < 3) else {"on": 2.0}.get(n, 1.0))
    names = ("off", "off-b", "on")
    res = run_rounds({n: clock.path(n) for n in names}, Protocol(warmup=0, min_rounds=3, max_seconds=100),
                     clock=clock, pair=("off", "off-b"))
    assert res.has_control and res.settled and res.rounds > 3
    assert res.ratio("on") == pytest.approx(0.5) and res.control()["aa_pair"] == ["off", "off-b"]
