"""Kill-safe writes: a killed writer leaves the old complete file, never a broken one."""
import os
import signal
import textwrap
import time

import pytest
import torch

from resnext_det.io import atomic_open, atomic_write_json, file_lock

import zygote


def test_failed_write_keeps_old_file(tmp_path):
    p = tmp_path / "x.json"
    atomic_write_json(str(p), {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(str(p), "w") as f:
            f.write('{"v": 2, "trunc')
            raise RuntimeError("killed")
    assert p.read_text() == '{"v": 1}'
    assert os.listdir(tmp_path) == ["x.json"]  # no temporary left behind


def test_append_mode_refused(tmp_path):
    with pytest.raises(ValueError, match="write modes"):
        with atomic_open(str(tmp_path / "a"), "a"):
            pass


_WRITER = textwrap.dedent("""
    import sys, torch
    from torch import nn
    from fvcore.common.checkpoint import Checkpointer
    from resnext_det.io import make_atomic
    model = nn.Linear(1000, 1000)
    ckpt = make_atomic(Checkpointer(model, save_dir=sys.argv[1]))
    i = 0
    while True:
        with torch.no_grad():
            model.weight.fill_(float(i))
        ckpt.save("model_final", iteration=i)   # same name: overwritten in place each time
        print(i, flush=True)
        i += 1
""")


@pytest.mark.slow
def test_sigkill_during_checkpoint_save_leaves_a_loadable_checkpoint(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    out_dir = tmp_path / "ckpt"
    proc = zygote.start([str(script), str(out_dir)], stderr=None)
    try:
        # wait for a few saves, then kill at an arbitrary moment (likely mid-save: saves dominate)
        for _ in range(3):
            line = proc.stdout.readline()
            assert line, "writer died"
        time.sleep(0.013)
        proc.kill()
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    last = (out_dir / "last_checkpoint").read_text()
    assert last == "model_final.pth"
    data = torch.load(out_dir / last, weights_only=True)
    w = data["model"]["weight"]
    assert torch.all(w == w.flatten()[0])  # a complete, self-consistent save
    assert float(w.flatten()[0]) == data["iteration"]


def test_atomic_file_gets_the_permissions_open_would_give(tmp_path):
    import os

    from resnext_det.io import atomic_open

    with open(tmp_path / "plain.txt", "w") as f:
        f.write("x")
    with atomic_open(str(tmp_path / "atomic.txt"), "w") as f:
        f.write("x")
    mode = lambda p: os.stat(p).st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "atomic.txt") == mode(tmp_path / "plain.txt")


def test_file_lock_makes_processes_take_turns(tmp_path):
    """A second process waits for the lock (several machines preparing one shared folder)."""
    lock, ready = tmp_path / "sub" / "x.lock", tmp_path / "ready"
    child = textwrap.dedent(f"""
        import pathlib, time
        from resnext_det.io import file_lock
        pathlib.Path({str(ready)!r}).touch()
        with file_lock({str(lock)!r}):
            print(time.time())
    """)
    with file_lock(str(lock)):  # held while the child starts and asks for it
        p = zygote.start(["-c", child], stderr=None)
        t0 = time.monotonic()
        while not ready.exists():
            assert p.poll() is None and time.monotonic() - t0 < 60
            time.sleep(0.05)
        time.sleep(0.5)
        assert p.poll() is None  # waiting for the lock
        released = time.time()
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0 and float(out) >= released
