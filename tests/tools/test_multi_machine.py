"""Issue 30: ``--num-machines``, tested on one host: two ``train_net.py`` commands with
``--machine-rank 0`` and ``1`` (CPU, GLOO over TCP on 127.0.0.1, one worker each), each with its
own OUTPUT_DIR (as two machines with local disks), and the same run as ``--num-gpus 2`` on one
machine for reference; every process has one OpenMP thread, so all runs do the same arithmetic.

* a COCO-layout set (the 2014 file names under ``$DETECTRON2_DATASETS/coco``) trains to the end
  with bit-identical final weights on both machines, equal to the one-machine run's; the demo
  (the synthetic set, made on each machine) trains to the end with the same parameters on both
  machines, each machine having made the same set, byte for byte (the data are all that the
  demo changes in the distributed run, so it needs no one-machine run of its own);
* a machine started with a bad path fails, and the other stops with one line naming it;
  a machine alone says what it waits for and stops after ``--machine-timeout`` s;
* a machine killed with SIGKILL (all its processes) makes the other stop within the bound.
"""
import json
import logging
import os
import signal
import socket
import subprocess
import textwrap
import time

import pytest
import torch

import zygote
from conftest import TINY_OPTS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
# one xdist worker runs these: each test starts several training processes, and the
# watchdog's timing should not compete with the module's other tests for the 2 cores
pytestmark = pytest.mark.xdist_group("test_multi_machine")

TIMEOUT = 10  # --machine-timeout of these tests (the default is 60 s)
ALONE = 3  # --machine-timeout of a machine started alone (the test waits it out)
RUN_OPTS = TINY_OPTS + [
    "MODEL.FPN.OUT_CHANNELS", "32", "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(3,)",
    "SOLVER.WARMUP_ITERS", "1", "SOLVER.IMS_PER_BATCH", "4", "TEST.EVAL_PERIOD", "0",
    "RESNEXT_PLAN.DEMO.EXPORT", "False", "INPUT.RANDOM_FLIP", "horizontal",
]

# train_net's command line with a trainer that also saves each worker's final weights
# (detectron2 writes model_final.pth on global rank 0 only)
_RECORDING = textwrap.dedent("""
    import os, sys, torch
    from detectron2.utils import comm
    from resnext_det.cli import cli
    from resnext_det.engine.trainer import ResNeXtCpuWorkersTrainer

    class RecordingTrainer(ResNeXtCpuWorkersTrainer):
        def train(self):
            super().train()
            model = self.model.module if hasattr(self.model, "module") else self.model
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
                       os.path.join(self.cfg.OUTPUT_DIR, f"rank{comm.get_rank()}.pth"))

    if __name__ == "__main__":
        sys.exit(cli(sys.argv[1:], trainer_cls=RecordingTrainer))
""")
# the same trainer on one machine, launched the way a user's own script does: detectron2's
# launch() around train_net's main (a user's trainer on several CPU processes derives from the
# CPU-workers trainer)
_USER_LAUNCH = _RECORDING.split("if __name__")[0] + textwrap.dedent("""
    if __name__ == "__main__":
        from detectron2.engine import launch
        from resnext_det.cli import get_parser, main, setup_cfg
        from resnext_det.engine.plan_runner import prepare_datasets

        args = get_parser().parse_args(sys.argv[1:])
        prepare_datasets(setup_cfg(args))
        launch(main, args.num_gpus, dist_url="auto", args=(args, RecordingTrainer))
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Machine:
    """One command (one "machine") in its own session, so SIGKILL reaches all its processes;
    stdout and stderr go to files."""

    def __init__(self, tmp_path, name, argv, env=None, script=TRAIN_NET):
        self.out = tmp_path / name
        self.stdout_path, self.stderr_path = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1",
                   **(env or {}))
        with open(self.stdout_path, "w") as o, open(self.stderr_path, "w") as e:
            self.proc = zygote.start([str(script)] + argv + ["OUTPUT_DIR", str(self.out)], cwd=ROOT, env=env,
                                     stdout=o, stderr=e, new_session=True, ignore_warnings=True)

    def wait(self, timeout=300):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout} s:\n{self.text[-3000:]}")

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    @property
    def stdout(self):
        return self.stdout_path.read_text()

    @property
    def stderr(self):
        return self.stderr_path.read_text()

    @property
    def text(self):
        return self.stdout + self.stderr


def _machines(tmp_path, argv, url, *, ranks=(0, 1), names=("m0", "m1"), extra=((), ()),
              timeout=TIMEOUT, **kw):
    return [Machine(tmp_path, name, ["--num-gpus", "1", "--num-machines", "2", "--machine-rank",
                                     str(rank), "--dist-url", url, "--machine-timeout", str(timeout)]
                    + argv + list(more), **kw)
            for rank, name, more in zip(ranks, names, extra)]


def _coco_2014(tmp_path):
    """A COCO-layout folder (detectron2's builtin coco_2014_train / coco_2014_minival): the
    tiny synthetic set's pictures as JPEGs with the 2014 file names, COCO's 80 categories."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
    from PIL import Image

    from resnext_det.data.synthetic import make_synthetic_coco

    src = make_synthetic_coco(str(tmp_path / "shapes"), num_train=16, num_val=4, image_size=64)
    coco = tmp_path / "datasets" / "coco"
    categories = [{"id": c["id"], "name": c["name"], "supercategory": "thing"}
                  for c in COCO_CATEGORIES if c["isthing"]]
    for split, folder, json_name in (("train", "train2014", "instances_train2014.json"),
                                     ("val", "val2014", "instances_minival2014.json")):
        data = json.load(open(src[split]["json_file"]))
        (coco / folder).mkdir(parents=True)
        for im in data["images"]:
            name = f"COCO_{folder}_{im['id']:012d}.jpg"
            Image.open(os.path.join(src[split]["image_root"], im["file_name"])).convert("RGB").save(
                coco / folder / name, quality=95)
            im["file_name"] = name
        data["categories"] = categories  # the shapes' classes 1..3 become person, bicycle, car
        (coco / "annotations").mkdir(exist_ok=True)
        (coco / "annotations" / json_name).write_text(json.dumps(data))
    return tmp_path / "datasets"


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_equal(a, b, what):
    assert a.keys() == b.keys() and len(a) > 50, what
    different = [k for k in a if not torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k]))]
    assert not different, f"{what}: {different[:5]}"


