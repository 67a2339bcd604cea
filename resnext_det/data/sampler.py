"""Exactly resumable training data: the same images, in the same order, with the same
augmentation, whether a run was interrupted or not.

detectron2's ``TrainingSampler`` restarts its shuffled stream from the beginning after a
resume (and with the default random seed it is another stream altogether), and its
augmentations (``RandomFlip``, multi-size ``ResizeShortestEdge``) draw from numpy's global
random stream, which a restart does not continue. Here:

- :class:`ResumableTrainingSampler` keeps its seed in the checkpoint (it is a
  checkpointable) and skips the samples the finished iterations consumed; it yields *sample
  keys*, ``position * size + index``: which image, and where in the global stream it is;
- :class:`PositionSeededDataset` maps a key to the mapped image with numpy's and Python's
  random streams seeded from (sampler seed, position) for that one image, and restored after.
  An image's augmentation is therefore a function of its place in the stream alone: it does
  not depend on the order in which data-loader workers ran, nor on what ran before a resume.
"""
from __future__ import annotations

import itertools
import random
from typing import Callable, Dict, List, Optional

import numpy as np
from detectron2.data.common import DatasetFromList
from detectron2.data.samplers import TrainingSampler
from torch.utils.data import Dataset

__all__ = ["ResumableTrainingSampler", "PositionSeededDataset"]


class ResumableTrainingSampler(TrainingSampler):
    """``TrainingSampler`` + a start position and a checkpointed seed.

    The global stream is ``shuffle(range(size)) + shuffle(range(size)) + ...`` from
    ``seed``; rank r takes ``stream[start + r :: world_size]`` where ``start`` is the number
    of images all ranks together consumed before (``iteration * SOLVER.IMS_PER_BATCH``).
    Exact when ``DATALOADER.ASPECT_RATIO_GROUPING`` is off or all images fall in one
    aspect-ratio bucket; with several buckets, the images waiting in a partly filled bucket
    at the kill are skipped.

    Args:
        size: number of images in the dataset.
        shuffle: shuffle each pass (as detectron2's).
        seed: the stream's seed (None: a random one shared by all workers).
        keyed: yield ``position * size + index`` (for :class:`PositionSeededDataset`)
            instead of the bare index.
    """

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
        first = self.start + self._rank
        stream = itertools.islice(self._infinite_indices(), first, None, self._world_size)
        if not self.keyed:
            yield from stream
            return
        for position, index in zip(itertools.count(first, self._world_size), stream):
            yield position * self._size + index

    # checkpointable: saved by the trainer's checkpointer, so the stream survives a restart
    def state_dict(self) -> Dict[str, int]:
        return {"seed": self._seed, "size": self._size}

    def load_state_dict(self, state: Dict[str, int]) -> bool:
        """Take the stream's seed from ``state``; False (nothing taken) when it was saved for
        a dataset of another size, whose stream is meaningless here."""
        if int(state.get("size", self._size)) != self._size:
            return False
        self._seed = int(state["seed"])
        return True


class PositionSeededDataset(Dataset):
    """Map-style dataset of sample keys (from a keyed :class:`ResumableTrainingSampler`):
    ``mapper(dicts[index])`` with numpy's and Python's global random streams seeded, for that
    call only, from the sampler's seed and the sample's position in the stream.

    detectron2's augmentations draw from those global streams; seeding them per sample makes
    each image's augmentation reproducible after a resume and independent of worker order.
    The caller's random state is restored afterwards (with ``num_workers=0`` the mapper runs
    in the training process, whose streams must not move).

    Args:
        dicts: detectron2 dataset dicts.
        mapper: e.g. detectron2's ``DatasetMapper``.
        sampler: the keyed sampler whose seed (restored on resume) is used.
    """

    def __init__(self, dicts: List[dict], mapper: Callable[[dict], dict], sampler: ResumableTrainingSampler):
        self._dicts = DatasetFromList(dicts, copy=False)  # serialized: small to send to workers
        self._mapper = mapper
        self._sampler = sampler

    def __len__(self) -> int:
        return len(self._dicts)

    def sample_seed(self, position: int) -> int:
        """The seed of the sample at ``position`` of the stream."""
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
