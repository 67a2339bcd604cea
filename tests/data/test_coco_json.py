"""The checked COCO reader: every bad input gets a clear error naming file and entry."""
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from resnext_det.data import coco_json
from resnext_det.data.coco_json import (
    DatasetError,
    checked_mapper,
    load_coco_json_checked,
    validate_coco_dict,
)


def _good(n_images=2):
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "height": 32, "width": 40} for i in range(1, n_images + 1)],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 5, "bbox": [1, 2, 10, 12], "iscrowd": 0,
                         "area": 120}],
        "categories": [{"id": 5, "name": "box"}],
    }


def _write(tmp_path, data, images=True):
    p = tmp_path / "ann.json"
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    if images:
        for i in (1, 2):
            Image.new("RGB", (40, 32)).save(tmp_path / f"{i}.png")
    return str(p)


def _load(tmp_path, data, images=True, name=None):
    return load_coco_json_checked(_write(tmp_path, data, images), str(tmp_path), name)


def test_good_file_loads(tmp_path):
    dicts = _load(tmp_path, _good())
    assert [d["image_id"] for d in dicts] == [1, 2]
    assert len(dicts[0]["annotations"]) == 1 and dicts[1]["annotations"] == []  # empty image kept


@pytest.mark.parametrize("case,data,fragments", [
    ("not json", "{images: [", ["not valid JSON", "line 1"]),
    ("empty", "", ["is empty"]),
    ("top-level list", "[1, 2]", ["top level is a list"]),
    ("missing keys", json.dumps({"images": []}), ["missing top-level key", "annotations", "categories"]),
    ("unknown image", None, ["image ids that are not in 'images'", "99"]),
    ("unknown category", None, ["category ids that are not in 'categories'", "42"]),
    ("bad bbox", None, ["bbox", "[x, y, width, height]"]),
    ("duplicate image id", None, ["duplicate image id 1"]),
    ("image lacks size", None, ["images[0]", "lacks", "height"]),
])
def test_bad_json_files(tmp_path, case, data, fragments):
    good = _good()
    if case == "unknown image":
        good["annotations"][0]["image_id"] = 99
    elif case == "unknown category":
        good["annotations"][0]["category_id"] = 42
    elif case == "bad bbox":
        good["annotations"][0]["bbox"] = [1, 2, 3]
    elif case == "duplicate image id":
        good["images"][1]["id"] = 1
    elif case == "image lacks size":
        del good["images"][0]["height"]
    with pytest.raises(DatasetError) as e:
        _load(tmp_path, data if data is not None else good)
    msg = str(e.value)
    assert "ann.json" in msg
    for f in fragments:
        assert f in msg, (f, msg)


def test_missing_json_names_path_and_env(tmp_path):
    with pytest.raises(DatasetError, match=r"does not exist.*DETECTRON2_DATASETS"):
        load_coco_json_checked(str(tmp_path / "nope.json"), str(tmp_path))


def test_missing_image_files_listed(tmp_path):
    with pytest.raises(DatasetError, match=r"2 of 2 image file\(s\).*'1.png', '2.png'"):
        _load(tmp_path, _good(), images=False)


def test_degenerate_boxes_dropped_with_count(tmp_path, caplog):
    data = _good()
    data["annotations"] += [
        {"id": 11, "image_id": 1, "category_id": 5, "bbox": [1, 2, 0, 12], "iscrowd": 0, "area": 0},
        {"id": 12, "image_id": 2, "category_id": 5, "bbox": [1, 2, 5, -3], "iscrowd": 0, "area": 0},
    ]
    with caplog.at_level("WARNING"):
        dicts = _load(tmp_path, data)
    assert sum(len(d["annotations"]) for d in dicts) == 1
    assert "dropped 2 degenerate box(es)" in caplog.text


def _mapper_cfg():
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = (32,)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.INPUT.RANDOM_FLIP = "none"
    return cfg


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_grayscale_and_four_channel_images_converted(tmp_path, mode):
    path = tmp_path / ("img.jpg" if mode == "CMYK" else "img.png")
    Image.new(mode, (40, 32)).save(path)
    out = checked_mapper(_mapper_cfg(), True)({"file_name": str(path), "height": 32, "width": 40,
                                                "image_id": 1, "annotations": []})
    assert out["image"].shape[0] == 3


def test_unreadable_image_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DatasetError, match=r"cannot read image .*broken.png"):
        checked_mapper(_mapper_cfg(), True)({"file_name": str(bad), "height": 32, "width": 40,
                                             "image_id": 7, "annotations": []})


