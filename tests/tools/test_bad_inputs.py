"""Issue 6, part 4: the bad-input matrix through the user-facing entry points.

Each case feeds one bad input to ``tools/train_net.py``'s ``cli()`` (in-process, with
argv) or to the public function a user calls, and checks the message names what is wrong,
where, and what would work -- and that no traceback comes out. Unit-level versions of many
cases live in test_config.py, test_weights.py, test_coco_json.py and test_checks.py.
"""
import json
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_OPTS

# one pytest-xdist worker runs this module: its module-scoped fixtures are costly (tools/install.sh
# passes --dist loadgroup)
pytestmark = pytest.mark.xdist_group("test_bad_inputs")

DEMO = "demo_tiny_X_FPN_synthetic.yaml"


@pytest.fixture
def cli(train_net, capsys, tmp_path, monkeypatch):
    """Run train_net's cli(argv); returns (exit status, stderr, stdout)."""
    # in-process runs: detectron2's cached log handlers of earlier tests hold closed capture
    # streams; their write errors are pytest artefacts, not output of the program
    monkeypatch.setattr(logging, "raiseExceptions", False)

    def run(*argv, out=None):
        out = out or tmp_path / "out"
        flags = [a for a in argv if a.startswith("--")]
        opts = [a for a in argv if not a.startswith("--")]
        # flags with values (--config X, --num-gpus N) are passed as "--flag=value"
        rc = train_net.cli(flags + opts + ["OUTPUT_DIR", str(out)])
        cap = capsys.readouterr()
        assert "Traceback" not in cap.err and "Traceback" not in cap.out, cap.err[-3000:]
        return rc, cap.err[cap.err.find("train_net.py: error:"):] if "train_net.py: error:" in cap.err \
            else cap.err, cap.out

    return run


def _expect(result, *fragments, rc=2):
    code, err, _ = result
    assert code == rc, err
    assert err.startswith("train_net.py: error:"), err
    for f in fragments:
        assert f in err, (f, err)
    return err


# ---- configuration: train_net --dry-run (no data, no model) ---------------------------------

DRY = ["--dry-run", f"--config={DEMO}"]


