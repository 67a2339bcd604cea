"""resnext_det.engine.plan_runner: proposal recall, the oracle's ground-truth proposals, and
stage 2 of the two-stage plan really training on stage 1's proposals."""
import os
import pickle

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import resnext_det
from resnext_det.data.proposals import write_proposal_shards
from resnext_det.engine.checks import check_proposal_file
from resnext_det.engine.plan import build_plan
from resnext_det.engine.plan_runner import (
    ProposalRecall,
    check_stage_proposals,
    prepare_datasets,
    stage_figures,
    write_gt_proposals,
    write_shuffled_proposals,
)


@pytest.fixture
def shapes(tmp_path):
    """A registered tiny synthetic set and the two-stage demo config on it."""
    cfg = resnext_det.get_cfg()
    cfg.merge_from_file(resnext_det.get_config_file("demo_tiny_X_C4_two_stage_synthetic.yaml"))
    cfg.merge_from_list([
        "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu", "RESNEXT_PLAN.PRETRAIN.ENABLED", "False",
        "RESNEXT_PLAN.SYNTHETIC.NUM_TRAIN", "6", "RESNEXT_PLAN.SYNTHETIC.NUM_VAL", "4",
        "RESNEXT_PLAN.SYNTHETIC.IMAGE_SIZE", "64", "RESNEXT_PLAN.SYNTHETIC.NAME", "runner_shapes",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    ])
    prepare_datasets(cfg)
    return cfg


def _outputs(boxes_per_image, logits_per_image=None):
    outs = []
    for i, b in enumerate(boxes_per_image):
        inst = Instances((64, 64))
        inst.proposal_boxes = Boxes(torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4))
        logits = (logits_per_image[i] if logits_per_image else -np.arange(len(b)))
        inst.objectness_logits = torch.as_tensor(logits, dtype=torch.float32)
        outs.append({"proposals": inst})
    return outs


def test_proposal_recall_counts_covered_ground_truth(shapes):
    dataset = "runner_shapes_val"
    dicts = DatasetCatalog.get(dataset)
    gts = [np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                     for a in d["annotations"]], dtype=float).reshape(-1, 4) for d in dicts]  # empty images: (0, 4)
    inputs = [{"image_id": d["image_id"]} for d in dicts]
    n = sum(len(g) for g in gts)

    def recall(boxes, logits=None, **kw):
        ev = ProposalRecall(dataset, **kw)
        ev.process(inputs, _outputs(boxes, logits))
        return ev.evaluate()["proposal_recall"]

    exact = recall(gts)
    assert exact["num_gt_boxes"] == n
    assert exact["recall@100_IoU0.5"] == exact["recall@100_IoU0.7"] == 1.0
    # every box grown by 25% per side: IoU 1/1.5625 = 0.64 -> found at 0.5, not at 0.7
    grown = [np.concatenate([g[:, :2] - 0.125 * (g[:, 2:] - g[:, :2]),
                             g[:, 2:] + 0.125 * (g[:, 2:] - g[:, :2])], 1) for g in gts]
    r = recall(grown)
    assert (r["recall@100_IoU0.5"], r["recall@100_IoU0.7"]) == (1.0, 0.0)
    # top-k is by objectness: the exact boxes ranked last are outside the top 1
    far = np.array([[0, 0, 1, 1]])
    mixed = [np.concatenate([far, g]) for g in gts]
    logits = [np.r_[10.0, np.zeros(len(g))] for g in gts]
    r = recall(mixed, logits, topk=(1, 100), ious=(0.5,))
    assert r["recall@100_IoU0.5"] == 1.0 and r["recall@1_IoU0.5"] == 0.0


def test_gt_proposal_file_is_a_valid_proposal_file(shapes, tmp_path):
    path = write_gt_proposals("runner_shapes_val", str(tmp_path / "gt.pkl"))
    dicts = DatasetCatalog.get("runner_shapes_val")
    check_proposal_file(path, [d["image_id"] for d in dicts], "runner_shapes_val")
    data = pickle.load(open(path, "rb"))
    assert [len(b) for b in data["boxes"]] == [len(d["annotations"]) for d in dicts]
    x, y, w, h = dicts[0]["annotations"][0]["bbox"]
    np.testing.assert_allclose(data["boxes"][0][0], [x, y, x + w, y + h], rtol=1e-6)


