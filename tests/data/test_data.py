"""resnext_det.data: the synthetic COCO set (reproducible from a seed) and the COCO file check."""
import hashlib
import json
import os

import numpy as np
import pytest

from resnext_det.data import check_dataset_files, coco_split_names, make_synthetic_coco
from resnext_det.data.coco import MissingDatasetFiles, verify_dataset_files
from resnext_det.data.synthetic import CLASSES, register_synthetic_coco

import zygote

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _digest(folder):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            with open(os.path.join(dirpath, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


def test_synthetic_set_is_a_function_of_the_seed(tmp_path):
    kw = dict(num_train=5, num_val=3, image_size=64)
    a = make_synthetic_coco(str(tmp_path / "a"), seed=7, **kw)
    make_synthetic_coco(str(tmp_path / "b"), seed=7, **kw)
    make_synthetic_coco(str(tmp_path / "c"), seed=8, **kw)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    data = json.load(open(a["train"]["json_file"]))
    assert len(data["images"]) == 5
    assert [c["name"] for c in data["categories"]] == list(CLASSES)
    per_image = {im["id"]: 0 for im in data["images"]}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 64.01 and y + h <= 64.01 and w > 5 and h > 5
        assert ann["category_id"] in (1, 2, 3) and ann["iscrowd"] == 0
        per_image[ann["image_id"]] += 1
    # train: square; image index 3 (id 4) is the one empty image, the others have 1..4 objects
    assert {(im["height"], im["width"]) for im in data["images"]} == {(64, 64)}
    assert per_image[4] == 0 and all(1 <= n <= 4 for k, n in per_image.items() if k != 4), per_image
    assert len(os.listdir(a["val"]["image_root"])) == 3


def test_synthetic_val_has_empty_images_and_three_aspects(tmp_path):
    """As in COCO's val sets: images without objects (indices 3 and 11 of 12), and square,
    landscape and portrait images; the json's sizes are the PNGs' own sizes."""
    from PIL import Image

    paths = make_synthetic_coco(str(tmp_path), seed=0, num_train=1, num_val=12, image_size=48)
    data = json.load(open(paths["val"]["json_file"]))
    counts = {im["id"]: 0 for im in data["images"]}
    for ann in data["annotations"]:
        counts[ann["image_id"]] += 1
    assert [i for i, n in sorted(counts.items()) if n == 0] == [4, 12]
    sizes = []
    for im in data["images"]:
        with Image.open(os.path.join(paths["val"]["image_root"], im["file_name"])) as png:
            assert png.size == (im["width"], im["height"])
        sizes.append((im["height"], im["width"]))
    assert sizes[:3] == [(48, 48), (48, 64), (64, 48)] and sorted(set(sizes)) == [(48, 48), (48, 64), (64, 48)]
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        im = data["images"][ann["image_id"] - 1]
        assert x + w <= im["width"] + 0.01 and y + h <= im["height"] + 0.01
    # an empty image is background only: no bright shape pixels (shapes are drawn at >= 110)
    with Image.open(os.path.join(paths["val"]["image_root"], "000003.png")) as png:
        assert np.asarray(png).max() < 110


def test_synthetic_set_is_reused_not_remade(tmp_path):
    paths = make_synthetic_coco(str(tmp_path), seed=1, num_train=2, num_val=1, image_size=64)
    stamp = os.stat(paths["train"]["json_file"]).st_mtime_ns
    make_synthetic_coco(str(tmp_path), seed=1, num_train=2, num_val=1, image_size=64)
    assert os.stat(paths["train"]["json_file"]).st_mtime_ns == stamp
    make_synthetic_coco(str(tmp_path), seed=2, num_train=2, num_val=1, image_size=64)
    assert json.load(open(paths["train"]["json_file"]))["info"]["seed"] == 2


def test_synthetic_registration_loads_in_detectron2(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    train, val = register_synthetic_coco("t_shapes", str(tmp_path), seed=0, num_train=3,
                                         num_val=2, image_size=64)
    dicts = DatasetCatalog.get(train)
    assert len(dicts) == 3 and all(d["annotations"] for d in dicts)
    assert MetadataCatalog.get(val).thing_classes == list(CLASSES)
    assert MetadataCatalog.get(val).evaluator_type == "coco"


def test_coco_split_names():
    assert coco_split_names("coco_2014") == (("coco_2014_train", "coco_2014_valminusminival"),
                                             ("coco_2014_minival",))
    assert coco_split_names("coco_2017") == (("coco_2017_train",), ("coco_2017_val",))
    with pytest.raises(ValueError, match="COCO_SPLITS"):
        coco_split_names("2015")


def _paper_cfg(**opts):

    import resnext_det
    from resnext_det.engine.plan import resolve_datasets

    cfg = resnext_det.get_cfg()
    cfg.merge_from_file(resnext_det.get_config_file("faster_rcnn_X101_32x4d.yaml"))
    cfg.merge_from_list([x for kv in opts.items() for x in kv])
    return resolve_datasets(cfg)


def test_check_lists_each_missing_file_under_detectron2_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "val2014").mkdir()
    (coco / "annotations" / "instances_minival2014.json").write_text("{}")
    missing = check_dataset_files(_paper_cfg())
    got = {(m.dataset, m.kind, m.path) for m in missing}
    assert got == {
        ("coco_2014_train", "annotation file", str(coco / "annotations/instances_train2014.json")),
        ("coco_2014_train", "image folder", str(coco / "train2014")),
        ("coco_2014_valminusminival", "annotation file",
         str(coco / "annotations/instances_valminusminival2014.json")),
    }
    with pytest.raises(MissingDatasetFiles) as e:
        verify_dataset_files(_paper_cfg())
    assert str(coco / "train2014") in str(e.value) and "DETECTRON2_DATASETS" in str(e.value)
    # the test split alone is complete; the 2017 switch needs other files
    assert check_dataset_files(_paper_cfg(), train=False) == []
    names = {m.dataset for m in check_dataset_files(
        _paper_cfg(**{"RESNEXT_PLAN.COCO_SPLITS": "coco_2017"}))}
    assert names == {"coco_2017_train", "coco_2017_val"}
    # local weights are checked too
    missing = check_dataset_files(_paper_cfg(**{"MODEL.WEIGHTS": str(tmp_path / "w.pkl")}), train=False)
    assert [(m.kind, m.path) for m in missing] == [("weights", str(tmp_path / "w.pkl"))]


def test_train_net_missing_coco_gives_message_not_traceback(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "nowhere"))
    r = zygote.run([os.path.join(ROOT, "tools", "train_net.py"), "--config", "configs/faster_rcnn_X101_32x4d.yaml",
                    "OUTPUT_DIR", str(tmp_path / "out")], cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    want = os.path.join(str(tmp_path / "nowhere"), "coco", "annotations", "instances_minival2014.json")
    assert f"annotation file of coco_2014_minival: {want}" in r.stderr
    assert "6 file(s) needed by this config are missing" in r.stderr
    assert f"DETECTRON2_DATASETS={tmp_path / 'nowhere'}" in r.stderr
    assert not (tmp_path / "out").exists()  # stopped before anything was written
