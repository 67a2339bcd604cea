"""A deployed predictor is a function of its input: one predictor called on a sequence that
mixes images with objects, black images and noise-only images, of one size and of others,
gives on each image what a fresh predictor gives on it alone, in every runtime, precision and
shape mode, the NNCF int8 IR included; and ``--eval-only`` through each runtime gives, image by
image, eager's detections on a val set with an empty image and non-square images.

The model is the shared tiny FPN exported again with a score threshold set between its own
top scores, so that about half the images have no detection at all: the case where OpenVINO
once handed back the previous image's top detection (resnext_det.deploy.graph_fix)."""
import json

import numpy as np
import pytest
import torch
from conftest import rectangles_image
from deploy_models import CONFIGS, _cfg, _eager, _opts, build_trained

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_deploy_parity")]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    return build_trained(tmp_path_factory)


def _val_images(d):
    """The synthetic val images (BGR, as cv2.imread gives them): square, landscape, portrait,
    and index 3 with no object."""
    from detectron2.data.detection_utils import read_image

    return [read_image(str(p), format="BGR") for p in sorted((d / "data" / "val").glob("*.png"))]


def _sequence(val, val_tops):
    """(name, HxWx3 uint8 BGR): six distinct images of every kind (objects, black, noise; from
    the val set the image with the lowest and with the highest top score and the empty image,
    index 3), sizes changing, in a sequence of nine where each kind follows another kind."""
    g = np.random.default_rng(11)
    images = {"shapes 80x120": rectangles_image(80, 120, 1), "black 80x120": np.zeros((80, 120, 3), np.uint8),
              "noise 75x101": g.integers(0, 50, (75, 101, 3), dtype=np.uint8)}
    for i in dict.fromkeys([int(np.argmin(val_tops)), int(np.argmax(val_tops)), 3]):
        images[f"val {i} {val[i].shape[0]}x{val[i].shape[1]}"] = val[i]
    names = list(images)
    order = [0, 1, 3, 2, 4, 0, len(names) - 1, 1, 2]
    return [(names[k], images[names[k]]) for k in order]


def _threshold(tops):
    """A score threshold in the widest gap between the middle top scores: about half the images
    keep a detection, and no score sits near the threshold (so runtimes agree on each side)."""
    s = np.sort(np.asarray(tops))
    mid = range(len(s) // 4, max(len(s) // 4 + 1, 3 * len(s) // 4))
    i = max(mid, key=lambda k: s[k + 1] - s[k])
    return float((s[i] + s[i + 1]) / 2)


@pytest.fixture(scope="module")
def gated(trained, tmp_path_factory):
    """(folder, threshold, opts, sequence, eager counts) of the tiny FPN exported with a
    threshold between its val images' top scores, with its NNCF int8 IR."""
    from detectron2.engine import DefaultPredictor

    from resnext_det.apps import export as export_cli

    d, arch = trained["fpn"]
    eager = DefaultPredictor(_cfg(d, arch))  # SCORE_THRESH_TEST 0: every candidate scored

    def top(img):
        scores = eager(img)["instances"].scores
        return float(scores.max()) if len(scores) else 0.0

    val = _val_images(d)
    val_tops = [top(img) for img in val]
    thr = _threshold(val_tops)
    seq = _sequence(val, val_tops)
    tops = [top(img) for _, img in seq]
    out = tmp_path_factory.mktemp("gated")
    opts = _opts(d, arch) + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(thr), "MODEL.WEIGHTS", str(d / "model_final.pth")]
    assert export_cli.cli(["--config-file", CONFIGS[arch], "--output", str(out), "--int8", "--calib-images", "2"]
                          + opts) == 0
    print(f"threshold {thr:.4f}; val top scores {[round(t, 4) for t in val_tops]}; "
          f"sequence {[round(t, 4) for t in tops]}")
    return out, thr, opts, seq, [int(t > thr) for t in tops]


def _counts(detections):
    return [len(x) for x in detections]


# precision "default" is OpenVINO's own pick: bf16 or fp32, both below
PREDICTORS = [
    ("model.onnx", "onnxruntime", {}),
    ("model.onnx", "openvino", {"shape_mode": "dynamic"}),
    ("model.onnx", "openvino", {"shape_mode": "static"}),
    ("model.onnx", "openvino", {"precision": "bf16"}),
    ("model_int8.xml", "openvino", {"shape_mode": "static"}),
]


@pytest.mark.parametrize("file,runtime,options", PREDICTORS,
                         ids=[f"{f}-{r}-{'-'.join(map(str, o.values())) or 'default'}" for f, r, o in PREDICTORS])
