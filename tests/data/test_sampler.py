"""The resumable sampler continues the exact stream an uninterrupted run would draw."""
import itertools

from resnext_det.data.sampler import ResumableTrainingSampler


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_resumed_stream_equals_uninterrupted_tail():
    full = ResumableTrainingSampler(17, seed=3)
    uninterrupted = _take(full, 100)
    resumed = ResumableTrainingSampler(17, seed=999)  # a new process with another seed...
    resumed.load_state_dict(full.state_dict())          # ...gets the checkpointed one back
    resumed.set_start_iter(iteration=7, ims_per_batch=4)
    assert _take(resumed, 72) == uninterrupted[28:]


def test_ranks_partition_the_stream():
    s0 = ResumableTrainingSampler(10, seed=1)
    s1 = ResumableTrainingSampler(10, seed=1)
    s0._rank, s0._world_size = 0, 2
    s1._rank, s1._world_size = 1, 2
    for s in (s0, s1):
        s.set_start_iter(3, 4)  # 3 iterations x 4 images (2 per rank)
    single = ResumableTrainingSampler(10, seed=1)
    stream = _take(single, 52)
    assert _take(s0, 20) == stream[12::2][:20]
    assert _take(s1, 20) == stream[13::2][:20]


def test_other_dataset_size_keeps_own_seed():
    s = ResumableTrainingSampler(5, seed=1)
    s.load_state_dict({"seed": 42, "size": 6})
    assert s.state_dict()["seed"] == 1


# ----------------------------------------------------------------------------- the stream itself
def test_take_returns_as_many_as_asked():
    """The helpers above compare lists: an empty stream would make them agree vacuously."""
    assert len(_take(ResumableTrainingSampler(17, seed=3), 100)) == 100
    s = ResumableTrainingSampler(10, seed=1)
    s._rank, s._world_size = 1, 2
    s.set_start_iter(3, 4)
    assert len(_take(s, 20)) == 20


def test_default_stream_is_shuffled_bare_indices():
    """Defaults: each pass a permutation of range(size) (shuffled, not in order), bare indices."""
    stream = _take(ResumableTrainingSampler(20, seed=5), 60)
    for k in range(3):
        assert sorted(stream[20 * k:20 * (k + 1)]) == list(range(20))
    assert stream[:20] != list(range(20)) and stream[:20] != stream[20:40]
    assert _take(ResumableTrainingSampler(20, shuffle=False, seed=5), 25) == list(range(20)) + list(range(5))