@pytest.mark.parametrize("opts,fragments", [
    pytest.param(["MODEL.RESNEXT.PRESET", "X-77-3x3d"],
                 ["MODEL.RESNEXT.PRESET='X-77-3x3d'", "known presets: X-50-32x4d"], id="unknown-preset"),
    pytest.param(["MODEL.RESNEXT.PRESET", "X-50-32x4d", "MODEL.RESNEXT.DEPTH", "0", "MODEL.RESNEXT.BOTTLENECK_WIDTH", "0",
                  "MODEL.RESNEXT.CARDINALITY", "8"],
                 ["CARDINALITY=8 contradicts MODEL.RESNEXT.PRESET='X-50-32x4d'", "set it to 32"],
                 id="cardinality-contradicts-preset"),
    pytest.param(["MODEL.RESNEXT.PRESET", "X-101-32x8d", "MODEL.RESNEXT.DEPTH", "0", "MODEL.RESNEXT.CARDINALITY", "0",
                  "MODEL.RESNEXT.BOTTLENECK_WIDTH", "4"],
                 ["BOTTLENECK_WIDTH=4 contradicts", "set it to 8"], id="width-contradicts-preset"),
    pytest.param(["MODEL.RESNEXT.PRESET", "X-101-32x4d", "MODEL.RESNEXT.CARDINALITY", "0", "MODEL.RESNEXT.BOTTLENECK_WIDTH", "0",
                  "MODEL.RESNEXT.DEPTH", "50"],
                 ["DEPTH=50 contradicts", "set it to 101"], id="depth-contradicts-preset"),
    pytest.param(["MODEL.RESNEXT.DEPTH", "42"], ["MODEL.RESNEXT.DEPTH", "42", "supported depths"],
                 id="unsupported-depth"),
    pytest.param(["MODEL.RESNEXT.OUT_FEATURES", "['res2','res9']"],
                 ["OUT_FEATURES", "'res9' is unknown", "allowed"], id="bad-out-features"),
    pytest.param(["MODEL.RESNEXT.BLOCK_FORM", "z"], ["BLOCK_FORM", "'z'", "use one of"], id="bad-block-form"),
    pytest.param(["MODEL.BACKBONE.FREEZE_AT", "9"], ["MODEL.BACKBONE.FREEZE_AT=9", "use 0 (train all) .. 5"],
                 id="bad-freeze-at"),
    pytest.param(["SOLVER.BASE_LR", "0.0"], ["SOLVER.BASE_LR=0.0 must be > 0"], id="zero-lr"),
    pytest.param(["SOLVER.BASE_LR", "-0.01"], ["SOLVER.BASE_LR=-0.01 must be > 0"], id="negative-lr"),
    pytest.param(["SOLVER.MAX_ITER", "0"], ["SOLVER.MAX_ITER=0 must be a positive integer"], id="zero-max-iter"),
    pytest.param(["SOLVER.MAX_ITER", "-10"], ["SOLVER.MAX_ITER=-10 must be a positive integer"],
                 id="negative-max-iter"),
    pytest.param(["--num-gpus=3"], ["SOLVER.IMS_PER_BATCH=8 is not divisible by the number of workers (3",
                                    "use a multiple of 3, e.g. 6 or 9"], id="batch-not-divisible"),
    pytest.param(["MODEL.RESNEXT.CARDINALITY", "four"], ["Type mismatch", "MODEL.RESNEXT.CARDINALITY",
                                                         "KEY VALUE pairs"], id="wrong-value-type"),
    pytest.param(["SOLVER.BASE_RL", "0.1"], ["Non-existent key: SOLVER.BASE_RL"], id="unknown-key"),
    pytest.param(["RESNEXT_PLAN.MODE", "threestage"],
                 ["RESNEXT_PLAN.MODE='threestage' is not valid", "use one of ('joint', 'two_stage')"],
                 id="bad-plan-mode"),
    pytest.param(["RESNEXT_PLAN.SYNTHETIC.ENABLED", "False", "RESNEXT_PLAN.COCO_SPLITS", "coco_2099"],
                 ["RESNEXT_PLAN.COCO_SPLITS='coco_2099' is not valid", "coco_2014"], id="bad-coco-splits"),
])
def test_config_errors_via_dry_run(cli, opts, fragments):
    _expect(cli(*DRY, *opts), *fragments)


def test_two_stage_solver_error_names_the_stage(cli):
    _expect(cli("--dry-run", "--config=demo_tiny_X_C4_two_stage_synthetic.yaml",
                "RESNEXT_PLAN.FAST_RCNN.BASE_LR", "0.0"),
            "SOLVER.BASE_LR=0.0 must be > 0", "plan stage 'fast_rcnn'", "RESNEXT_PLAN.FAST_RCNN")


def test_missing_config_file(cli):
    _expect(cli("--config=nowhere/no_such.yaml"), "'nowhere/no_such.yaml' not found", "configs")


# ---- weights ---------------------------------------------------------------------------------

class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_missing_weights_file_via_cli(cli, tmp_path):
    path = str(tmp_path / "nope.pth")
    err = _expect(cli(f"--config={DEMO}", *TINY_OPTS, "MODEL.WEIGHTS", path), "missing", path)
    assert "MODEL.WEIGHTS" in err


