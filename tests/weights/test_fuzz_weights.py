"""Fuzzing the weights loaders: random, truncated and mutated files.

The only outcomes allowed: a loaded object, or the project's own WeightsError with the
file's name. Nothing from the file is executed (a canary global would create a file).
"""
import os
import pickle

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnext_det.weights import WeightsError, read_checkpoint, safe_load

# one pytest-xdist worker runs this module: its module-scoped fixtures are costly (tools/install.sh
# passes --dist loadgroup)
pytestmark = pytest.mark.xdist_group("test_fuzz_weights")

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _seed_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("seeds")
    sd = {"conv1.weight": torch.randn(4, 3, 3, 3), "bn1.running_mean": torch.zeros(4)}
    torch.save(sd, d / "tv.pth")
    with open(d / "c2.pkl", "wb") as f:
        pickle.dump({"blobs": {"res2_0_branch2a_w": np.ones((2, 2), np.float32)}}, f, protocol=2)
    from safetensors.torch import save_file

    save_file(sd, str(d / "timm.safetensors"))
    return {p: (d / p).read_bytes() for p in ("tv.pth", "c2.pkl", "timm.safetensors")}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return _seed_files(tmp_path_factory)


def _check(path, canary):
    try:
        obj = safe_load(str(path))
    except WeightsError as e:
        assert os.path.basename(str(path)) in str(e)
        obj = None
    if obj is not None:
        try:
            read_checkpoint(str(path))
        except WeightsError as e:
            assert os.path.basename(str(path)) in str(e)
    assert not os.path.exists(canary), "a payload in the file was executed"


@FUZZ
@given(name=st.sampled_from(["tv.pth", "c2.pkl", "timm.safetensors"]),
       cut=st.floats(0, 1),
       flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=6))
def test_truncated_and_mutated_checkpoints(tmp_path, seeds, name, cut, flips):
    raw = bytearray(seeds[name])
    for pos, val in flips:
        raw[int(pos * (len(raw) - 1))] = val
    raw = raw[: max(1, int(cut * len(raw)))] if cut < 0.999 else raw
    path = tmp_path / ("fuzz_" + name)
    path.write_bytes(bytes(raw))
    _check(path, tmp_path / "canary")


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".pth", ".pkl", ".t7", ".safetensors"]))
def test_random_bytes(tmp_path, data, suffix):
    path = tmp_path / ("random" + suffix)
    path.write_bytes(data)
    _check(path, tmp_path / "canary")


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@FUZZ
@given(protocol=st.integers(0, pickle.HIGHEST_PROTOCOL), wrap=st.sampled_from(["top", "nested", "list"]))
def test_malicious_pickles_never_run(tmp_path, protocol, wrap):
    canary = tmp_path / "canary"
    payload = _Payload(str(canary))
    obj = {"top": payload, "nested": {"model": {"w": payload}}, "list": [np.ones(2), payload]}[wrap]
    for suffix in (".pkl", ".pth"):
        path = tmp_path / ("evil" + suffix)
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        with pytest.raises(WeightsError):
            safe_load(str(path))
        assert not canary.exists()
