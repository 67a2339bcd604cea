"""Issue 6: kill-safe training and resume, non-finite loss, resumable data position.

End-to-end tests start ``tools/train_net.py`` in a process of its own (tests/zygote.py) on the tiny synthetic set
(64-pixel images, C=4 d=4 ResNeXt, 2 images per batch), SIGKILL it, and run ``--resume``.
The atomic-write mechanism itself is tested in tests/test_io.py; the stage bookkeeping of
the two-stage plan without a kill in tests/engine/test_plan.py.
"""
import json
import math
import os
import signal
import threading
import time
import zlib

import pytest
import torch

import zygote
from conftest import TINY_OPTS

# one pytest-xdist worker runs this module: its module-scoped fixtures are costly (tools/install.sh
# passes --dist loadgroup)
pytestmark = pytest.mark.xdist_group("test_recovery")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
BASE_LR = 0.01

# 32 training images, 2 per iteration, an LR step inside the run (so a resumed scheduler must
# know where it is); the killed runs below shorten it (EXACT_OPTS), the diverging one too.
RUN_OPTS = TINY_OPTS + [
    "MODEL.FPN.OUT_CHANNELS", "32", "RESNEXT_PLAN.SYNTHETIC.NUM_TRAIN", "32",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", str(BASE_LR), "SOLVER.MAX_ITER", "30",
    "SOLVER.STEPS", "(18,)", "SOLVER.GAMMA", "0.1", "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.CHECKPOINT_PERIOD", "5", "TEST.EVAL_PERIOD", "0",
]


class Run:
    """train_net.py in a session of its own (tests/zygote.py); stdout collected line by line by a thread, which can
    SIGKILL the run the moment a line matches ``kill_on``: the process and those it started (training and
    data-loader processes) at once, as a scheduler kills a job."""

    def __init__(self, out, args, kill_on=None):
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
        self.proc = zygote.start([TRAIN_NET] + args + ["OUTPUT_DIR", str(out)], cwd=ROOT, env=env,
                                 ignore_warnings=True, new_session=True)
        self.lines, self.killed_on = [], None
        self.kill_on = kill_on
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            if self.kill_on is not None and self.killed_on is None and self.kill_on(line):
                self.kill()
                self.killed_on = line
            self.lines.append(line)

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)

    def wait(self, timeout=300):
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return rc

    @property
    def text(self):
        return "".join(self.lines)


def _args(*extra, flags=()):
    """argv: flags first (trailing KEY VALUE opts take the rest of the line)."""
    return list(flags) + ["--config", "demo_tiny_X_FPN_synthetic.yaml"] + RUN_OPTS + list(extra)


def _wait_for(predicate, run, timeout=300):
    t0 = time.time()
    while not predicate():
        assert run.proc.poll() is None, "run ended before the kill:\n" + run.text[-3000:]
        assert time.time() - t0 < timeout, "timed out:\n" + run.text[-3000:]
        time.sleep(0.05)


def _last_checkpoint(out):
    name = (out / "last_checkpoint").read_text().strip()
    return out / name


def _metrics(out):
    return [json.loads(line) for line in open(out / "metrics.json") if line.strip()]


def _all_checkpoints_load(out):
    """Every checkpoint file on disk is complete and finite (no torn write)."""
    names = sorted(p.name for p in out.glob("model_*.pth"))
    for name in names:
        ckpt = torch.load(out / name, map_location="cpu", weights_only=False)
        assert all(torch.isfinite(torch.as_tensor(v)).all() for v in ckpt["model"].values()
                   if torch.is_tensor(v) and v.is_floating_point()), name
    return names


def _finish(out, min_start, opts=()):
    """--resume to the end; checks it started after the last complete checkpoint."""
    k = torch.load(_last_checkpoint(out), map_location="cpu", weights_only=False)["iteration"]
    assert k + 1 >= min_start
    r = Run(out, _args(*opts, flags=["--resume"]))
    assert r.wait() == 0, r.text[-4000:]
    assert f"Starting training from iteration {k + 1}" in r.text
    assert "Starting training from iteration 0" not in r.text
    # the sampler continues at the data position: (k + 1) iterations x 2 images consumed
    assert f"Resuming at iteration {k + 1}: data stream seed 0, skipping {2 * (k + 1)} images" in r.text
    assert (out / "model_final.pth").is_file()
    return k, r