def test_keyed_stream_is_position_times_size_plus_index():
    size, start, rank, world = 7, 12, 1, 2
    plain = ResumableTrainingSampler(size, seed=4)
    plain._rank, plain._world_size = rank, world
    plain.set_start_iter(3, 4)  # 3 iterations x 4 images: start 12
    keyed = ResumableTrainingSampler(size, seed=4, keyed=True)
    keyed._rank, keyed._world_size = rank, world
    keyed.set_start_iter(3, 4)
    keys = _take(keyed, 10)
    assert len(keys) == 10
    # rank 1 of 2 takes positions 13, 15, 17, ... of the global stream (written out by hand)
    assert [k // size for k in keys] == [13, 15, 17, 19, 21, 23, 25, 27, 29, 31]
    assert [k % size for k in keys] == _take(plain, 10)


def test_state_dict_and_resume_answers():
    s = ResumableTrainingSampler(17, seed=3)
    assert s.state_dict() == {"seed": 3, "size": 17}
    other = ResumableTrainingSampler(17, seed=8)
    assert other.load_state_dict({"seed": 3, "size": 17}) is True and other.seed == 3
    assert other.load_state_dict({"seed": 11}) is True and other.seed == 11  # saved without a size
    assert other.load_state_dict({"seed": 5, "size": 18}) is False and other.seed == 11


# ----------------------------------------------------------------------------- PositionSeededDataset
import random  # noqa: E402

import numpy as np  # noqa: E402

from resnext_det.data.sampler import PositionSeededDataset  # noqa: E402


def _draws(d):
    """A mapper that reports which image it got and what the global random streams gave."""
    return {"id": d["image_id"], "np": np.random.rand(3).tolist(), "py": [random.random() for _ in range(3)]}


def _dataset(seed=7, n=5):
    sampler = ResumableTrainingSampler(n, seed=seed, keyed=True)
    return PositionSeededDataset([{"image_id": 100 + i} for i in range(n)], _draws, sampler), sampler


def test_key_maps_to_its_image_and_is_reproducible():
    ds, _ = _dataset()
    assert len(ds) == 5
    assert ds[3 * 5 + 2]["id"] == 102 and ds[2]["id"] == 102 and ds[4 * 5 + 4]["id"] == 104
    again, _ = _dataset()
    np.random.seed(123)  # whatever the caller's streams hold
    random.seed(456)
    assert ds[3 * 5 + 2] == again[3 * 5 + 2]


def test_same_image_in_two_epochs_gets_independent_augmentation():
    """Image 2 drawn at stream positions 3 and 8 (two epochs): different draws from both
    numpy's and Python's streams (a seed taken from the index alone gives the same twice)."""
    ds, _ = _dataset()
    first, second = ds[3 * 5 + 2], ds[8 * 5 + 2]
    assert first["id"] == second["id"] == 102
    assert first["np"] != second["np"] and first["py"] != second["py"]


def test_flip_of_one_image_varies_across_epochs():
    """detectron2's own RandomFlip (numpy's stream) on one image over 32 epochs: both outcomes
    occur, each often (32 identical flips would mean the epoch does not enter the seed)."""
    import detectron2.data.transforms as T

    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)

    def mapper(d):
        aug = T.AugInput(image.copy())
        T.AugmentationList([T.RandomFlip(prob=0.5)])(aug)
        return bool((aug.image != image).any())

    sampler = ResumableTrainingSampler(4, seed=0, keyed=True)
    ds = PositionSeededDataset([{"image_id": i} for i in range(4)], mapper, sampler)
    flips = [ds[epoch * 4 * 4 + 1] for epoch in range(32)]  # image 1, one position per epoch
    assert 6 <= sum(flips) <= 26, flips


def test_seed_follows_the_samplers_restored_seed_and_caller_state_is_kept():
    ds, sampler = _dataset(seed=7)
    reference, _ = _dataset(seed=42)
    before = ds[10]
    assert sampler.load_state_dict({"seed": 42, "size": 5})  # a resume restores the seed
    assert ds[10] == reference[10] != before
    np.random.seed(1)
    random.seed(2)
    expected_np, expected_py = np.random.rand(2).tolist(), [random.random(), random.random()]
    np.random.seed(1)
    random.seed(2)
    ds[10]
    assert np.random.rand(2).tolist() == expected_np  # the caller's streams did not move
    assert [random.random(), random.random()] == expected_py


# ----------------------------------------------------------------------------- per-process keys, grouping
from resnext_det.data.sampler import GroupedBatchSampler, is_landscape  # noqa: E402


