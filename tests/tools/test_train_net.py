"""tools/train_net.py end to end on the synthetic set, on CPU, with tiny models and few iterations.

The real demos (AP >= 60) are not run here: see the README for their numbers.
"""
import json
import math
import os

import pytest
import torch

import zygote
from conftest import TINY_OPTS
from resnext_det.data.proposals import ProposalStore

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow


def _run(args, timeout=400):
    # OMP_NUM_THREADS: conftest gives each test worker its share; passive waits keep a loaded
    # machine's threads from spinning (no effect on the arithmetic)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    r = zygote.run([os.path.join(ROOT, "tools", "train_net.py")] + args, cwd=ROOT, env=env, timeout=timeout)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    return r


def _assert_same_detections(eager_json, exported_json, top=10):
    """Each image's ``top`` best exported detections are eager ones: same class, box within
    0.05 px, score within 1e-3 (matched by value, so near-tied scores may swap places)."""
    by_image = {}
    for name, path in (("eager", eager_json), ("exported", exported_json)):
        for d in json.load(open(path)):
            by_image.setdefault(d["image_id"], {"eager": [], "exported": []})[name].append(d)
    assert by_image
    for image_id, dets in by_image.items():
        assert len(dets["exported"]) == len(dets["eager"]) > 0, image_id
        best = sorted(dets["exported"], key=lambda d: -d["score"])[:top]
        for d in best:
            assert any(e["category_id"] == d["category_id"] and abs(e["score"] - d["score"]) < 1e-3
                       and max(abs(a - b) for a, b in zip(e["bbox"], d["bbox"])) < 0.05
                       for e in dets["eager"]), (image_id, d)


# the reduced demo: six iterations of 4 images (flips on: detectron2's default), an evaluation
# at iteration 2 and at the end, the ONNX export and its AP
DEMO_ARGS = ["--demo", "fpn", "MODEL.FPN.OUT_CHANNELS", "32", "SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "(4,)",
             "SOLVER.WARMUP_ITERS", "2", "SOLVER.IMS_PER_BATCH", "4", "TEST.EVAL_PERIOD", "3"] + TINY_OPTS


def _demo(out):
    return _run(DEMO_ARGS + ["OUTPUT_DIR", str(out)])


@pytest.fixture(scope="module")
def reduced_demo(tmp_path_factory):
    """One run of the reduced demo: (its OUTPUT_DIR, its completed process). Both tests that
    use it carry the same xdist group, so one worker runs it once."""
    out = tmp_path_factory.mktemp("demo") / "a"
    return out, _demo(out)


@pytest.mark.xdist_group("test_train_net_demo")
def test_reduced_demo_trains_evaluates_and_draws(reduced_demo):
    out, r = reduced_demo
    assert "COCO box AP on synthetic_shapes_val =" in r.stdout
    # the exported model's AP beside the eager one (issue 13: the demo deploys too)
    assert "through ONNX Runtime (eager" in r.stdout and (out / "deploy" / "model.onnx").is_file()
    dep = json.load(open(out / "deploy" / "inference" / "eval_results.json"))
    results = json.load(open(out / "inference" / "eval_results.json"))["results"]
    assert math.isfinite(results["bbox"]["AP"]) and 0 <= results["bbox"]["AP"] <= 100
    # the exported fp32 model is the eager one: the same AP (within the README's 0.5) and, since
    # six iterations leave the AP near 0, the same detections on every image, box for box
    assert dep["runtime"] == "onnxruntime"
    assert abs(dep["results"]["bbox"]["AP"] - results["bbox"]["AP"]) <= 0.5
    _assert_same_detections(out / "inference" / "synthetic_shapes_val" / "coco_instances_results.json",
                            out / "deploy" / "inference" / "synthetic_shapes_val" / "coco_instances_results.json")
    assert (out / "inference" / "synthetic_shapes_val" / "coco_instances_results.json").is_file()
    records = [json.loads(line) for line in open(out / "metrics.json")]
    assert [r["iteration"] for r in records if "bbox/AP" in r] == [2, 6]  # periodic + final
    assert any("total_loss" in r and "eta_seconds" in r for r in records)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))  # TensorBoard
    assert "eta:" in r.stdout and "loss_cls" in r.stdout  # console writer: ETA and losses
    assert "Start inference on 4 batches" in r.stdout  # evaluation progress (d2 evaluator)
    pics = out / "pictures"
    assert (pics / "detections.png").stat().st_size > 1000
    assert (pics / "detections_1.png").is_file()
    assert (pics / "losses_and_ap.png").stat().st_size > 1000
    assert str(pics / "detections.png") in r.stdout and str(pics / "losses_and_ap.png") in r.stdout
    assert json.load(open(out / "plan_state.json"))["finished"] == ["detector"]
    assert (out / "model_final.pth").is_file()


@pytest.mark.xdist_group("test_train_net_demo")
def test_demo_repeats_its_ap_and_losses_exactly(tmp_path, reduced_demo):
    """The README's promise: on one machine the demo gives the same AP, to 4 digits, on every
    run (data, init, sampling and augmentation follow SEED). The reduced demo run again, the
    same command in another folder (flips and an evaluation in the middle of training
    included): the final weights are bit-identical, the logged losses and the AP equal."""
    first, _ = reduced_demo
    second = tmp_path / "b"
    _demo(second)
    runs = []
    for out in (first, second):
        ap = json.load(open(out / "inference" / "eval_results.json"))["results"]["bbox"]["AP"]
        losses = [(m["iteration"], m["total_loss"]) for m in map(json.loads, open(out / "metrics.json"))
                  if "total_loss" in m]
        runs.append((ap, losses, torch.load(out / "model_final.pth", weights_only=False)["model"]))
    (ap_a, losses_a, weights_a), (ap_b, losses_b, weights_b) = runs
    assert losses_a and losses_a == losses_b
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(torch.as_tensor(weights_a[k]),
                                                                     torch.as_tensor(weights_b[k])) for k in weights_a)
    assert math.isfinite(ap_a) and f"{ap_a:.4f}" == f"{ap_b:.4f}"