def test_shuffled_proposal_file_gives_each_image_another_images_proposals(shapes, tmp_path):
    gt = write_gt_proposals("runner_shapes_val", str(tmp_path / "gt.pkl"))
    path = write_shuffled_proposals(gt, str(tmp_path / "shuffled.pkl"))
    dicts = DatasetCatalog.get("runner_shapes_val")
    check_proposal_file(path, [d["image_id"] for d in dicts], "runner_shapes_val")
    src, out = pickle.load(open(gt, "rb")), pickle.load(open(path, "rb"))
    n = len(src["ids"])
    assert n >= 2 and list(out["ids"]) == list(src["ids"])
    for i in range(n):  # image i now holds image i+1's boxes and scores, not its own
        np.testing.assert_array_equal(out["boxes"][i], src["boxes"][(i + 1) % n])
        np.testing.assert_array_equal(out["objectness_logits"][i], src["objectness_logits"][(i + 1) % n])
    assert not all(np.array_equal(out["boxes"][i], src["boxes"][i]) for i in range(n))


@pytest.mark.parametrize("kind", ["shards", "pickle"])
def test_stage_2_trains_on_stage_1_proposals(shapes, kind):
    """The Fast R-CNN stage's training batches carry, for each image, the stage-1 proposal
    file's boxes of that very image (top TOPK_TRAIN by objectness), moved by the image's
    augmentation (here a horizontal flip or none), and the stage's model takes them as its
    proposals (PrecomputedProposals). Both the shards stage 1 writes (read when each image is
    mapped) and a detectron2 pickle at the same path (read by detectron2) work."""
    from resnext_det.engine.trainer import ResNeXtTrainer

    stage = build_plan(shapes)[2]
    assert stage.name == "fast_rcnn" and stage.cfg.MODEL.PROPOSAL_GENERATOR.NAME == "PrecomputedProposals"
    rng = np.random.default_rng(0)
    topk = stage.cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN
    files = {}
    for dataset, path in zip(list(stage.cfg.DATASETS.TRAIN) + list(stage.cfg.DATASETS.TEST),
                             list(stage.cfg.DATASETS.PROPOSAL_FILES_TRAIN)
                             + list(stage.cfg.DATASETS.PROPOSAL_FILES_TEST)):
        ids = [d["image_id"] for d in DatasetCatalog.get(dataset)]
        xy = rng.uniform(0, 40, (len(ids), 8, 2))
        boxes = [np.concatenate([p, p + rng.uniform(5, 20, p.shape)], 1).astype(np.float32) for p in xy]
        logits = [rng.normal(size=8).astype(np.float32) for _ in ids]
        files[dataset] = dict(zip(ids, zip(boxes, logits)))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if kind == "shards":
            assert write_proposal_shards(os.path.dirname(path), ids, boxes, logits, num_shards=2) == path
        else:
            with open(path, "wb") as f:
                pickle.dump({"ids": ids, "boxes": boxes, "objectness_logits": logits, "bbox_mode": 0}, f)
    check_stage_proposals(stage.cfg)
    cfg = stage.cfg.clone()
    cfg.defrost()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.RANDOM_FLIP = "horizontal"
    cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN = topk = min(topk, 5)
    batch = next(iter(ResNeXtTrainer.build_train_loader(cfg)))
    for item in batch:
        boxes, logits = files[cfg.DATASETS.TRAIN[0]][item["image_id"]]
        want = boxes[np.argsort(-logits, kind="stable")][:topk]
        got = item["proposals"].proposal_boxes.tensor.numpy()
        mirrored = want.copy()
        mirrored[:, [0, 2]] = 64 - want[:, [2, 0]]
        assert np.allclose(got, want, atol=1e-4) or np.allclose(got, mirrored, atol=1e-4)
    assert len(batch) == cfg.SOLVER.IMS_PER_BATCH
    # the model's proposals are exactly those of the batch (+ the ground truth, appended when training)
    model = ResNeXtTrainer.build_model(cfg)
    seen = []  # roi_heads(images, features, proposals, targets): what it gets as proposals
    model.roi_heads.register_forward_pre_hook(
        lambda module, args: seen.append([p.proposal_boxes.tensor.clone() for p in args[2]]))
    model.train()
    with EventStorage(0):
        model(batch)
    for item, boxes in zip(batch, seen[0]):
        assert torch.equal(boxes, item["proposals"].proposal_boxes.tensor)
    assert cfg.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT


def test_stage_figures_flatten_each_stage():
    results = {"proposals": {"x_val": {"recall": {"AR@100": 0.8, "recall@100_IoU0.5": 1.0}}},
               "fast_rcnn": {"bbox": {"AP": 70.0, "AP50": 95.0}, "oracle": {"bbox": {"AP": 85.0}}}}
    assert stage_figures(results) == {"rpn_AR@100": 0.8, "rpn_recall@100_IoU0.5": 1.0,
                                      "box_AP": 70.0, "box_AP50": 95.0, "oracle_box_AP": 85.0}