def test_one_predictor_answers_each_image_as_a_fresh_one(gated, file, runtime, options, tmp_path):
    from resnext_det.deploy import DeployedPredictor
    from resnext_det.deploy.parity import compare_detections

    out, thr, _, seq, eager_counts = gated
    path = str(out / file)
    if runtime == "openvino":  # fresh predictors load the compiled model instead of compiling again
        options = {**options, "cache_dir": str(tmp_path / "compiled")}
    one = DeployedPredictor(path, runtime=runtime, num_threads=2, **options)
    in_sequence = [one(img)["instances"] for _, img in seq]
    fresh = {name: DeployedPredictor(path, runtime=runtime, num_threads=2, **options)(img)["instances"]
             for name, img in dict(seq).items()}
    alone = [fresh[name] for name, _ in seq]
    print(f"{file} {runtime} {options}: counts in sequence {_counts(in_sequence)}, alone {_counts(alone)}")
    for (name, _), got, ref in zip(seq, in_sequence, alone):
        cmp = compare_detections(ref, got, box_tol=1e-3, score_tol=1e-5)
        assert cmp["ok"], f"{name}: {cmp['why']} (alone {len(ref)}, in sequence {len(got)})"
        assert (got.scores > thr).all()
    # the sequence exercises the case: images with and without detections, alternating
    assert 0 in _counts(alone) and max(_counts(alone)) > 0
    if file == "model.onnx" and options.get("precision", "fp32") == "fp32":
        assert [min(n, 1) for n in _counts(alone)] == eager_counts


def test_batched_inference_answers_each_image_as_alone(gated):
    """``inference`` (the evaluator's calling convention) on a list mixing empty and full images."""
    from detectron2.data import transforms as T

    from resnext_det.deploy import DeployedPredictor
    from resnext_det.deploy.parity import compare_detections

    out, _, _, seq, _ = gated
    p = DeployedPredictor(str(out / "model.onnx"), runtime="openvino", num_threads=2)
    c = p.contract
    aug = T.ResizeShortestEdge([c.min_size_test] * 2, c.max_size_test)
    batch = []
    for _, img in seq:
        rgb = img[:, :, ::-1]
        batch.append({"image": torch.as_tensor(aug.get_transform(rgb).apply_image(rgb).transpose(2, 0, 1).copy()),
                      "height": img.shape[0], "width": img.shape[1]})
    together = p.inference(batch)
    fresh = {}
    for (name, img), d, got in zip(seq, batch, together):
        if name not in fresh:
            fresh[name] = DeployedPredictor(str(out / "model.onnx"), runtime="openvino", num_threads=2,
                                            cache_dir=str(out / "compiled"))(img)["instances"]
        ref = fresh[name]
        cmp = compare_detections(ref, got["instances"], box_tol=1e-3, score_tol=1e-5)
        assert cmp["ok"], f"{name}: {cmp['why']}"


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_eval_only_through_a_runtime_gives_eager_detections_per_image(gated, trained, runtime, tmp_path):
    """``--eval-only`` on the exported model over the val set (an empty image, landscape and
    portrait images): per image, the detections eager inference of the same config gives."""
    from resnext_det import cli

    out, _, opts, _, _ = gated
    d, arch = trained["fpn"]
    data = ["RESNEXT_PLAN.SYNTHETIC.ROOT", str(d / "data")]
    runs = {}
    for name, weights, extra in (("eager", str(d / "model_final.pth"), []),
                                 (runtime, str(out / "model.onnx"), ["--runtime", runtime])):
        folder = tmp_path / name
        assert cli.cli(["--config", CONFIGS[arch], "--eval-only"] + extra + opts + data +
                       ["OUTPUT_DIR", str(folder), "MODEL.WEIGHTS", weights]) == 0
        results = json.loads(next((folder / "inference").rglob("coco_instances_results.json")).read_text())
        per_image = {}
        for r in results:
            per_image.setdefault(r["image_id"], []).append(r)
        runs[name] = per_image
    ids = json.loads((d / "data" / "annotations" / "instances_val.json").read_text())["images"]
    counts = {name: [len(runs[name].get(im["id"], [])) for im in ids] for name in runs}
    print(counts)
    assert counts[runtime] == counts["eager"]
    assert 0 in counts["eager"] and max(counts["eager"]) > 0
    for im in ids:
        ref = sorted(runs["eager"].get(im["id"], []), key=lambda r: -r["score"])
        got = sorted(runs[runtime].get(im["id"], []), key=lambda r: -r["score"])
        for a, b in zip(ref, got):
            assert a["category_id"] == b["category_id"]
            np.testing.assert_allclose(a["bbox"], b["bbox"], atol=0.02)
            assert abs(a["score"] - b["score"]) <= 1e-4