def _files(folder):
    """{relative path: bytes} of the files under ``folder`` (lock files aside)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


@pytest.mark.slow
@pytest.mark.parametrize("data", ["demo", "coco_2014"])
def test_two_machines_train_like_two_processes_on_one(tmp_path, data):
    """coco_2014: both machines' workers and those of a one-machine run with two processes
    (launched as a user's own script does: detectron2's launch() around train_net's main and a
    trainer derived from the CPU-workers trainer) end with the same weights, bit for bit. demo: each machine makes the synthetic set itself, the same
    set byte for byte (so its workers train as in the coco case), and the two machines'
    parameters agree; no one-machine run (three more processes) is needed for that."""
    script = tmp_path / "train_recording.py"
    script.write_text(_RECORDING)
    env = {}
    if data == "demo":
        argv = ["--demo", "fpn"] + RUN_OPTS
    else:
        env["DETECTRON2_DATASETS"] = str(_coco_2014(tmp_path))
        argv = (["--config", "demo_tiny_X_FPN_synthetic.yaml"] + RUN_OPTS
                + ["RESNEXT_PLAN.SYNTHETIC.ENABLED", "False", "DATASETS.TRAIN", "('coco_2014_train',)",
                   "DATASETS.TEST", "('coco_2014_minival',)", "MODEL.ROI_HEADS.NUM_CLASSES", "80"])
    m0, m1 = _machines(tmp_path, argv, f"tcp://127.0.0.1:{_free_port()}", env=env, script=script)
    runs = [m0, m1]
    if data == "coco_2014":  # the reference: the same config and opts on one machine, two processes
        user_script = tmp_path / "user_launch.py"
        user_script.write_text(_USER_LAUNCH)
        one = Machine(tmp_path, "one", ["--num-gpus", "2"] + argv, env=env, script=user_script)
        runs.append(one)
    for run in runs:
        assert run.wait() == 0, run.text[-4000:]

    if data == "demo":  # each machine made its synthetic set (and nothing was shared) ...
        assert (m1.out / "data" / "manifest.json").is_file() and (m0.out / "data" / "manifest.json").is_file()
        assert "COCO box AP on synthetic_shapes_val" in m0.stdout
        # ... the same set: every file equal (images, annotations, manifest)
        data0, data1 = _files(m0.out / "data"), _files(m1.out / "data")
        assert len(data0) > 20 and data0.keys() == data1.keys()
        assert all(data0[k] == data1[k] for k in data0), [k for k in data0 if data0[k] != data1[k]][:5]
    final = _weights(m0.out / "model_final.pth")["model"]
    assert not (m1.out / "model_final.pth").exists()  # (rank 0 writes the checkpoints)
    # DDP keeps the parameters of both machines identical (BN statistics are per worker) ...
    w0, w1 = _weights(m0.out / "rank0.pth"), _weights(m1.out / "rank1.pth")
    params = [k for k in w0 if "running_" not in k and "num_batches" not in k]
    assert len(params) > 50 and w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in params)
    _assert_equal(w0, final, "machine 0's worker vs its model_final.pth")
    if data == "demo":
        return
    # ... and every worker's weights, BN statistics included, are those of the same worker
    # rank in the one-machine run, bit for bit
    one0, one1 = _weights(one.out / "rank0.pth"), _weights(one.out / "rank1.pth")
    _assert_equal(w0, one0, "rank 0: two machines vs one")
    _assert_equal(w1, one1, "rank 1: two machines vs one")
    _assert_equal(final, _weights(one.out / "model_final.pth")["model"], "model_final.pth")
    # on one machine too, DDP's averaged gradients keep both ranks' parameters identical (BN
    # statistics are per rank: detectron2 uses broadcast_buffers=False), and the plan is done
    assert all(torch.equal(one0[k], one1[k]) for k in params)
    assert json.load(open(one.out / "plan_state.json"))["finished"] == ["detector"]


def _one_line_error(run):
    lines = [line for line in run.stderr.splitlines() if line.startswith("train_net.py: error:")]
    assert len(lines) == 1, run.text[-3000:]
    assert "Traceback" not in run.text, run.text[-3000:]
    return lines[0]


@pytest.mark.slow
def test_bad_path_on_one_machine_stops_the_other_with_one_line(tmp_path):
    url = f"tcp://127.0.0.1:{_free_port()}"
    m0, m1 = _machines(tmp_path, ["--demo", "fpn"] + RUN_OPTS, url,
                       extra=((), ("MODEL.WEIGHTS", str(tmp_path / "no_such_weights.pth"))))
    assert m1.wait() == 2
    t_failed = time.monotonic()
    assert m0.wait(timeout=TIMEOUT + 30) == 1
    assert time.monotonic() - t_failed < TIMEOUT + 20
    for run, tail in ((m1, ""), (m0, "; stopping machine 0 of 2")):
        line = _one_line_error(run)
        assert line.startswith("train_net.py: error: machine 1 of 2 failed: cannot start: "), line
        assert "no_such_weights.pth" in line and line.endswith(tail), line
    assert not (m0.out / "model_final.pth").exists()


@pytest.mark.slow
def test_machine_alone_says_what_it_waits_for_and_stops(tmp_path):
    """Machine 0 without machine 1, and machine 1 without machine 0 (another port)."""
    urls = [f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"]
    alone = [_machines(tmp_path, ["--demo", "fpn"] + RUN_OPTS, url, ranks=(rank,), names=(f"alone{rank}",),
                       timeout=ALONE)[0]
             for rank, url in enumerate(urls)]
    for rank, (run, url) in enumerate(zip(alone, urls)):
        assert run.wait(timeout=ALONE + 60) == 1
        other = 1 - rank
        assert f"waiting for machine {other} of 2" in run.stdout, run.text[-3000:]
        line = _one_line_error(run)
        assert f"waiting for machine {other} of 2 at {url}: not joined after {ALONE} s" in line, line


@pytest.mark.slow
@pytest.mark.parametrize("killed", [1, 0])
def test_sigkilled_machine_stops_the_other_within_the_bound(tmp_path, killed):
    url = f"tcp://127.0.0.1:{_free_port()}"
    opts = RUN_OPTS + ["SOLVER.MAX_ITER", "2000", "SOLVER.STEPS", "(1900,)"]
    runs = _machines(tmp_path, ["--demo", "fpn"] + opts, url)
    t0 = time.monotonic()
    while "Starting training from iteration 0" not in runs[0].stdout:
        assert all(r.proc.poll() is None for r in runs), runs[0].text[-3000:] + runs[1].text[-3000:]
        assert time.monotonic() - t0 < 240, runs[0].text[-3000:]
        time.sleep(0.2)
    time.sleep(1.0)  # a few iterations in
    runs[killed].kill()
    t_kill = time.monotonic()
    survivor = runs[1 - killed]
    assert survivor.wait(timeout=TIMEOUT + 50) == 1
    assert time.monotonic() - t_kill < TIMEOUT + 30
    line = _one_line_error(survivor)
    assert f"machine {killed} of 2" in line and f"stopping machine {1 - killed} of 2" in line, line
    if killed == 1:  # machine 0's worker lost its peer: the silent machine is named after 3 s
        assert "stopped responding: no sign of life for 3 s" in line, line
    assert not (survivor.out / "model_final.pth").exists()


@pytest.mark.parametrize("flags, fragments", [
    (["--dist-url", "file:///tmp/rendezvous"], ["--dist-url 'file:///tmp/rendezvous'", "tcp://HOST:PORT"]),
    (["--dist-url", "tcp://127.0.0.1:1", "--machine-rank", "2"], ["--machine-rank 2", "give 0 ... 1"]),
    (["--dist-url", "tcp://127.0.0.1:1", "--machine-timeout", "0"], ["--machine-timeout 0", "> 0"]),
])
def test_bad_machine_flags_are_one_line_errors(train_net, capsys, monkeypatch, tmp_path, flags, fragments):
    monkeypatch.setattr(logging, "raiseExceptions", False)  # detectron2's cached log handlers
    rc = train_net.cli(["--demo", "fpn", "--num-machines", "2"] + flags + ["OUTPUT_DIR", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    line = err[err.find("train_net.py: error:"):].strip()
    assert "\n" not in line and all(f in line for f in fragments), line
