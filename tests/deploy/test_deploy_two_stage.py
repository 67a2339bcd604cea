"""The paper's two-stage plan (separate RPN and Fast R-CNN networks) exported as one graph:
tools/export.py on a RESNEXT_PLAN.MODE two_stage config writes a model.onnx whose detections
in both runtimes equal the eager TwoStageDetector's (stage-1 proposals into stage 2)."""
import numpy as np
import pytest
import torch

from test_deploy_bad_inputs import _only_line

TINY_C4 = [
    "RESNEXT_PLAN.MODE", "two_stage",
    "MODEL.RESNEXT.DEPTH", "50", "MODEL.RESNEXT.CARDINALITY", "4", "MODEL.RESNEXT.BOTTLENECK_WIDTH", "4",
    "MODEL.RESNEXT.STEM_OUT_CHANNELS", "16", "MODEL.RESNEXT.RES2_OUT_CHANNELS", "32",
    "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.ANCHOR_GENERATOR.SIZES", "[[16, 32, 64]]",
    "RESNEXT_PLAN.PROPOSALS.TOPK_TEST", "40", "MODEL.RPN.PRE_NMS_TOPK_TEST", "300",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128", "TEST.DETECTIONS_PER_IMAGE", "20",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
]


def _write_stage_weights(out):
    """Random (but distinct) weights for each trained stage, where the plan writes them."""
    import os

    import resnext_det
    from detectron2.modeling import build_model
    from resnext_det.engine.plan import build_plan

    cfg = resnext_det.get_cfg()
    cfg.merge_from_file(resnext_det.get_config_file("Base-ResNeXt-C4.yaml"))
    cfg.merge_from_list(TINY_C4 + ["OUTPUT_DIR", str(out)])
    for i, st in enumerate(s for s in build_plan(cfg) if s.kind == "train"):
        torch.manual_seed(i)
        model = build_model(st.cfg)
        box_predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
        if box_predictor is not None:  # spread the scores (fresh heads give near-ties)
            with torch.no_grad():
                box_predictor.cls_score.weight.normal_(0, 0.05)
        os.makedirs(st.output_dir, exist_ok=True)
        torch.save({"model": model.state_dict()}, os.path.join(st.output_dir, "model_final.pth"))
    return cfg


@pytest.mark.slow
def test_two_stage_plan_exports_as_one_graph(tmp_path):
    from detectron2.data import transforms as T

    from resnext_det.deploy import DeployedPredictor, read_contract
    from resnext_det.apps import export as export_cli
    from resnext_det.deploy.parity import compare_detections
    from resnext_det.apps.export import build_two_stage_detector
    from resnext_det.deploy.two_stage import TwoStageDetector
    from resnext_det.engine.plan import build_plan

    cfg = _write_stage_weights(tmp_path)
    out = tmp_path / "deploy"
    rc = export_cli.cli(["--config-file", "Base-ResNeXt-C4.yaml", "--output", str(out)]
                        + TINY_C4 + ["OUTPUT_DIR", str(tmp_path)])
    assert rc == 0
    path = str(out / "model.onnx")
    assert read_contract(path).meta_architecture.startswith("TwoStageDetector")
    eager = build_two_stage_detector(build_plan(cfg))
    assert isinstance(eager, TwoStageDetector)
    # the two networks are distinct (separately trained, no shared features)
    assert not torch.equal(eager.rpn_network.backbone.stem.conv1.weight, eager.detector.backbone.stem.conv1.weight)
    aug = T.ResizeShortestEdge([64, 64], 128)
    for runtime in ("onnxruntime", "openvino"):
        predictor = DeployedPredictor(path, runtime=runtime)
        for h, w in [(64, 64), (75, 101)]:
            img = np.random.default_rng(h).integers(0, 255, (h, w, 3), dtype=np.uint8)
            resized = aug.get_transform(img).apply_image(img)
            with torch.no_grad():
                ref = eager([{"image": torch.as_tensor(resized.transpose(2, 0, 1).astype("float32")),
                              "height": h, "width": w}])[0]["instances"]
            got = predictor(img[:, :, ::-1])["instances"]  # BGR in (DefaultPredictor's), RGB model
            assert len(ref) > 0
            cmp = compare_detections(ref, got)
            assert cmp["ok"], f"{runtime} {h}x{w}: {cmp['why']}"


def test_two_stage_without_trained_stages_names_the_file(tmp_path, capsys):
    from resnext_det.apps import export as export_cli

    rc = export_cli.cli(["--config-file", "Base-ResNeXt-C4.yaml", "--output", str(tmp_path / "deploy")]
                        + TINY_C4 + ["OUTPUT_DIR", str(tmp_path)])
    assert rc == 2
    line = _only_line(capsys.readouterr().err)
    assert "rpn stage's weights" in line and "stage1_rpn/model_final.pth" in line
    assert not (tmp_path / "deploy" / "model.onnx").exists()
