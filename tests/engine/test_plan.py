"""The training plan: --dry-run of the paper's schedule, world-size scaling, resume-at-stage."""
import json
import os

import pytest
import yaml

import resnext_det
from resnext_det.engine import plan_runner
from resnext_det.engine.plan import build_plan, plan_summary
from resnext_det.engine.plan_runner import PlanState

import zygote

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(name, *opts):
    cfg = resnext_det.get_cfg()
    cfg.merge_from_file(resnext_det.get_config_file(name))
    cfg.merge_from_list(list(opts))
    return cfg


def test_dry_run_shows_the_papers_schedule(tmp_path):
    out = tmp_path / "out"
    r = zygote.run(["tools/train_net.py", "--config", "configs/faster_rcnn_X101_32x4d.yaml", "--num-gpus", "8",
                    "--dry-run", "OUTPUT_DIR", str(out)], cwd=ROOT, timeout=300,
                   env=dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "none")))
    assert r.returncode == 0, r.stderr[-3000:]
    plan = yaml.safe_load(r.stdout)
    assert not out.exists()  # nothing written, no data touched
    rpn, props, fast = plan["stages"]
    assert (rpn["paper_stage"], props["paper_stage"], fast["paper_stage"]) == (1, 1, 2)
    assert rpn["meta_architecture"] == "ProposalNetwork"
    assert rpn["roi_heads"] == "ResNeXtRes5ROIHeads"  # C4 form, as in the paper
    assert rpn["resnext"]["depth"] == 101 and rpn["resnext"]["cardinality"] == 32
    assert rpn["resnext"]["bottleneck_width"] == 4
    s1, s2 = rpn["solver"], fast["solver"]
    assert (s1["IMS_PER_BATCH"], s1["ims_per_worker"], s1["BASE_LR"]) == (16, 2, 0.02)
    assert (s1["STEPS"], s1["MAX_ITER"], s1["GAMMA"]) == ([120000], 180000, 0.1)
    assert rpn["rpn_batch_size_per_image"] == 256
    assert fast["meta_architecture"] == "GeneralizedRCNN"
    assert fast["proposal_generator"] == "PrecomputedProposals" and fast["load_proposals"]
    assert (s2["IMS_PER_BATCH"], s2["ims_per_worker"], s2["BASE_LR"]) == (8, 1, 0.005)
    assert (s2["STEPS"], s2["MAX_ITER"]) == ([120000], 180000)
    assert fast["roi_batch_size_per_image"] == 64
    for s in (s1, s2):
        assert (s["WEIGHT_DECAY"], s["MOMENTUM"]) == (0.0001, 0.9)
    trainval35k = ["coco_2014_train", "coco_2014_valminusminival"]
    for st in (rpn, fast):
        assert st["datasets"]["train"] == trainval35k
    # stage 1 is measured once, by the proposals step (recall on minival), not by its trainer
    assert rpn["datasets"]["test"] == [] and fast["datasets"]["test"] == ["coco_2014_minival"]
    assert props["evaluate"].startswith("proposal recall (AR@100, AR@1000")
    assert props["evaluate"].endswith("on coco_2014_minival")
    # stage 2 reads the proposals stage 1 writes, for the training and the test sets
    assert props["datasets"] == trainval35k + ["coco_2014_minival"]
    assert fast["datasets"]["proposal_files_train"] == [props["writes"][d] for d in trainval35k]
    assert fast["datasets"]["proposal_files_test"] == [props["writes"]["coco_2014_minival"]]
    assert props["weights"] == os.path.join(rpn["output_dir"], "model_final.pth")
    assert fast["weights"] == rpn["weights"]  # both stages start from MODEL.WEIGHTS
    assert fast["evaluate"] == "COCO box AP on coco_2014_minival"
    assert {rpn["output_dir"], props["output_dir"], fast["output_dir"]} == {
        str(out / "stage1_rpn"), str(out / "stage1_rpn" / "proposals"), str(out / "stage2_fast_rcnn")}


@pytest.mark.parametrize("world_size,batch,lr,max_iter,steps", [
    (1, 2, 0.0025, 1440000, [960000]),   # one GPU: per-GPU batch kept, LR and schedule scaled
    (16, 32, 0.04, 90000, [60000]),      # two 8-GPU machines
])
def test_fewer_or_more_workers_scale_linearly(world_size, batch, lr, max_iter, steps):
    rpn = plan_summary(_cfg("faster_rcnn_X101_32x4d.yaml"), world_size)["stages"][0]["solver"]
    assert (rpn["IMS_PER_BATCH"], rpn["MAX_ITER"], rpn["STEPS"]) == (batch, max_iter, steps)
    assert rpn["BASE_LR"] == pytest.approx(lr)


