"""Exactly resumable training data (the same images, order and augmentation, interrupted or not):
detectron2's ``TrainingSampler`` restarts its stream after a resume, and its augmentations draw from
numpy's global stream, which a restart does not continue; the three classes here fix both.
"""
from __future__ import annotations

import itertools
import random
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data.common import DatasetFromList
from detectron2.data.samplers import TrainingSampler
from torch.utils.data import Dataset, Sampler

__all__ = ["ResumableTrainingSampler", "PositionSeededDataset", "GroupedBatchSampler", "is_landscape"]


class ResumableTrainingSampler(TrainingSampler):
    """``TrainingSampler`` + a start position and a checkpointed seed (None: a random one shared by
    all workers). Of the stream ``shuffle(range(size)) + shuffle(range(size)) + ...``, rank r
    takes ``stream[start + r :: world_size]``, ``start`` being the images all ranks consumed
    before; ``keyed`` yields *sample keys* ``position * size + index``."""

    def __init__(self, size: int, shuffle: bool = True, seed: Optional[int] = None, keyed: bool = False):
        super().__init__(size, shuffle, seed)
        self.start = 0
        self.keyed = keyed

    @property
    def seed(self) -> int:
        return int(self._seed)

    def set_start_iter(self, iteration: int, ims_per_batch: int) -> None:
        """Resume after ``iteration`` finished iterations of ``ims_per_batch`` images (all ranks)."""
        self.start = int(iteration) * int(ims_per_batch)

    def __iter__(self):
        yield from self._keys(self.start + self._rank)

    def rank_keys(self, drawn: int = 0) -> Iterator[int]:
        """This process's share of the stream, ``stream[rank::world_size]``, after ``drawn`` elements."""
        return self._keys(int(drawn) * self._world_size + self._rank)

    def index_of(self, key: int) -> int:
        return int(key) % self._size if self.keyed else int(key)

    def _keys(self, first: int) -> Iterator[int]:
        stream = itertools.islice(self._infinite_indices(), first, None, self._world_size)
        if not self.keyed:
            yield from stream
            return
        for position, index in zip(itertools.count(first, self._world_size), stream):
            yield position * self._size + index

    def state_dict(self) -> Dict[str, int]:
        return {"seed": self._seed, "size": self._size}

    def load_state_dict(self, state: Dict[str, int]) -> bool:
        """Take the seed from ``state``; False (nothing taken) if saved for another dataset size."""
        if int(state.get("size", self._size)) != self._size:
            return False
        self._seed = int(state["seed"])
        return True


class PositionSeededDataset(Dataset):
    """Map-style dataset of sample keys from a keyed :class:`ResumableTrainingSampler`:
    ``mapper(dicts[index])`` with numpy's and Python's global random streams seeded from the
    sampler's seed and the key's position for that call only (the caller's state is restored:
    with ``num_workers=0`` it is the training process's)."""

    def __init__(self, dicts: List[dict], mapper: Callable[[dict], dict], sampler: ResumableTrainingSampler):
        self._dicts = DatasetFromList(dicts, copy=False)  # serialized: small to send to workers
        self._mapper = mapper
        self._sampler = sampler

    def __len__(self) -> int:
        return len(self._dicts)

    def sample_seed(self, position: int) -> int:
        return int(np.random.SeedSequence([self._sampler.seed, int(position)]).generate_state(1)[0])

    def __getitem__(self, key: int) -> dict:
        position, index = divmod(int(key), len(self._dicts))
        np_state, py_state = np.random.get_state(), random.getstate()
        seed = self.sample_seed(position)
        np.random.seed(seed)
        random.seed(seed)
        try:
            return self._mapper(self._dicts[index])
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def is_landscape(dataset_dict: dict) -> bool:
    """detectron2's aspect-ratio bucket of an image: wider than tall (bucket 0) or not (1)."""
    return dataset_dict["width"] > dataset_dict["height"]


class GroupedBatchSampler(Sampler):
    """One process's batches of ``batch_size`` keys from a :class:`ResumableTrainingSampler`,
    grouped by ``groups[dataset index]`` (0/1, e.g. :func:`is_landscape`; None: one bucket):
    detectron2's ``AspectRatioGroupedDataset`` rule (a full bucket is the next batch) applied to keys
    before mapping, so the state after any number of batches (:meth:`state_after`, :meth:`restore`:
    ``{"drawn": keys drawn, "buckets": keys waiting}``) is known whatever the loader read ahead."""

    def __init__(self, sampler: ResumableTrainingSampler, batch_size: int, groups: Optional[Sequence] = None):
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self._groups = None if groups is None else np.asarray(groups, dtype=np.int64)
        self._start = self._state(0, ([], []))
        self._cursor: Tuple[int, dict, Optional[Iterator]] = (0, self._start, None)

    @staticmethod
    def _state(drawn: int, buckets) -> dict:
        return {"drawn": int(drawn), "buckets": [[int(k) for k in b] for b in buckets]}

    @property
    def start(self) -> dict:
        """The state iteration starts from (the beginning, or what :meth:`restore` set)."""
        return self._state(self._start["drawn"], self._start["buckets"])

    def restore(self, state: dict) -> None:
        """Continue from ``state`` (from :meth:`state_after`)."""
        self._start = self._state(state["drawn"], state["buckets"])
        self._cursor = (0, self._start, None)

    def _batches(self, state: dict) -> Iterator[Tuple[List[int], dict]]:
        """(batch, state after it) from ``state`` on."""
        drawn = state["drawn"]
        buckets = [list(b) for b in state["buckets"]]
        for key in self.sampler.rank_keys(drawn):
            drawn += 1
            bucket = buckets[0 if self._groups is None else int(self._groups[self.sampler.index_of(key)])]
            bucket.append(key)
            if len(bucket) == self.batch_size:
                batch = bucket[:]
                del bucket[:]
                yield batch, self._state(drawn, buckets)

    def __iter__(self) -> Iterator[List[int]]:
        for batch, _ in self._batches(self._start):
            yield batch

    def state_after(self, batches: int) -> dict:
        """The state after the first ``batches`` batches from the start (not from a running
        iterator, which a data loader advances ahead of the model)."""
        batches = int(batches)
        done, state, it = self._cursor
        if batches < done or it is None:  # replay from the start
            done, state, it = 0, self._start, self._batches(self._start)
        while done < batches:
            _, state = next(it)
            done += 1
        self._cursor = (done, state, it)
        return self._state(state["drawn"], state["buckets"])