def test_rank_keys_and_index_of():
    single = _take(ResumableTrainingSampler(10, seed=2), 40)
    s = ResumableTrainingSampler(10, seed=2, keyed=True)
    s._rank, s._world_size = 1, 2
    keys = list(itertools.islice(s.rank_keys(drawn=3), 5))
    # rank 1 of 2, its first 3 drawn: stream positions 7, 9, 11, 13, 15 (written out)
    assert [k // 10 for k in keys] == [7, 9, 11, 13, 15]
    assert [s.index_of(k) for k in keys] == [single[p] for p in (7, 9, 11, 13, 15)]
    assert list(itertools.islice(s.rank_keys(), 2)) == [1 * 10 + single[1], 3 * 10 + single[3]]
    plain = ResumableTrainingSampler(10, seed=2)
    assert plain.index_of(23) == 23 and s.index_of(23) == 3


def test_is_landscape():
    assert is_landscape({"width": 640, "height": 480}) is True
    assert is_landscape({"width": 480, "height": 640}) is False
    assert is_landscape({"width": 500, "height": 500}) is False  # square: detectron2's second bucket


def _unshuffled(size, keyed=False):
    return ResumableTrainingSampler(size, shuffle=False, seed=0, keyed=keyed)


def test_grouped_batches_follow_detectron2s_bucket_rule():
    """Stream 0 1 2 3 4 0 1 2 3 4 ..., buckets of the indices [0, 0, 1, 0, 1], batches of 2:
    each key joins its bucket, a full bucket is the next batch (worked out by hand)."""
    g = GroupedBatchSampler(_unshuffled(5), 2, groups=[0, 0, 1, 0, 1])
    assert list(itertools.islice(iter(g), 5)) == [[0, 1], [2, 4], [3, 0], [1, 3], [2, 4]]
    assert g.state_after(0) == {"drawn": 0, "buckets": [[], []]}
    assert g.state_after(2) == {"drawn": 5, "buckets": [[3], []]}
    assert g.state_after(4) == {"drawn": 9, "buckets": [[], [2]]}
    assert g.state_after(1) == {"drawn": 2, "buckets": [[], []]}  # back again: replayed from the start
    assert g.state_after(3) == {"drawn": 6, "buckets": [[], []]}
    # one bucket: consecutive keys
    one = GroupedBatchSampler(_unshuffled(5), 3)
    assert list(itertools.islice(iter(one), 3)) == [[0, 1, 2], [3, 4, 0], [1, 2, 3]]
    assert one.state_after(2) == {"drawn": 6, "buckets": [[], []]}


def test_grouped_batches_resume_from_a_state():
    g = GroupedBatchSampler(_unshuffled(5), 2, groups=[0, 0, 1, 0, 1])
    state = g.state_after(2)
    resumed = GroupedBatchSampler(_unshuffled(5), 2, groups=[0, 0, 1, 0, 1])
    resumed.restore(state)
    assert resumed.start == {"drawn": 5, "buckets": [[3], []]}
    assert list(itertools.islice(iter(resumed), 3)) == [[3, 0], [1, 3], [2, 4]]
    assert resumed.state_after(2) == {"drawn": 9, "buckets": [[], [2]]}  # counted from the restored state
    state["buckets"][0].append(99)  # the sampler keeps its own copy
    assert resumed.start["buckets"] == [[3], []]


def test_grouped_keyed_batches_group_by_the_keys_image():
    keyed = GroupedBatchSampler(_unshuffled(5, keyed=True), 2, groups=[0, 0, 1, 0, 1])
    batches = list(itertools.islice(iter(keyed), 5))
    assert [[k % 5 for k in b] for b in batches] == [[0, 1], [2, 4], [3, 0], [1, 3], [2, 4]]
    assert batches[2] == [3 * 5 + 3, 5 * 5 + 0]  # image 3 at stream position 3, image 0 at 5


# ------------------------------------------------------------- aspect-ratio grouped batches
def _grouped(world=2, rank=1, size=11, batch=3, groups=(1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 1)):
    from resnext_det.data.sampler import GroupedBatchSampler

    s = ResumableTrainingSampler(size, seed=6, keyed=True)
    s._rank, s._world_size = rank, world
    return GroupedBatchSampler(s, batch, None if groups is None else list(groups))


def test_grouped_batches_hold_one_orientation_and_every_drawn_key_once():
    g = _grouped()
    batches = list(itertools.islice(iter(g), 30))
    groups = (1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 1)
    assert all(len(b) == 3 and len({groups[k % 11] for k in b}) == 1 for b in batches)
    keys = [k for b in batches for k in b]
    state = g.state_after(30)
    waiting = [k for b in state["buckets"] for k in b]
    # every key of this rank's share drawn so far is in a batch or waits, once, in stream order
    drawn = list(itertools.islice(g.sampler.rank_keys(), state["drawn"]))
    assert sorted(keys + waiting) == sorted(drawn) and len(set(drawn)) == len(drawn)
    assert [k // 11 for k in drawn[:4]] == [1, 3, 5, 7]  # rank 1 of 2: odd positions


def test_grouped_batches_restored_from_any_state_continue_the_same_batches():
    ref = list(itertools.islice(iter(_grouped()), 40))
    for n in (0, 1, 7, 19):
        state = _grouped().state_after(n)
        resumed = _grouped()
        resumed.restore(state)
        assert list(itertools.islice(iter(resumed), 40 - n)) == ref[n:]
        assert resumed.state_after(3) == _grouped().state_after(n + 3)
    assert any(_grouped().state_after(n)["buckets"] != [[], []] for n in range(10))  # keys do wait


def test_one_bucket_gives_consecutive_batches_of_the_rank_share():
    g = _grouped(groups=None)
    share = list(itertools.islice(g.sampler.rank_keys(), 12))
    assert list(itertools.islice(iter(g), 4)) == [share[i:i + 3] for i in range(0, 12, 3)]
