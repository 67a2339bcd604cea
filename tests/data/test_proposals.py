"""resnext_det.data.proposals: shards written atomically, read by image id, exported as
detectron2's pickle, attached by the mapper as detectron2's loader would; and stage 1b's
collector writing them."""
import os
import pickle

import numpy as np
import pytest
import torch
from detectron2.data.build import load_proposals_into_dataset
from detectron2.structures import Boxes, BoxMode, Instances

from resnext_det.data.proposals import (
    ProposalFormatError,
    ProposalMapper,
    ProposalStore,
    ShardWriter,
    export_detectron2_pickle,
    is_proposal_manifest,
    stores_for,
    write_manifest,
    write_proposal_shards,
)
from resnext_det.engine.checks import TrainingConfigError, check_proposal_file, load_proposal_file


def _data(n=7, seed=0, ids=None):
    rng = np.random.default_rng(seed)
    ids = list(ids if ids is not None else range(100, 100 + n))
    counts = rng.integers(0, 30, len(ids))
    counts[1] = 0  # an image without proposals
    boxes, logits = [], []
    for c in counts:
        xy = rng.uniform(0, 600, (c, 2)).astype(np.float32)
        boxes.append(np.concatenate([xy, xy + rng.uniform(1, 80, (c, 2))], 1).astype(np.float32))
        logits.append(rng.normal(size=c).astype(np.float32))
    return ids, boxes, logits


def _files(d):
    return sorted(f for f in os.listdir(d))


@pytest.mark.parametrize("num_shards", [1, 3])
@pytest.mark.parametrize("id_kind", ["int", "str"])
def test_reading_by_image_id_returns_exactly_what_was_written(tmp_path, num_shards, id_kind):
    ids, boxes, logits = _data(ids=None if id_kind == "int" else [f"img_{i}" for i in range(7)])
    manifest = write_proposal_shards(str(tmp_path), ids, boxes, logits, num_shards=num_shards, dataset="x")
    assert is_proposal_manifest(manifest)
    store = ProposalStore(manifest)
    assert len(store) == len(ids) and store.ids == ids
    for i, image_id in reversed(list(enumerate(ids))):  # any order
        b, s = store.get(image_id)
        assert b.dtype == s.dtype == np.float32
        np.testing.assert_array_equal(b, boxes[i])
        np.testing.assert_array_equal(s, logits[i])
    assert "nope" not in store and 99 not in store
    with pytest.raises(KeyError, match="has no proposals in"):
        store.get(12345)
    assert len([f for f in _files(tmp_path) if f.endswith(".npy")]) == num_shards
    # the index is what a process holds: far less than the rows
    assert store.index_nbytes < 100 * len(ids)
    # a shard is a plain .npy: numpy reads it without this module
    first = np.load(tmp_path / store.shards[0])
    assert first.shape[1] == 5 and first.dtype == np.float32


def test_string_and_int_ids_match_as_detectron2_matches_them(tmp_path):
    ids, boxes, logits = _data(3)
    store = ProposalStore(write_proposal_shards(str(tmp_path), ids, boxes, logits))
    assert "101" in store and 101 in store and np.int64(101) in store  # str(id) compared
    assert "0101" not in store


def test_a_failure_mid_write_leaves_no_shard(tmp_path):
    ids, boxes, logits = _data()
    with pytest.raises(RuntimeError, match="worker died"):
        with ShardWriter(str(tmp_path), 0, 2) as w:
            w.add(ids[0], boxes[0], logits[0])
            raise RuntimeError("worker died")
    assert _files(tmp_path) == []  # not even the temporary file


def test_an_unfinished_run_keeps_the_previous_proposals_readable(tmp_path):
    """The manifest names shards by a per-run token: a new run killed after some shards were
    renamed (before its manifest) leaves the old manifest pointing at the old, complete files."""
    ids, boxes, logits = _data()
    manifest = write_proposal_shards(str(tmp_path), ids, boxes, logits, num_shards=2)
    w = ShardWriter(str(tmp_path), 0, 2)  # the new run's rank 0 finished its shard ...
    w.add(ids[0], boxes[0] + 1, logits[0])
    w.close()  # ... and the run died before rank 1's shard and the manifest
    store = ProposalStore(manifest)
    np.testing.assert_array_equal(store.get(ids[0])[0], boxes[0])
    # the next complete run removes shards no manifest names
    write_proposal_shards(str(tmp_path), ids, boxes, logits, num_shards=2)
    assert len([f for f in _files(tmp_path) if f.endswith(".npy")]) == 2


