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