@pytest.mark.parametrize("ext", [".pkl", ".pth"])
def test_malicious_pickle_refused_via_cli_payload_never_runs(cli, tmp_path, ext):
    target = tmp_path / "pwned"
    path = tmp_path / f"evil{ext}"
    payload = {"model": {"x": np.zeros(2)}, "y": _Payload(str(target))}
    if ext == ".pkl":
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    else:
        torch.save(payload, path)
    rc, err, _ = cli(f"--config={DEMO}", *TINY_OPTS, "MODEL.WEIGHTS", str(path))
    # one message for both formats; never torch's "weights_only=False" advice
    _expect((rc, err, _), str(path), "refused to load", "'posix.system'",
            "nothing from the file was executed")
    assert "weights_only" not in err
    assert not target.exists()


@pytest.fixture(scope="module")
def tiny_model():
    """(cfg, model) of the tiny FPN detector, built once."""

    from resnext_det.cli import add_demo_config
    from resnext_det.config import load_config
    from resnext_det.engine.trainer import ResNeXtTrainer

    cfg = load_config(DEMO, TINY_OPTS + ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.DEVICE", "cpu"],
                      add_nodes=add_demo_config)
    return cfg, ResNeXtTrainer.build_model(cfg)


def _load(tiny_model, path, **kw):
    from resnext_det.weights import ResNeXtCheckpointer

    cfg, model = tiny_model
    return ResNeXtCheckpointer(model, cfg=cfg, **kw).load(str(path))


@pytest.mark.parametrize("kind,fragments", [
    ("empty", ["empty"]),
    ("truncated", ["truncated"]),
    ("text", ["not a checkpoint"]),
])
def test_bad_weights_files(tiny_model, tmp_path, kind, fragments):
    from resnext_det.weights import WeightsError

    path = tmp_path / f"{kind}.pth"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        good = tmp_path / "good.pth"
        torch.save({"model": tiny_model[1].state_dict()}, good)
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_text("model weights: see the wiki\n")
    with pytest.raises(WeightsError) as e:
        _load(tiny_model, path)
    assert str(path) in str(e.value)
    for f in fragments:
        assert f in str(e.value), str(e.value)


def test_weights_of_another_architecture_list_mismatched_keys(tiny_model, tmp_path, caplog):
    """A C=8 checkpoint into the C=4 model: the load report lists the wrong-shape tensors;
    with strict_backbone the load fails naming them and the fix."""
    from detectron2.modeling import build_model

    from resnext_det.weights import WeightsError

    cfg = tiny_model[0].clone()
    cfg.MODEL.RESNEXT.CARDINALITY = 8
    other = build_model(cfg)
    path = tmp_path / "c8.pth"
    torch.save({"model": other.state_dict()}, path)
    with caplog.at_level(logging.INFO):
        _load(tiny_model, path)
    report = caplog.text
    assert "wrong shape" in report and "backbone.bottom_up.res2.0.conv1.weight" in report
    with pytest.raises(WeightsError) as e:
        _load(tiny_model, path, strict_backbone=True)
    msg = str(e.value)
    assert str(path) in msg and "backbone tensors were not loaded" in msg
    assert "res2.0.conv" in msg and "MODEL.RESNEXT (preset, C, d, widths)" in msg


def test_input_format_mismatch(tiny_model, tmp_path):
    from resnext_det.weights import InputFormatMismatchError, ResNeXtCheckpointer

    cfg, model = tiny_model
    ResNeXtCheckpointer(model, str(tmp_path), cfg=cfg).save("trained")  # meta: cfg's convention
    other = cfg.clone()
    other.INPUT.FORMAT = "BGR" if cfg.INPUT.FORMAT == "RGB" else "RGB"
    with pytest.raises(InputFormatMismatchError) as e:
        ResNeXtCheckpointer(model, cfg=other).load(str(tmp_path / "trained.pth"))
    msg = str(e.value)
    assert "trained.pth" in msg
    assert f"INPUT.FORMAT: config has {other.INPUT.FORMAT!r}, weights need {cfg.INPUT.FORMAT!r}" in msg
    assert f"INPUT.FORMAT: {cfg.INPUT.FORMAT!r}" in msg  # the fix, as YAML


# ---- data: COCO JSON through the trainer's loader / train_net --------------------------------