def test_missing_or_foreign_shards_are_named(tmp_path):
    ids, boxes, logits = _data()
    manifest = write_proposal_shards(str(tmp_path), ids, boxes, logits, num_shards=2)
    store = ProposalStore(manifest)
    os.unlink(tmp_path / store.shards[1])
    with pytest.raises(ProposalFormatError, match=store.shards[1]):
        ProposalStore(manifest).verify()
    with pytest.raises(TrainingConfigError, match="cannot read proposal file"):
        check_proposal_file(manifest, ids, "x")
    (tmp_path / "other.json").write_text('{"format": "something/else"}')
    with pytest.raises(ProposalFormatError, match="is not a proposal manifest"):
        ProposalStore(str(tmp_path / "other.json"))


def test_check_proposal_file_reads_manifests(tmp_path):
    ids, boxes, logits = _data()
    manifest = write_proposal_shards(str(tmp_path), ids, boxes, logits, num_shards=2)
    check_proposal_file(manifest, ids, "x")
    with pytest.raises(TrainingConfigError, match="1 of 8 images have no proposals"):
        check_proposal_file(manifest, ids + [5], "x")


def _old_collector_dict(ids, boxes, logits, parts=2):
    """What _ProposalCollector wrote before shards: the ranks' lists concatenated in rank order."""
    bounds = np.linspace(0, len(ids), parts + 1).astype(int)
    data = {"ids": [], "boxes": [], "objectness_logits": [], "bbox_mode": int(BoxMode.XYXY_ABS)}
    for k in range(parts):
        data["ids"] += ids[bounds[k]:bounds[k + 1]]
        data["boxes"] += boxes[bounds[k]:bounds[k + 1]]
        data["objectness_logits"] += logits[bounds[k]:bounds[k + 1]]
    return data


def test_pickle_export_equals_the_old_format(tmp_path):
    ids, boxes, logits = _data()
    manifest = write_proposal_shards(str(tmp_path / "s"), ids, boxes, logits, num_shards=2)
    path = export_detectron2_pickle(manifest, str(tmp_path / "x.pkl"))
    with open(path, "rb") as f:
        got = pickle.load(f)
    want = _old_collector_dict(ids, boxes, logits)
    assert got.keys() == want.keys() and got["ids"] == want["ids"] and got["bbox_mode"] == want["bbox_mode"]
    assert all(type(a) is type(b) for a, b in zip(got["ids"], want["ids"]))
    for key in ("boxes", "objectness_logits"):
        for a, b in zip(got[key], want[key]):
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    # and the project's proposal reader gives the same for both kinds of file
    assert load_proposal_file(manifest)["ids"] == load_proposal_file(path)["ids"]


def test_the_mapper_attaches_what_detectron2s_loader_would(tmp_path):
    ids, boxes, logits = _data()
    logits[3][:4] = 0.5  # ties: the order must still equal detectron2's
    manifest = write_proposal_shards(str(tmp_path / "s"), ids, boxes, logits, num_shards=3)
    pkl = export_detectron2_pickle(manifest, str(tmp_path / "x.pkl"))
    dicts = [{"image_id": i, "file_name": f"{i}.jpg", "height": 640, "width": 640} for i in ids]
    classic = load_proposals_into_dataset([dict(d) for d in dicts], pkl)
    seen = []
    mapper = ProposalMapper(lambda d: seen.append(d) or "mapped", [ProposalStore(manifest)])
    for d, want in zip(dicts, classic):
        assert mapper(d) == "mapped"
        got = seen[-1]
        assert got.keys() == want.keys()
        assert got["proposal_bbox_mode"] == want["proposal_bbox_mode"]
        for key in ("proposal_boxes", "proposal_objectness_logits"):
            assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key])
        assert "proposal_boxes" not in d  # the dataset's own dict stays as it was