def test_two_stage_miniature_runs_end_to_end(tmp_path):
    out = tmp_path / "two"
    stage_opts = []
    for stage in ("RPN", "FAST_RCNN"):
        stage_opts += [f"RESNEXT_PLAN.{stage}.MAX_ITER", "4", f"RESNEXT_PLAN.{stage}.STEPS", "(3,)",
                       f"RESNEXT_PLAN.{stage}.IMS_PER_BATCH", "2"]
    r = _run(["--demo", "two_stage", "OUTPUT_DIR", str(out), "SOLVER.WARMUP_ITERS", "1",
              "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32"] + stage_opts + TINY_OPTS)
    state = json.load(open(out / "plan_state.json"))
    assert state["finished"] == ["rpn", "proposals", "fast_rcnn"]
    # stage 1: proposals written for the training and the test sets, as shards (detectron2's
    # proposal dict when read whole)
    for split, n in (("train", 16), ("val", 4)):
        manifest = out / "stage1_rpn" / "proposals" / f"synthetic_shapes_{split}" / "manifest.json"
        props = ProposalStore(str(manifest)).to_detectron2_dict()
        assert sorted(props["ids"]) == list(range(1, n + 1))
        # every image has an entry; a 4-iteration RPN may leave an image with none above the
        # minimum size, so only the whole split must have proposals
        assert all(b.shape[1] == 4 and len(b) == len(s)
                   for b, s in zip(props["boxes"], props["objectness_logits"]))
        assert sum(len(b) > 0 for b in props["boxes"]) >= n // 2
    # stage 2: Fast R-CNN trained from them, then COCO AP
    cfg_text = open(out / "stage2_fast_rcnn" / "config.yaml").read()
    assert "PrecomputedProposals" in cfg_text and "LOAD_PROPOSALS: true" in cfg_text
    assert (out / "stage2_fast_rcnn" / "model_final.pth").is_file()
    ap = state["results"]["fast_rcnn"]["bbox"]["AP"]
    assert math.isfinite(ap) and 0 <= ap <= 100
    assert (out / "pictures" / "losses_and_ap.png").is_file()
    # both stages started from the miniature "ImageNet" (torchvision format)
    pretrained = out / "pretrain" / "tiny_resnext_torchvision.pth"
    assert pretrained.is_file()
    for stage in ("stage1_rpn", "stage2_fast_rcnn"):
        assert f"WEIGHTS: {pretrained}" in open(out / stage / "config.yaml").read()
    assert "(torchvision); input format check: ok" in r.stdout
    # each stage's quality: stage-1 proposal recall on val, stage-2 AP, and the oracle AP
    recall = state["results"]["proposals"]["synthetic_shapes_val"]["recall"]
    assert set(recall) >= {"AR@100", "AR@1000", "recall@100_IoU0.5", "recall@100_IoU0.7"}
    assert all(0 <= v <= 1 for v in recall.values())
    assert recall["recall@100_IoU0.5"] >= recall["recall@100_IoU0.7"]  # a looser IoU finds more
    assert "synthetic_shapes_train" in state["results"]["proposals"]  # (no recall on train)
    assert "recall" not in state["results"]["proposals"]["synthetic_shapes_train"]
    oracle = state["results"]["fast_rcnn"]["oracle"]["bbox"]["AP"]
    assert math.isfinite(oracle) and 0 <= oracle <= 100
    # ground-truth boxes as proposals beat the RPN's by a margin (measured: 30.1 against 0.0 on
    # this miniature; four iterations leave the RPN's recall at 0, hence real AP 0)
    assert oracle >= ap + 10, (oracle, ap)
    assert (out / "stage2_fast_rcnn" / "oracle" / "synthetic_shapes_val_gt_proposals.pkl").is_file()
    # the control: the same model given another image's proposals (far lower on the full demo)
    shuffled = state["results"]["fast_rcnn"]["shuffled"]["bbox"]["AP"]
    assert math.isfinite(shuffled) and 0 <= shuffled <= ap  # never better than the real proposals
    assert (out / "stage2_fast_rcnn" / "shuffled" / "synthetic_shapes_val_shuffled_proposals.pkl").is_file()
    for text in ("pretraining (miniature ImageNet): top-1", "stage 1 (RPN) proposals on "
                 "synthetic_shapes_val: AR@100", "stage 2 (Fast R-CNN): box AP",
                 "with ground-truth boxes as proposals (oracle): box AP",
                 "with each image given another image's proposals (control): box AP"):
        assert text in r.stdout, text

    # --eval-only on the stage-2 checkpoint gives the same AP (and rewrites the results JSON)
    (out / "stage2_fast_rcnn" / "inference" / "eval_results.json").unlink()
    _run(["--demo", "two_stage", "--eval-only", "OUTPUT_DIR", str(out), "MODEL.WEIGHTS",
          str(out / "stage2_fast_rcnn" / "model_final.pth"), "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
          "32"] + stage_opts + TINY_OPTS)
    again = json.load(open(out / "stage2_fast_rcnn" / "inference" / "eval_results.json"))
    assert again["results"]["bbox"]["AP"] == pytest.approx(ap, abs=1e-6)
