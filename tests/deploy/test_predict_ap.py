"""tools/predict.py's predictions.json is COCO's results format with the right ids, scale and
box format: over the synthetic val pictures (an empty one, landscape and portrait ones), scored
by pycocotools against the val annotations, it gives the AP of ``train_net.py --eval-only`` on
the same model: to 4 digits eagerly, within 0.1 through each runtime. This tiny model's AP is
near 0, so every one of COCOeval's 12 figures (the recalls are not near 0) is also compared with
those of detectron2's own results file from the same evaluation."""
import json

import pytest
from deploy_models import CONFIGS, _opts, build_trained

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_deploy_parity")]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    return build_trained(tmp_path_factory)


def _coco_figures(results, ground_truth):
    """COCOeval's 12 figures (percent) of a detectron2 results file, computed here by pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(ground_truth))
    ev = COCOeval(gt, gt.loadRes(str(results)), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    return {n: float(v) * 100 for n, v in zip(names, ev.stats)}


@pytest.mark.parametrize("runtime", ["eager", "onnxruntime", "openvino"])
def test_predictions_json_scores_the_eval_only_ap(trained, runtime, tmp_path):
    from resnext_det.apps import predict as predict_app

    d, arch = trained["fpn"]
    weights = str(d / "model_final.pth") if runtime == "eager" else str(d / "deploy" / "model.onnx")
    eval_ap = json.loads((d / "inference" / "eval_results.json").read_text())["results"]["bbox"]["AP"]
    out = tmp_path / runtime
    assert predict_app.cli(["--config-file", CONFIGS[arch], "--input", str(d / "data" / "val"), "--output", str(out),
                            "--runtime", runtime] + _opts(d, arch) + ["MODEL.WEIGHTS", weights]) == 0
    figures = predict_app.score_predictions(str(out), str(d / "data" / "annotations" / "instances_val.json"))
    print(f"{runtime}: AP {figures['AP']:.4f} from predictions.json, {eval_ap:.4f} from --eval-only")
    theirs = _coco_figures(next((d / "inference").rglob("coco_instances_results.json")),
                           d / "data" / "annotations" / "instances_val.json")
    print({k: (round(figures[k], 4), round(theirs[k], 4)) for k in figures})
    assert theirs["AR100"] > 1.0  # the comparison below is not between zeros
    tolerance = 0.00005 if runtime == "eager" else 0.1
    if runtime == "eager":
        assert round(figures["AP"], 4) == round(eval_ap, 4)
    assert abs(figures["AP"] - eval_ap) <= 0.1
    for k in figures:
        assert abs(figures[k] - theirs[k]) <= tolerance, (k, figures[k], theirs[k])
    images = json.loads((out / "images.json").read_text())["images"]
    assert len(images) == 6 and {(im["height"], im["width"]) for im in images} == {(64, 64), (64, 85), (85, 64)}