def test_two_datasets_sharing_an_image_id_are_refused(tmp_path):
    ids, boxes, logits = _data(3)
    a = write_proposal_shards(str(tmp_path / "a"), ids, boxes, logits)
    b = write_proposal_shards(str(tmp_path / "b"), ids[1:], boxes[1:], logits[1:])
    with pytest.raises(ProposalFormatError, match="is in the proposals of both 'A' and 'B'"):
        stores_for([a, b], ["A", "B"])
    pkl = export_detectron2_pickle(a, str(tmp_path / "a.pkl"))
    assert stores_for([pkl], ["A"]) is None  # detectron2 pickles: detectron2 loads them
    with pytest.raises(ProposalFormatError, match="mix shard manifests and detectron2 pickles"):
        stores_for([a, pkl], ["A", "B"])


def test_the_store_pickles_without_its_mappings(tmp_path):
    ids, boxes, logits = _data()
    store = ProposalStore(write_proposal_shards(str(tmp_path), ids, boxes, logits))
    store.get(ids[0])
    again = pickle.loads(pickle.dumps(store))  # what a spawned data-loader worker gets
    np.testing.assert_array_equal(again.get(ids[2])[0], boxes[2])


def _outputs(boxes, logits):
    outs = []
    for b, s in zip(boxes, logits):
        inst = Instances((640, 640))
        inst.proposal_boxes = Boxes(torch.as_tensor(b).reshape(-1, 4))
        inst.objectness_logits = torch.as_tensor(s)
        outs.append({"proposals": inst})
    return outs


def test_stage_1b_collector_writes_shards_and_a_manifest(tmp_path):
    from resnext_det.engine.plan_runner import _ProposalCollector

    ids, boxes, logits = _data()
    path = str(tmp_path / "x" / "manifest.json")
    ev = _ProposalCollector("x", path, export_pkl=str(tmp_path / "x.pkl"))
    ev.reset()
    ev.process([{"image_id": i} for i in ids[:2]], _outputs(boxes[:2], logits[:2]))
    ev.reset()  # a pass that did not finish: its temporary file goes, nothing is written
    assert not os.path.exists(path) and _files(tmp_path / "x") == []
    for j in range(len(ids)):
        ev.process([{"image_id": ids[j]}], _outputs(boxes[j:j + 1], logits[j:j + 1]))
    res = ev.evaluate()
    assert res["images"] == len(ids)
    store = ProposalStore(path)
    for i, image_id in enumerate(ids):
        np.testing.assert_array_equal(store.get(image_id)[0], boxes[i])
    with open(tmp_path / "x.pkl", "rb") as f:  # RESNEXT_PLAN.PROPOSALS.EXPORT_PKL's file
        assert pickle.load(f)["ids"] == ids


def test_write_manifest_of_an_empty_worker(tmp_path):
    with ShardWriter(str(tmp_path), 1, 2) as w:
        entry = w.close()
    assert entry["images"] == 0 and entry["rows"] == 0
    store = ProposalStore(write_manifest(str(tmp_path), [entry]))
    assert len(store) == 0
    store.verify()


# ---- each rule on its own, expectations written out ------------------------------------------

def test_writer_takes_lists_of_any_numbers_and_column_logits(tmp_path):
    """Python lists (float64 / int64 when numpy reads them) and (N, 1) logits are stored as the
    float32 rows they denote."""
    with ShardWriter(str(tmp_path)) as w:
        w.add(5, [[1, 2, 3, 4], [0.5, 1.5, 2.5, 3.5]], [[0.25], [-1.0]])
        w.add(6, np.array([10, 20, 30, 40]), np.array([2.0], np.float64))
        entry = w.close()
    assert (entry["images"], entry["rows"]) == (2, 3)
    assert entry["data"].startswith("shard-00000-of-00001-") and entry["index"].startswith("shard-00000-of-00001-")
    store = ProposalStore(write_manifest(str(tmp_path), [entry]))
    b, s = store.get(5)
    np.testing.assert_array_equal(b, np.array([[1, 2, 3, 4], [0.5, 1.5, 2.5, 3.5]], np.float32))
    np.testing.assert_array_equal(s, np.array([0.25, -1.0], np.float32))
    b, s = store.get(6)
    np.testing.assert_array_equal(b, [[10, 20, 30, 40]]) and np.testing.assert_array_equal(s, [2.0])
    with ShardWriter(str(tmp_path)) as w:
        with pytest.raises(ProposalFormatError) as e:
            w.add(7, np.zeros((2, 4)), np.zeros(3))
        w.abort()
    assert str(e.value) == "image 7: 2 boxes but 3 logits"