def _coco(tmp_path, images=(1, 2), anns=None, cats=None):
    data = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": 32, "width": 32} for i in images],
        "annotations": anns if anns is not None else [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "iscrowd": 0, "area": 100}],
        "categories": cats or [{"id": 1, "name": "square"}, {"id": 2, "name": "circle"},
                               {"id": 3, "name": "triangle"}],
    }
    for i in images:
        Image.new("RGB", (32, 32), (i * 40, 80, 120)).save(tmp_path / f"{i}.png")
    return data


def _train_loader(tmp_path, data, name, **cfg_over):
    """Register a COCO file and build ResNeXtTrainer's train loader on it (what training does)."""
    from detectron2.config import get_cfg

    import resnext_det
    from resnext_det.data.coco_json import register_coco_checked
    from resnext_det.engine.trainer import ResNeXtTrainer

    path = tmp_path / "ann.json"
    if data is not None:
        path.write_text(data if isinstance(data, str) else json.dumps(data))
    register_coco_checked(name, str(path), str(tmp_path))
    cfg = get_cfg()
    resnext_det.add_resnext_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (32,), 32
    for k, v in cfg_over.items():
        setattr(cfg.DATALOADER, k, v)
    return ResNeXtTrainer.build_train_loader(cfg), str(path)


@pytest.mark.parametrize("case", ["missing", "not-json", "missing-keys", "unknown-image", "unknown-category"])
def test_bad_coco_json(tmp_path, case):
    from resnext_det.data.coco_json import DatasetError

    good = _coco(tmp_path)
    data, fragments = {
        "missing": (None, ["does not exist", "DETECTRON2_DATASETS"]),
        "not-json": ('{"images": [', ["is not valid JSON (line 1", "expected a COCO instances JSON"]),
        "missing-keys": ({"images": good["images"]}, ["missing top-level key(s) ['annotations', 'categories']",
                                                       "a COCO instances file has"]),
        "unknown-image": (dict(good, annotations=[dict(good["annotations"][0], image_id=99)]),
                          ["image ids that are not in 'images': 99", "annotation id 1"]),
        "unknown-category": (dict(good, annotations=[dict(good["annotations"][0], category_id=7)]),
                             ["category ids that are not in 'categories' [1, 2, 3]: 7"]),
    }[case]
    with pytest.raises(DatasetError) as e:
        _train_loader(tmp_path, data, f"bad_{case}")
    assert str(tmp_path / "ann.json") in str(e.value)
    for f in fragments:
        assert f in str(e.value), (f, str(e.value))


def test_degenerate_boxes_dropped_with_count(tmp_path, caplog):
    good = _coco(tmp_path)
    anns = good["annotations"] + [
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [5, 5, 0, 8], "iscrowd": 0, "area": 0},
        {"id": 3, "image_id": 2, "category_id": 2, "bbox": [5, 5, 8, -1], "iscrowd": 0, "area": 0}]
    with caplog.at_level(logging.WARNING):
        loader, path = _train_loader(tmp_path, dict(good, annotations=anns), "degenerate",
                                     FILTER_EMPTY_ANNOTATIONS=False)
        batch = next(iter(loader))
    assert f"{path}: dropped 2 degenerate box(es)" in caplog.text
    assert sum(len(d["instances"]) for d in batch) == 1


@pytest.mark.parametrize("filter_empty,expected", [(True, 1), (False, 2)])
def test_images_without_annotations_kept_or_dropped(tmp_path, filter_empty, expected):
    loader, _ = _train_loader(tmp_path, _coco(tmp_path), f"empty_{filter_empty}",
                              FILTER_EMPTY_ANNOTATIONS=filter_empty)
    assert loader.resnext_sampler._size == expected