@pytest.mark.slow
def test_non_finite_loss_stops_naming_iteration_and_losses_last_checkpoint_intact(tmp_path, train_net,
                                                                                 capsys):
    """GAMMA=1e8 multiplies the LR by 1e8 at iteration 6: training diverges right after a
    good checkpoint at iteration 5."""
    out = tmp_path / "nan"
    rc = train_net.cli(_args("SOLVER.MAX_ITER", "20", "SOLVER.STEPS", "(6,)", "SOLVER.GAMMA", "1e8",
                             "SOLVER.CHECKPOINT_PERIOD", "3", "OUTPUT_DIR", str(out)))
    err = capsys.readouterr().err
    assert rc == 1
    err = err[err.index("train_net.py: error:"):]  # (torch's own warnings come before)
    assert err.startswith("train_net.py: error: training diverged:"), err
    assert "Traceback" not in err
    it = int(err.split("iteration=")[1].split(":")[0].split("!")[0])
    assert it >= 6  # the LR jumps at 6; the loss is finite before
    # the loss terms: detectron2's loss_dict, or those of the last finite iteration when the
    # box head refuses non-finite predictions before any loss exists
    assert all(t in err for t in ("loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc")), err
    last = _last_checkpoint(out)
    assert last.name == "model_0000005.pth" and f"last good checkpoint {last}" in err
    assert "Lower SOLVER.BASE_LR" in err
    assert not (out / "model_final.pth").exists()
    names = _all_checkpoints_load(out)  # all finite
    assert names == ["model_0000002.pth", "model_0000005.pth"]
    # and the last good checkpoint loads into the model through the project's checkpointer
    cfg = train_net.setup_cfg(train_net.get_parser().parse_args(_args("OUTPUT_DIR", str(out))))
    from resnext_det.engine.trainer import ResNeXtTrainer
    from resnext_det.weights import load_checkpoint

    model = ResNeXtTrainer.build_model(cfg)
    ckpt = load_checkpoint(model, cfg, "", resume=True)
    assert ckpt["iteration"] == 5
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resumed_trainer_restores_sampler_seed_and_data_position(tmp_path, tiny_resnext_cfg):
    """Unit level: a trainer resumed from a checkpoint at iteration 5 draws, as its first
    batch, exactly the images the uninterrupted run drew at iteration 6 (random seed)."""
    from resnext_det.data.synthetic import register_synthetic_coco
    from resnext_det.engine.trainer import ResNeXtTrainer

    train, _ = register_synthetic_coco("recovery_unit", str(tmp_path / "data"), num_train=12,
                                       num_val=2, image_size=32)

    def trainer():
        cfg = tiny_resnext_cfg()
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train,), ()
        cfg.SEED = -1  # a random stream: the resumed trainer draws another seed first
        cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER = 2, 20
        cfg.SOLVER.STEPS, cfg.SOLVER.REFERENCE_WORLD_SIZE = (10,), 0
        cfg.DATALOADER.NUM_WORKERS, cfg.DATALOADER.ASPECT_RATIO_GROUPING = 0, False
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (32,), 32
        cfg.TEST.EVAL_PERIOD = 0
        cfg.OUTPUT_DIR = str(tmp_path / "out")
        return ResNeXtTrainer(cfg)

    a = trainer()
    a.resume_or_load(resume=False)
    it = iter(a.data_loader)
    batches = [[d["image_id"] for d in next(it)] for _ in range(8)]
    a.iter = 5
    a.checkpointer.save("model_0000005", iteration=5)
    assert a.checkpointer.get_checkpoint_file().endswith("model_0000005.pth")

    b = trainer()
    b.resume_or_load(resume=True)
    assert b.start_iter == 6
    assert b.sampler._seed == a.sampler._seed  # restored from the checkpoint
    assert b.sampler.start == 12
    first = [d["image_id"] for d in next(b._trainer._data_loader_iter)]  # what run_step uses
    assert first == batches[6]


# ---- exact resume: a SIGKILL at a random moment, then --resume, ends bit-identical ---------