def test_defaults_names_and_an_empty_first_shard(tmp_path):
    ids, boxes, logits = [1, 2], [np.ones((2, 4), np.float32), np.zeros((1, 4), np.float32)], \
        [np.array([0.5, 0.25], np.float32), np.array([1.0], np.float32)]
    one = ProposalStore(write_proposal_shards(str(tmp_path / "one"), ids, boxes, logits))
    assert len(one.shards) == 1 and one.dataset == "" and one.bbox_mode == BoxMode.XYXY_ABS
    with pytest.raises(KeyError) as e:
        one.get(3)
    assert e.value.args[0] == (f"image id 3 has no proposals in {one.manifest_path!r} (2 images of its dataset); "
                               "recompute the proposals for this dataset")
    # three shards for two images: the first holds none (its offsets must not shift the others')
    three = ProposalStore(write_proposal_shards(str(tmp_path / "three"), ids, boxes, logits, num_shards=3,
                                                dataset="coco_x", bbox_mode=int(BoxMode.XYWH_ABS)))
    assert three.dataset == "coco_x" and three.bbox_mode == BoxMode.XYWH_ABS
    assert [name.split("-")[1:4] for name in three.shards] == [["00000", "of", "00003"], ["00001", "of", "00003"],
                                                              ["00002", "of", "00003"]]
    for i, image_id in enumerate(ids):
        b, s = three.get(image_id)
        np.testing.assert_array_equal(b, boxes[i]) and np.testing.assert_array_equal(s, logits[i])
    with pytest.raises(KeyError, match=r"\(2 images of coco_x\)"):
        three.get(3)


def test_manifest_sniffing(tmp_path):
    (tmp_path / "spaced.json").write_bytes(b"\n   \t{\"format\": 1}")
    assert is_proposal_manifest(str(tmp_path / "spaced.json"))
    (tmp_path / "p.pkl").write_bytes(pickle.dumps({"ids": []}))
    assert not is_proposal_manifest(str(tmp_path / "p.pkl"))
    assert not is_proposal_manifest(str(tmp_path / "missing.json"))


def test_rows_are_read_from_the_file_when_asked(tmp_path):
    """The store maps the shard: rows rewritten in place (same shape) are what the next get reads."""
    manifest = write_proposal_shards(str(tmp_path), [1], [np.ones((2, 4), np.float32)], [np.zeros(2, np.float32)])
    store = ProposalStore(manifest)
    assert store.get(1)[0][0, 0] == 1.0
    path = os.path.join(store.directory, store.shards[0])
    arr = np.load(path, mmap_mode="r+")
    arr[0, 0] = 9.0
    arr.flush()
    del arr
    assert store.get(1)[0][0, 0] == 9.0


@pytest.mark.parametrize("bad", ["fewer rows", "float64"])
def test_a_shard_of_another_shape_or_type_is_refused(bad, tmp_path):
    manifest = write_proposal_shards(str(tmp_path), [1], [np.ones((2, 4), np.float32)], [np.zeros(2, np.float32)])
    store = ProposalStore(manifest)
    path = os.path.join(store.directory, store.shards[0])
    np.save(path, np.zeros((1, 5), np.float32) if bad == "fewer rows" else np.zeros((2, 5), np.float64))
    held = "float32 (1, 5)" if bad == "fewer rows" else "float64 (2, 5)"
    with pytest.raises(ProposalFormatError) as e:
        ProposalStore(manifest).get(1)
    assert str(e.value) == (f"proposal shard {path!r} holds {held}, the manifest {manifest!r} says float32 "
                            "(2, 5); run the proposals stage again")


def test_a_pickled_store_carries_no_rows(tmp_path):
    n = 200
    manifest = write_proposal_shards(str(tmp_path), list(range(n)), [np.ones((50, 4), np.float32)] * n,
                                     [np.zeros(50, np.float32)] * n)
    store = ProposalStore(manifest)
    store.get(3)  # mapped now
    data = pickle.dumps(store)
    assert len(data) < 50 * n * 5 * 4 / 10  # the index only, not the 200 KB of rows
    again = pickle.loads(data)
    np.testing.assert_array_equal(again.get(199)[0], np.ones((50, 4)))