@pytest.mark.parametrize("name,mode,roi_heads", [
    ("faster_rcnn_X101_32x4d_FPN.yaml", "two_stage", "StandardROIHeads"),
    ("faster_rcnn_X50_32x4d.yaml", "two_stage", "ResNeXtRes5ROIHeads"),
    ("faster_rcnn_X50_32x4d_FPN.yaml", "two_stage", "StandardROIHeads"),
    ("faster_rcnn_X101_32x4d_FPN_e2e.yaml", "joint", "StandardROIHeads"),
    ("faster_rcnn_X50_32x4d_FPN_e2e.yaml", "joint", "StandardROIHeads"),
])
def test_twins_and_end_to_end_configs(name, mode, roi_heads):
    stages = build_plan(_cfg(name))
    assert [s.name for s in stages] == (["rpn", "proposals", "fast_rcnn"] if mode == "two_stage"
                                        else ["detector"])
    final = stages[-1].cfg
    assert final.MODEL.ROI_HEADS.NAME == roi_heads
    assert list(final.DATASETS.TEST) == ["coco_2014_minival"]
    if mode == "joint":
        assert final.MODEL.PROPOSAL_GENERATOR.NAME == "RPN"


def test_coco_2017_switch():
    stages = build_plan(_cfg("faster_rcnn_X101_32x4d.yaml", "RESNEXT_PLAN.COCO_SPLITS", "coco_2017"))
    assert list(stages[0].cfg.DATASETS.TRAIN) == ["coco_2017_train"]
    assert list(stages[2].cfg.DATASETS.TEST) == ["coco_2017_val"]
    assert stages[2].cfg.DATASETS.PROPOSAL_FILES_TEST[0].endswith("coco_2017_val/manifest.json")


def test_bad_mode_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match="RESNEXT_PLAN.MODE='three'"):
        build_plan(_cfg("faster_rcnn_X101_32x4d.yaml", "RESNEXT_PLAN.MODE", "three"))


class _Crash(RuntimeError):
    pass


def _fake_trainer(log, crash_on=None):
    class FakeTrainer:
        def __init__(self, cfg):
            self.name = os.path.basename(cfg.OUTPUT_DIR)
            self.output_dir = cfg.OUTPUT_DIR

        def resume_or_load(self, resume):
            log.append((self.name, "load", resume))

        def train(self):
            if self.name == crash_on:
                raise _Crash(self.name)
            log.append((self.name, "train"))
            if "fast" in self.name:  # what ResNeXtTrainer.test writes after the last iteration
                os.makedirs(os.path.join(self.output_dir, "inference"), exist_ok=True)
                with open(os.path.join(self.output_dir, "inference", "eval_results.json"), "w") as f:
                    json.dump({"results": {"bbox": {"AP": 42.0, "AP50": 60.0}}}, f)

    return FakeTrainer


def test_resume_continues_at_the_unfinished_stage(tmp_path, monkeypatch):
    cfg = _cfg("faster_rcnn_X101_32x4d.yaml", "OUTPUT_DIR", str(tmp_path))
    computed = []
    monkeypatch.setattr(plan_runner, "compute_proposals",
                        lambda stage, trainer_cls: computed.append(stage.name) or {"n": 1})
    checked = []  # the proposals are faked: record the stage-2 proposal check instead of reading files
    monkeypatch.setattr(plan_runner, "check_stage_proposals",
                        lambda cfg: checked.append(os.path.basename(cfg.OUTPUT_DIR)))
    log = []
    with pytest.raises(_Crash):  # killed during stage 2
        plan_runner.run_plan(cfg, trainer_cls=_fake_trainer(log, crash_on="stage2_fast_rcnn"))
    state = json.load(open(tmp_path / "plan_state.json"))
    assert state["finished"] == ["rpn", "proposals"]
    assert not (tmp_path / "plan_state.json.tmp").exists()

    log.clear()
    results = plan_runner.run_plan(cfg, resume=True, trainer_cls=_fake_trainer(log))
    # stage 1 and its proposals are not redone; stage 2 resumes from its own checkpoint
    assert log == [("stage2_fast_rcnn", "load", True), ("stage2_fast_rcnn", "train")]
    assert computed == ["proposals"]
    assert checked[-1] == "stage2_fast_rcnn"  # checked before stage 2 trains
    assert results["fast_rcnn"] == {"bbox": {"AP": 42.0, "AP50": 60.0}}
    assert PlanState(str(tmp_path)).load().data["finished"] == ["rpn", "proposals", "fast_rcnn"]

    log.clear()
    plan_runner.run_plan(cfg, resume=False, trainer_cls=_fake_trainer(log))  # a fresh run redoes all
    assert [e for e in log if e[1] == "train"] == [("stage1_rpn", "train"), ("stage2_fast_rcnn", "train")]
    assert computed == ["proposals", "proposals"]


def test_demo_plan_starts_both_stages_from_the_pretrained_file(tmp_path):
    stages = build_plan(_cfg("demo_tiny_X_C4_two_stage_synthetic.yaml", "OUTPUT_DIR", str(tmp_path)))
    path = str(tmp_path / "pretrain" / "tiny_resnext_torchvision.pth")
    assert [s.cfg.MODEL.WEIGHTS for s in stages if s.kind == "train"] == [path, path]
    assert [s.oracle_eval for s in stages] == [False, False, True]
    assert stages[1].recall_datasets == ("synthetic_shapes_val",)
    summary = plan_summary(_cfg("demo_tiny_X_C4_two_stage_synthetic.yaml", "OUTPUT_DIR", str(tmp_path)))
    assert summary["config"]["pretrain"]["writes"] == path
    assert "oracle" in summary["stages"][2]["evaluate"]
    assert not tmp_path.joinpath("pretrain").exists()  # describing the plan writes nothing
