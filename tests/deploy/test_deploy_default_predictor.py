"""DeployedPredictor takes what detectron2's DefaultPredictor takes: the same HxWx3 uint8
array (BGR, cv2.imread's order) gives the same detections, for an RGB and for a BGR model."""
import numpy as np
from conftest import rectangles_image
import pytest
import torch

from resnext_det.deploy.parity import compare_detections

# one pytest-xdist worker runs this module: its module-scoped fixtures are costly (tools/install.sh
# passes --dist loadgroup)
pytestmark = pytest.mark.xdist_group("test_deploy_default_predictor")

# Tiny random-weight FPN from the demo config: 64-128 px images, every proposal kept.
OVERRIDES = [
    "MODEL.DEVICE", "cpu", "MODEL.RESNEXT.CARDINALITY", "4", "MODEL.RESNEXT.BOTTLENECK_WIDTH", "4",
    "MODEL.RESNEXT.STEM_OUT_CHANNELS", "16", "MODEL.RESNEXT.RES2_OUT_CHANNELS", "32",
    "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "TEST.DETECTIONS_PER_IMAGE", "20", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
]


@pytest.fixture(scope="module", params=["RGB", "BGR"])
def exported(request, tmp_path_factory):
    """(cfg with MODEL.WEIGHTS, model.onnx) of one tiny detector whose INPUT.FORMAT is the param."""
    from detectron2.modeling import build_model

    import resnext_det
    from resnext_det.deploy import export_onnx

    cfg = resnext_det.get_cfg()
    cfg.merge_from_file(resnext_det.get_config_file("demo_tiny_X_FPN_synthetic.yaml"))
    cfg.merge_from_list(OVERRIDES + ["INPUT.FORMAT", request.param])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # spread the class scores: random heads give near-ties otherwise
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.5)
    d = tmp_path_factory.mktemp(f"tiny_{request.param}")
    cfg.MODEL.WEIGHTS = str(d / "model.pth")  # DefaultPredictor loads the same weights
    torch.save({"model": model.state_dict()}, cfg.MODEL.WEIGHTS)
    return cfg, export_onnx(cfg, str(d / "deploy"), model=model)["path"]


def _bgr_image(h, w, seed):
    """Channels that differ (noise and coloured rectangles), so their order matters."""
    return rectangles_image(h, w, seed, background=80, fill=(0, 255))


@pytest.mark.parametrize("h, w", [(64, 64), (90, 120)])
def test_same_image_same_detections_as_default_predictor(exported, h, w):
    from detectron2.engine import DefaultPredictor

    from resnext_det.deploy import DeployedPredictor

    cfg, path = exported
    bgr = _bgr_image(h, w, h + w)
    with torch.no_grad():
        ref = DefaultPredictor(cfg)(bgr)["instances"]
    assert len(ref) > 0
    predictor = DeployedPredictor(path, runtime="onnxruntime", num_threads=1)
    got = predictor(bgr)["instances"]
    assert got.image_size == ref.image_size == (h, w)
    cmp = compare_detections(ref, got, box_tol=1e-3, score_tol=1e-4)
    assert cmp["ok"], f"{cfg.INPUT.FORMAT} model, {h}x{w}: {cmp['why']}"
    assert predictor.input_format == "BGR" and predictor.contract.input_format == cfg.INPUT.FORMAT
    # an RGB array says so and gives the same detections
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    got_rgb = DeployedPredictor(path, num_threads=1, input_format="RGB")(rgb)["instances"]
    cmp = compare_detections(ref, got_rgb, box_tol=1e-3, score_tol=1e-4)
    assert cmp["ok"], f"{cfg.INPUT.FORMAT} model, input_format='RGB', {h}x{w}: {cmp['why']}"
    # the order matters for this model: the image with its channels swapped detects otherwise
    # (so the equality above is not vacuous, and reading BGR as RGB would have failed it)
    assert not compare_detections(ref, predictor(rgb)["instances"], box_tol=1e-3, score_tol=1e-4)["ok"]
