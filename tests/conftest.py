import os
import tempfile

import pytest

# Under pytest-xdist (-n auto) each worker gets its share of the cores, so that N workers
# with N threads each do not oversubscribe the machine; alone, the suite uses up to 2 threads.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, min(2, (os.cpu_count() or 1) // _WORKERS))))
# ... and is pinned to it (inherited by the processes it starts): ONNX Runtime's and OpenVINO's
# thread pools (the export checks, NNCF, ORT's calibration) size themselves from the cores a
# process may use, and two workers' pools spinning on the same cores wasted CPU time
# (docs/TESTING.md). ALL_CPUS: what a test gives back to a command that needs the whole
# machine. RESNEXT_DET_TEST_PIN=0 leaves the workers unpinned.
ALL_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_PIN = os.environ.get("RESNEXT_DET_TEST_PIN") != "0"
if _PIN and _WORKER.startswith("gw") and 1 < _WORKERS <= len(ALL_CPUS):
    os.sched_setaffinity(0, ALL_CPUS[int(_WORKER[2:]) % _WORKERS::_WORKERS])
# OpenVINO's and NNCF's usage telemetry stays off in the suite (openvino_telemetry honours CI=true
# only, so another value such as a CI host's CI=1 becomes "true"; CI=false turns it back on): each
# ov.convert_model (NNCF exports) otherwise starts it, and with no network it waits on DNS lookups:
# 85 s of the suite's CPU (benchmarks/avx512_bf16/suite-telemetry.json, docs/TESTING.md). Hypothesis
# also reads CI (its "ci" profile, derandomized): the fuzz tests keep their default profile.
if os.environ.get("CI", "").lower() != "false":
    os.environ["CI"] = "true"
try:
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.load_profile("default")
except ImportError:  # the test extra is not installed: the fuzz tests fail on their own import
    pass
# passed data checks are remembered per machine (resnext_det.data.coco_json.check_cache_dir):
# the suite keeps its records to itself, not in the user's ~/.cache
os.environ.setdefault("RESNEXT_DET_CACHE_DIR", tempfile.mkdtemp(prefix="resnext_det_test_cache_"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end test (tiny models, still seconds to minutes)")


def pytest_collection_modifyitems(config, items):
    """Modules with end-to-end (slow) tests first, each module's tests kept together and in order.
    pytest-xdist sends its work in this order (after the xdist groups, largest first), so the
    short unit tests come last and fill in while the other worker finishes its last long test."""
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow_modules)


@pytest.fixture
def tiny_resnext_cfg():
    """A detectron2 config for a tiny ResNeXt (CPU-fast): C=4, d=4, res2 width 32."""

    import resnext_det

    def make(config_name="faster_rcnn_X50_32x4d_FPN.yaml", **overrides):
        cfg = resnext_det.get_cfg()
        cfg.merge_from_file(resnext_det.get_config_file(config_name))
        cfg.MODEL.DEVICE = "cpu"
        r = cfg.MODEL.RESNEXT
        r.PRESET = ""
        r.DEPTH, r.CARDINALITY, r.BOTTLENECK_WIDTH = 50, 4, 4
        r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS = 16, 32
        cfg.MODEL.FPN.OUT_CHANNELS = 32
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
        cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
        cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 64
        cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
        for k, v in overrides.items():
            node = cfg
            *path, last = k.split(".")
            for p in path:
                node = node[p]
            node[last] = v
        return cfg

    return make


@pytest.fixture(scope="session")
def train_net():
    """The command line behind tools/train_net.py (its cli(), get_parser(), setup_cfg(), main())."""
    from resnext_det import cli

    return cli


# A tiny ResNeXt (C=4, d=4, res2 width 32) on 64-pixel synthetic images: trailing train_net
# opts shared by the end-to-end tests.
TINY_OPTS = [
    "MODEL.RESNEXT.CARDINALITY", "4", "MODEL.RESNEXT.BOTTLENECK_WIDTH", "4",
    "MODEL.RESNEXT.STEM_OUT_CHANNELS", "16", "MODEL.RESNEXT.RES2_OUT_CHANNELS", "32",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    "RESNEXT_PLAN.SYNTHETIC.NUM_TRAIN", "16", "RESNEXT_PLAN.SYNTHETIC.NUM_VAL", "4",
    "RESNEXT_PLAN.SYNTHETIC.IMAGE_SIZE", "64", "RESNEXT_PLAN.DEMO.NUM_IMAGES", "2",
    "DATALOADER.NUM_WORKERS", "0", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "SOLVER.CHECKPOINT_PERIOD", "1000",
]


def train_batch():
    """Two small training images (96x128, 128x96) with two boxes each, the same on every call:
    the first-iteration loss comparisons of the fast-path tests feed it to every mode."""
    import torch
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(3)
    out = []
    for h, w in ((96, 128), (128, 96)):
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 60.0, 70.0], [30.0, 5.0, 90.0, 50.0]]))
        inst.gt_classes = torch.tensor([0, 2])
        out.append({"image": torch.randint(0, 256, (3, h, w), generator=g).float(), "instances": inst})
    return out


def rectangles_image(h, w, seed, background=50, fill=(150, 255)):
    """An HxWx3 uint8 picture like the synthetic shapes: noise below ``background`` with three
    rectangles of a random colour in ``fill``; every channel differs, so their order matters."""
    import numpy as np

    g = np.random.default_rng(seed)
    img = g.integers(0, background, (h, w, 3), dtype=np.uint8)
    for _ in range(3):
        y, x = g.integers(0, h // 2), g.integers(0, w // 2)
        img[y: y + h // 3, x: x + w // 3] = g.integers(fill[0], fill[1], 3, dtype=np.uint8)
    return img