def test_mapper_names_an_image_without_proposals(tmp_path):
    store = ProposalStore(write_proposal_shards(str(tmp_path), [1], [np.ones((1, 4), np.float32)],
                                               [np.zeros(1, np.float32)]))
    mapper = ProposalMapper(lambda d: d, [store])
    with pytest.raises(KeyError) as e:
        mapper({"image_id": 2, "file_name": "b.png"})
    assert e.value.args[0] == f"image id 2 ('b.png') has no proposals in {[store.manifest_path]}; recompute them"
    with pytest.raises(KeyError) as e:
        mapper({"image_id": 2})
    assert e.value.args[0].startswith("image id 2 ('') has no proposals in")


def _manifest(d, ids):
    return write_proposal_shards(str(d), ids, [np.ones((1, 4), np.float32)] * len(ids),
                                 [np.zeros(1, np.float32)] * len(ids))


@pytest.mark.parametrize("first,second,shown", [
    ([1, 2, 3], [7, 3, 9], "3"),              # integer ids
    (["a", "b"], ["c", "b"], "'b'"),          # text ids
    ([1, 7], ["7", "x"], "'7'"),              # 7 and "7": detectron2 compares str(id)
])
def test_stores_for_refuses_an_id_in_two_datasets(first, second, shown, tmp_path):
    files = [_manifest(tmp_path / "a", first), _manifest(tmp_path / "b", second)]
    with pytest.raises(ProposalFormatError) as e:
        stores_for(files, ["train_a", "train_b"])
    assert str(e.value) == (f"image id {shown} is in the proposals of both 'train_a' and 'train_b'; shard "
                            "manifests need datasets with distinct image ids (or export them to detectron2 "
                            "pickles with export_detectron2_pickle)")
    apart = stores_for([files[0], _manifest(tmp_path / "c", [100, "y"])], ["train_a", "train_c"])
    assert [s.manifest_path for s in apart] == [files[0], str(tmp_path / "c" / "manifest.json")]


def test_stores_for_kinds(tmp_path):
    pkl = tmp_path / "d2.pkl"
    pkl.write_bytes(pickle.dumps({"ids": [1], "boxes": [np.zeros((1, 4))], "objectness_logits": [np.zeros(1)],
                                  "bbox_mode": 0}))
    assert stores_for([str(pkl)], ["a"]) is None
    m = _manifest(tmp_path / "m", [1, 1])  # one dataset: nothing to compare across datasets
    assert len(stores_for([m], ["a"])) == 1
    with pytest.raises(ProposalFormatError) as e:
        stores_for([m, str(pkl)], ["a", "b"])
    assert str(e.value) == (f"proposal files {[m, str(pkl)]} mix shard manifests and detectron2 pickles; give one "
                            "kind for all datasets (export_detectron2_pickle converts a manifest)")


def test_manifest_content_and_file_names(tmp_path):
    import json
    import re

    manifest = write_proposal_shards(str(tmp_path), [4, 5], [np.ones((2, 4), np.float32), np.ones((1, 4), np.float32)],
                                     [np.zeros(2, np.float32), np.zeros(1, np.float32)], dataset="d")
    text = open(manifest).read()
    assert text.startswith('{\n "format": "resnext_det/proposal-shards/1",\n "dataset": "d",\n')  # one key a line
    m = json.loads(text)
    (shard,) = m.pop("shards")
    assert m == {"format": "resnext_det/proposal-shards/1", "dataset": "d", "bbox_mode": 0, "dtype": "<f4",
                 "row": ["x0", "y0", "x1", "y1", "objectness_logit"], "images": 2, "rows": 3,
                 "bytes": 128 + 3 * 5 * 4}  # the .npy header, then 3 rows of 5 float32
    assert re.fullmatch(r"shard-00000-of-00001-[0-9a-f]{12}\.npy", shard["data"])
    assert shard["index"] == shard["data"][:-len(".npy")] + ".index.npz" and shard["token"] in shard["data"]
    assert sorted(os.listdir(tmp_path)) == sorted([shard["data"], shard["index"], "manifest.json"])