def test_grayscale_and_four_channel_images_converted(tmp_path):
    good = _coco(tmp_path)
    Image.new("L", (32, 32), 128).save(tmp_path / "1.png")
    Image.new("RGBA", (32, 32), (1, 2, 3, 4)).save(tmp_path / "2.png")
    anns = good["annotations"] + [dict(good["annotations"][0], id=2, image_id=2)]
    loader, _ = _train_loader(tmp_path, dict(good, annotations=anns), "channels")
    batch = next(iter(loader))
    assert sorted(d["image_id"] for d in batch) == [1, 2]
    assert all(d["image"].shape[0] == 3 for d in batch)


@pytest.fixture
def synthetic_run(cli, tmp_path):
    """The synthetic set made once in OUTPUT_DIR/data, then a file spoiled by the test."""
    out = tmp_path / "syn"
    opts = [f"--config={DEMO}"] + TINY_OPTS + ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2",
                                                "DATALOADER.ASPECT_RATIO_GROUPING", "False"]
    from resnext_det.data.synthetic import make_synthetic_coco

    make_synthetic_coco(str(out / "data"), seed=0, num_train=16, num_val=4, image_size=64, max_objects=4)
    return out, lambda: cli(*opts, out=out)


def test_missing_image_files_via_cli(synthetic_run):
    out, run = synthetic_run
    os.unlink(out / "data" / "train" / "000003.png")
    err = _expect(run(), "1 of 16 image file(s) listed in", "instances_train.json", "000003.png",
                  "missing under image root")
    assert str(out / "data" / "train") in err


def test_unreadable_image_via_cli(synthetic_run):
    out, run = synthetic_run
    for p in (out / "data" / "train").glob("*.png"):  # every image: whichever comes first
        p.write_bytes(b"\x89PNG\r\n\x1a\n but not an image")
    _expect(run(), "cannot read image", "/data/train/0000", ".png", "Replace the file or remove it from the JSON")


def test_coco_json_not_json_via_cli(synthetic_run):
    out, run = synthetic_run
    (out / "data" / "annotations" / "instances_train.json").write_text("{ nope")
    _expect(run(), "instances_train.json", "is not valid JSON", "expected a COCO instances JSON")


# ---- proposals --------------------------------------------------------------------------------

def test_proposal_file_not_matching_the_dataset(tmp_path):
    """Stage 2 of the plan checks its proposal files before training."""
    from detectron2.config import get_cfg

    import resnext_det
    from resnext_det.data.coco_json import register_coco_checked
    from resnext_det.engine.checks import TrainingConfigError
    from resnext_det.engine.plan_runner import check_stage_proposals

    (tmp_path / "ann.json").write_text(json.dumps(_coco(tmp_path, images=(1, 2, 3))))
    register_coco_checked("props_ds", str(tmp_path / "ann.json"), str(tmp_path))
    props = tmp_path / "props.pkl"
    with open(props, "wb") as f:
        pickle.dump({"ids": [1], "boxes": [np.zeros((1, 4), np.float32)],
                     "objectness_logits": [np.zeros(1, np.float32)], "bbox_mode": 0}, f)
    cfg = get_cfg()
    resnext_det.add_resnext_config(cfg)
    cfg.MODEL.LOAD_PROPOSALS = True
    cfg.DATASETS.TRAIN, cfg.DATASETS.PROPOSAL_FILES_TRAIN = ("props_ds",), (str(props),)
    cfg.DATASETS.TEST, cfg.DATASETS.PROPOSAL_FILES_TEST = (), ()
    with pytest.raises(TrainingConfigError) as e:
        check_stage_proposals(cfg)
    msg = str(e.value)
    assert str(props) in msg and "props_ds" in msg and "2 of 3 images have no proposals" in msg
    assert "recompute the proposals" in msg
    cfg.DATASETS.PROPOSAL_FILES_TRAIN = (str(tmp_path / "none.pkl"),)
    with pytest.raises(TrainingConfigError, match="does not exist; run the RPN stage"):
        check_stage_proposals(cfg)