def _final_state(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt["model"], ckpt["trainer"]["_trainer"]["optimizer"]


def _assert_bit_identical(ref_path, got_path):
    ref_model, ref_opt = _final_state(ref_path)
    got_model, got_opt = _final_state(got_path)
    assert sorted(ref_model) == sorted(got_model)
    differ = [k for k in ref_model if not torch.equal(torch.as_tensor(ref_model[k]), torch.as_tensor(got_model[k]))]
    assert not differ, f"{len(differ)} of {len(ref_model)} tensors differ, e.g. {differ[:3]}: " + str(
        (torch.as_tensor(ref_model[differ[0]]) - torch.as_tensor(got_model[differ[0]])).abs().max())
    # the optimizer's momentum buffers too
    ref_m = [v["momentum_buffer"] for v in ref_opt["state"].values()]
    got_m = [v["momentum_buffer"] for v in got_opt["state"].values()]
    assert len(ref_m) == len(got_m) > 0 and all(torch.equal(a, b) for a, b in zip(ref_m, got_m))


def _kill_rng(test_name):
    """The random stream of a test's kill moments: seeded per test (RESNEXT_DET_KILL_SEED
    replays another), the seed printed, so a failing kill moment can be run again."""
    import random

    seed = int(os.environ.get("RESNEXT_DET_KILL_SEED", zlib.crc32(test_name.encode())))
    print(f"kill moment seed for {test_name}: {seed} (replay: RESNEXT_DET_KILL_SEED={seed})")
    return random.Random(seed), seed


def _kill_at_random_moment_after(run, first_checkpoint, rng, span=0.6):
    # the checkpointer writes the model file, then the last_checkpoint tag naming it
    _wait_for(lambda: first_checkpoint.is_file() and (first_checkpoint.parent / "last_checkpoint").is_file(),
              run)
    delay = rng.uniform(0.0, span)  # anywhere in the following iterations (or a save)
    print(f"killing {delay:.3f} s after {first_checkpoint.name}")
    time.sleep(delay)
    assert run.proc.poll() is None, "the run finished before the kill:\n" + run.text[-2000:]
    run.kill()
    assert run.wait() == -signal.SIGKILL


# 16 iterations of 2 images with flips and two train sizes (augmentation draws), a checkpoint
# every 4 and an evaluation at 8 (evaluation must not move the random streams); the LR steps
# at 10, inside the run.
EXACT_OPTS = ["SOLVER.MAX_ITER", "16", "SOLVER.STEPS", "(10,)", "SOLVER.CHECKPOINT_PERIOD", "4",
              "TEST.EVAL_PERIOD", "8", "INPUT.MIN_SIZE_TRAIN", "(48, 64)", "INPUT.RANDOM_FLIP", "horizontal"]


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    """The reference: the run never killed, with the data loaded in the main process. The
    killed runs load it with 0 or 1 worker processes and must end equal to this one too (each
    image's augmentation is seeded from its position, not from the worker that maps it)."""
    out = tmp_path_factory.mktemp("exact") / "ref"
    ref = Run(out, _args(*EXACT_OPTS, "DATALOADER.NUM_WORKERS", "0"))
    assert ref.wait() == 0, ref.text[-3000:]
    return out / "model_final.pth"


def _assert_schedule_continued(out, uninterrupted_run, k):
    """The LR schedule went on from the checkpoint: the resumed run ends after the step at 10
    and its scheduler counted all 16 iterations, as the uninterrupted run's did. A scheduler
    restarted at 0 when resuming at k + 1 would have counted 16 - (k + 1)."""
    by_iter = {m["iteration"]: m for m in _metrics(out) if "lr" in m}
    assert max(by_iter) == 15 and math.isclose(by_iter[15]["lr"], BASE_LR * 0.1, rel_tol=1e-6), by_iter
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    ref = torch.load(uninterrupted_run, map_location="cpu", weights_only=False)
    assert final["iteration"] == 15 and final["sampler"]["seed"] == 0
    sched = final["trainer"]["hooks"]["LRScheduler"]
    assert sched["last_epoch"] == 16 != 16 - (k + 1), sched
    assert sched == ref["trainer"]["hooks"]["LRScheduler"]
    assert all(math.isclose(g["lr"], BASE_LR * 0.1, rel_tol=1e-6)
               for g in final["trainer"]["_trainer"]["optimizer"]["param_groups"])


@pytest.mark.slow
def test_sigkill_mid_iteration_then_resume_continues_iteration_lr_and_data_bit_identical(tmp_path,
                                                                                       uninterrupted_run):
    """Killed at a seeded random moment after checkpoint 3 (inside the next iterations or a
    save; data loaded in the main process); --resume continues at the iteration, the LR
    schedule and the data position of the last checkpoint, and ends with the uninterrupted
    run's weights and momentum buffers, bit for bit."""
    opts = EXACT_OPTS + ["DATALOADER.NUM_WORKERS", "0"]
    rng, _ = _kill_rng("bit_identical_workers0")
    out = tmp_path / "killed"
    run = Run(out, _args(*opts))
    _kill_at_random_moment_after(run, out / "model_0000003.pth", rng)
    assert not (out / "model_final.pth").exists()
    killed_at = torch.load(_last_checkpoint(out), map_location="cpu", weights_only=False)
    assert killed_at["iteration"] in (3, 7, 11)
    assert killed_at["sampler"]["seed"] == 0  # the data stream is part of the checkpoint
    _all_checkpoints_load(out)

    k, r = _finish(out, min_start=4, opts=opts)
    _assert_schedule_continued(out, uninterrupted_run, k)
    assert json.load(open(out / "plan_state.json"))["finished"] == ["detector"]
    assert (out / "inference" / "eval_results.json").is_file()
    _assert_bit_identical(uninterrupted_run, out / "model_final.pth")


@pytest.mark.slow
def test_sigkill_during_checkpoint_saves_then_resume_bit_identical(tmp_path, uninterrupted_run):
    """Killed the moment a 'Saving checkpoint' line appears (the save is in progress), twice:
    in the first run at checkpoint 3, in the resumed one at 7; the data are loaded by one
    worker process. Every checkpoint on disk stays loadable, --resume finishes, and the final
    weights and momentum buffers equal the uninterrupted run's (data in the main process) bit
    for bit. Whether a kill lands inside torch.save is timing; tests/test_io.py covers that
    case deterministically."""
    out = tmp_path / "run"
    opts = EXACT_OPTS + ["DATALOADER.NUM_WORKERS", "1"]
    first = Run(out, _args(*opts), kill_on=lambda line: "Saving checkpoint to" in line
                and "model_0000003" in line)
    assert first.wait() == -signal.SIGKILL, first.text[-3000:]
    assert first.killed_on is not None
    # the kill may land before the rename (no checkpoint yet: restart from 0) or after it
    if (out / "last_checkpoint").is_file():
        _all_checkpoints_load(out)
    second = Run(out, _args(*opts, flags=["--resume"]), kill_on=lambda line: "Saving checkpoint to" in line
                 and "model_0000007" in line)
    assert second.wait() == -signal.SIGKILL, second.text[-3000:]
    assert second.killed_on is not None
    names = _all_checkpoints_load(out)
    assert "model_0000003.pth" in names
    assert _last_checkpoint(out).is_file()  # the pointer never names a missing/broken file
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    k, r = _finish(out, min_start=4, opts=opts)
    assert k in (3, 7)
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == 15
    print("temporary files left by the kills (harmless, never read):", leftovers)
    _assert_bit_identical(uninterrupted_run, out / "model_final.pth")


def _two_stage_opts():
    """Two stages of 12 iterations of 2 images, a checkpoint every 3 (2, 5, 8), the LR step at
    8 (inside each stage); flips on."""
    opts = ["SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "3"]
    for stage in ("RPN", "FAST_RCNN"):
        opts += [f"RESNEXT_PLAN.{stage}.MAX_ITER", "12", f"RESNEXT_PLAN.{stage}.STEPS", "(8,)",
                 f"RESNEXT_PLAN.{stage}.IMS_PER_BATCH", "2"]
    return opts + TINY_OPTS[:-2] + ["INPUT.RANDOM_FLIP", "horizontal"]  # (all but its CHECKPOINT_PERIOD)


@pytest.mark.slow
def test_two_stage_plan_resume_after_sigkill_ends_bit_identical(tmp_path):
    """Killed once in stage 1 (RPN) and once in stage 2 (Fast R-CNN), each at a seeded random
    moment after the stage's checkpoint 2 (nine iterations before its end); the resume after
    the stage-2 kill skips stage 1 and the proposals (their files untouched) and continues
    stage 2 at its last checkpoint; both stages' final weights equal the uninterrupted plan's,
    bit for bit."""
    opts = _two_stage_opts()
    conf = ["--config", "demo_tiny_X_C4_two_stage_synthetic.yaml"]
    ref = Run(tmp_path / "ref", conf + opts)
    assert ref.wait() == 0, ref.text[-3000:]
    rng, _ = _kill_rng("two_stage_bit_identical")
    out = tmp_path / "killed"
    stage2 = out / "stage2_fast_rcnn"
    first = Run(out, conf + opts)
    _kill_at_random_moment_after(first, out / "stage1_rpn" / "model_0000002.pth", rng, span=0.3)
    second = Run(out, ["--resume"] + conf + opts)
    _kill_at_random_moment_after(second, stage2 / "model_0000002.pth", rng, span=0.3)
    k = torch.load(_last_checkpoint(stage2), map_location="cpu", weights_only=False)["iteration"]
    assert json.load(open(out / "plan_state.json"))["finished"] == ["rpn", "proposals"]
    stage1_final = out / "stage1_rpn" / "model_final.pth"
    proposals = sorted(p for p in (out / "stage1_rpn" / "proposals").rglob("*") if p.is_file())
    assert any(p.name == "manifest.json" for p in proposals) and any(p.suffix == ".npy" for p in proposals)
    before = {p: p.stat().st_mtime_ns for p in [stage1_final] + proposals}

    last = Run(out, ["--resume"] + conf + opts)
    assert last.wait() == 0, last.text[-3000:]
    assert "Plan stage 1/3 'rpn' already finished: skipped (resume)" in last.text
    assert "Plan stage 2/3 'proposals' already finished: skipped (resume)" in last.text
    assert "Plan stage 3/3 'fast_rcnn' (train)" in last.text
    assert "Starting training from iteration 0" not in last.text  # stage 2 continues, too
    assert f"Starting training from iteration {k + 1}" in last.text
    assert {p: p.stat().st_mtime_ns for p in before} == before  # stage 1 files untouched
    assert json.load(open(out / "plan_state.json"))["finished"] == ["rpn", "proposals", "fast_rcnn"]
    for stage in ("stage1_rpn", "stage2_fast_rcnn"):
        _assert_bit_identical(tmp_path / "ref" / stage / "model_final.pth", out / stage / "model_final.pth")


def test_auto_training_layout_is_recorded_and_reused_on_resume(tmp_path, tiny_resnext_cfg):
    """'auto' decides partly by a timing probe; a resumed run must compute what the run it
    continues computed, so the first start records the choice and later starts reuse it
    (explicit on/off values still win)."""
    from resnext_det.data.synthetic import register_synthetic_coco
    from resnext_det.engine.trainer import TRAINING_LAYOUT, ResNeXtTrainer

    train, _ = register_synthetic_coco("layout_unit", str(tmp_path / "data"), num_train=4, num_val=2,
                                       image_size=32)

    def trainer(**fast):
        cfg = tiny_resnext_cfg(**{f"MODEL.RESNEXT.FAST.{k}": v for k, v in fast.items()})
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train,), ()
        cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.SOLVER.REFERENCE_WORLD_SIZE = 2, 4, 0
        cfg.SOLVER.STEPS = (3,)
        cfg.DATALOADER.NUM_WORKERS = 0
        cfg.OUTPUT_DIR = str(tmp_path / "out")
        return ResNeXtTrainer(cfg)

    from resnext_det.engine.fast import FrozenBNFoldedConv2d

    def layout(t):  # what the trainer's model computes with: (channels_last, folded)
        conv = t.model.backbone.bottom_up.res3[0].conv2
        return (conv.weight.is_contiguous(memory_format=torch.channels_last),
                any(isinstance(m, FrozenBNFoldedConv2d) for m in t.model.modules()))

    first = trainer()
    record = json.load(open(tmp_path / "out" / TRAINING_LAYOUT))
    assert (record["channels_last"], record["fold_frozen_bn"]) == layout(first)
    # a later start in the same folder follows the record, even where the probe would differ
    flipped = {"channels_last": not record["channels_last"], "fold_frozen_bn": not record["fold_frozen_bn"],
               "reason": "test"}
    json.dump(flipped, open(tmp_path / "out" / TRAINING_LAYOUT, "w"))
    again = trainer()
    assert layout(again) == (flipped["channels_last"], flipped["fold_frozen_bn"])
    explicit = trainer(CHANNELS_LAST_TRAIN="off", FOLD_FROZEN_BN_TRAIN="off")
    assert layout(explicit) == (False, False)