def test_offsets_after_an_empty_shard(tmp_path):
    """An empty shard before one holding two images: the second image's rows start after the first's."""
    with ShardWriter(str(tmp_path), 0, 2) as empty:
        first = empty.close()
    with ShardWriter(str(tmp_path), 1, 2) as w:
        w.add(1, np.ones((2, 4), np.float32), np.zeros(2, np.float32))
        w.add(2, np.full((3, 4), 7.0, np.float32), np.ones(3, np.float32))
        second = w.close()
    store = ProposalStore(write_manifest(str(tmp_path), [first, second]))
    np.testing.assert_array_equal(store.get(2)[0], np.full((3, 4), 7.0))
    np.testing.assert_array_equal(store.get(1)[0], np.ones((2, 4)))


def test_an_empty_store_and_the_index_size(tmp_path):
    store = ProposalStore(write_manifest(str(tmp_path / "none"), []))
    assert len(store) == 0 and store.ids == [] and 5 not in store and store.index_nbytes == 0
    with pytest.raises(KeyError):
        store.get(5)
    # per image: its id twice (write order and sorted, int64), its shard (int32), offset and count (int64)
    n = 10
    full = ProposalStore(_manifest(tmp_path / "ten", list(range(n))))
    assert full.index_nbytes == n * (8 + 8 + 4 + 8 + 8)


def _edit_manifest(manifest, change):
    import json

    m = json.load(open(manifest))
    change(m)
    with open(manifest, "w") as f:
        json.dump(m, f)


@pytest.mark.parametrize("what", ["token", "images", "rows"])
def test_a_manifest_that_does_not_match_its_shard_is_refused(what, tmp_path):
    manifest = _manifest(tmp_path, [1, 2])
    index = os.path.join(str(tmp_path), ProposalStore(manifest).shards[0][:-len(".npy")] + ".index.npz")
    token = str(np.load(index)["token"])
    change = {"token": lambda m: m["shards"][0].update(token="0" * 12),
              "images": lambda m: m["shards"][0].update(images=3),
              "rows": lambda m: m["shards"][0].update(rows=5)}[what]
    _edit_manifest(manifest, change)
    with pytest.raises(ProposalFormatError) as e:
        ProposalStore(manifest)
    written = "0" * 12 if what == "token" else token
    assert str(e.value) == (f"proposal shard {index!r} does not match {manifest!r} (another run's shard: token "
                            f"{token!r}, manifest {written!r}); run the proposals stage again")


def test_unreadable_manifests_and_indexes_are_named(tmp_path):
    missing = str(tmp_path / "nope" / "manifest.json")
    with pytest.raises(ProposalFormatError) as e:
        ProposalStore(missing)
    assert str(e.value).startswith(f"cannot read proposal manifest {missing!r}: [Errno 2] No such file")
    assert str(e.value).endswith("; run the proposals stage again")
    for name, content, fmt in (("other.json", '{"format": "x"}', "'x'"), ("list.json", "[1]", "None")):
        (tmp_path / name).write_text(content)
        with pytest.raises(ProposalFormatError) as e:
            ProposalStore(str(tmp_path / name))
        assert str(e.value) == (f"{str(tmp_path / name)!r} is not a proposal manifest (format {fmt}, expected "
                                "'resnext_det/proposal-shards/1'); give a manifest.json written by the proposals "
                                "stage or a detectron2 proposal .pkl")
    manifest = _manifest(tmp_path / "m", [1])
    _edit_manifest(manifest, lambda m: m.pop("dataset"))
    assert ProposalStore(manifest).dataset == ""
    index = os.path.join(os.path.dirname(manifest), ProposalStore(manifest).shards[0][:-len(".npy")] + ".index.npz")
    z = dict(np.load(index))
    np.savez(index, **dict(z, ids=np.array([{"x": 1}], dtype=object)))  # an object array: a pickle inside
    with pytest.raises(ProposalFormatError) as e:
        ProposalStore(manifest)
    assert str(e.value).startswith(f"proposal shard index {index!r} (named by {manifest!r}) cannot be read: ")
    assert str(e.value).endswith("; run the proposals stage again")