@pytest.mark.parametrize("filter_empty,expected", [(True, 1), (False, 2)])
def test_images_without_annotations_kept_or_dropped(tmp_path, filter_empty, expected):
    from detectron2.data.build import get_detection_dataset_dicts
    from resnext_det.data.coco_json import register_coco_checked

    path = _write(tmp_path, _good())
    name = f"checked_empty_{filter_empty}"
    register_coco_checked(name, path, str(tmp_path))
    dicts = get_detection_dataset_dicts([name], filter_empty=filter_empty)
    assert len(dicts) == expected


# ---- fuzzing: only a valid result or the project's own DatasetError -------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 100) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["id", "images", "annotations", "categories", "bbox", "image_id",
                         "category_id", "file_name", "height", "width", "name", "x"]), children, max_size=6),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=json_values)
def test_fuzz_structure(data):
    before = json.dumps(data, sort_keys=True)
    try:
        out = validate_coco_dict(data, "fuzz.json")
    except DatasetError:
        return
    # what an accepted file guarantees, checked here entry by entry: images and categories as
    # given, with unique ids; each kept annotation a positive [x, y, w, h] of numbers on a known
    # image and category; kept + dropped = all; the caller's dict untouched
    assert json.dumps(data, sort_keys=True) == before
    assert out["images"] is data["images"] and out["categories"] is data["categories"]
    image_ids = [img["id"] for img in data["images"]]
    cat_ids = [cat["id"] for cat in data["categories"]]
    assert len(set(image_ids)) == len(image_ids) and len(set(cat_ids)) == len(cat_ids) >= 1
    assert all(img["height"] > 0 and img["width"] > 0 for img in data["images"])
    kept = out["annotations"]
    assert all(ann in data["annotations"] for ann in kept)
    for ann in kept:
        x, y, w, h = ann["bbox"]
        assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y, w, h))
        assert w > 0 and h > 0 and ann["image_id"] in image_ids and ann["category_id"] in cat_ids
    dropped = [ann for ann in data["annotations"] if not (ann["bbox"][2] > 0 and ann["bbox"][3] > 0)]
    assert out["_dropped_degenerate_boxes"] == len(dropped) == len(data["annotations"]) - len(kept)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 400), flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4))
def test_fuzz_truncated_and_mutated_files(tmp_path, cut, flips):
    raw = bytearray(json.dumps(_good()).encode())
    for pos, val in flips:
        if pos < len(raw):
            raw[pos] = val
    p = tmp_path / "fuzz.json"
    p.write_bytes(bytes(raw[:cut]))
    try:
        load_coco_json_checked(str(p), str(tmp_path), check_image_files=False)
    except DatasetError as e:
        assert "fuzz.json" in str(e)


def test_registered_dataset_is_read_once_per_process_and_handed_out_as_copies(tmp_path, monkeypatch):
    """A run asks DatasetCatalog for a dataset several times (loader, evaluator, proposals,
    pictures): the JSON is read once, callers get independent copies, a changed file is re-read."""
    import os

    from detectron2.data import DatasetCatalog

    import resnext_det.data.coco_json as coco_json

    json_file = _write(tmp_path, _good())
    reads = []
    real = coco_json.load_coco_json_checked
    monkeypatch.setattr(coco_json, "load_coco_json_checked", lambda *a, **k: reads.append(a) or real(*a, **k))
    coco_json.register_coco_checked("cached_once", json_file, str(tmp_path))
    first = DatasetCatalog.get("cached_once")
    first[0]["proposal_boxes"] = "added in place by a caller"
    second = DatasetCatalog.get("cached_once")
    assert len(reads) == 1 and "proposal_boxes" not in second[0] and second == DatasetCatalog.get("cached_once")
    data = _good()
    data["images"] = data["images"][:1]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == data["images"][0]["id"]]
    with open(json_file, "w") as f:
        json.dump(data, f)
    os.utime(json_file, ns=(1, 1))  # a new mtime even within the file system's resolution
    assert len(DatasetCatalog.get("cached_once")) == 1 and len(reads) == 2


def test_a_passed_check_is_remembered_per_file_version(tmp_path, monkeypatch):
    """The data check runs once per machine for a given file (size + mtime): workers and later
    runs load with detectron2 alone; a changed file is checked again."""
    monkeypatch.setenv("RESNEXT_DET_CACHE_DIR", str(tmp_path / "cache"))
    path = _write(tmp_path, _good())
    calls = []
    real = coco_json.validate_coco_dict
    monkeypatch.setattr(coco_json, "validate_coco_dict", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = load_coco_json_checked(path, str(tmp_path))
    again = load_coco_json_checked(path, str(tmp_path))
    assert len(calls) == 1 and first == again
    assert len(os.listdir(tmp_path / "cache" / "dataset_checks")) == 1
    bad = _good()
    bad["annotations"][0]["image_id"] = 999
    with open(path, "w") as f:
        json.dump(bad, f)
    with pytest.raises(DatasetError, match="999"):
        load_coco_json_checked(path, str(tmp_path))
