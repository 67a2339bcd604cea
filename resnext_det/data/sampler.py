"""A training sampler that resumes at the data position where a run stopped.

detectron2's ``TrainingSampler`` restarts its shuffled stream from the beginning after a
resume, and with the default random seed it is a different stream altogether: a resumed
COCO run sees other images than the run it continues. This sampler keeps its seed in the
checkpoint (it is a checkpointable) and skips the indices the finished iterations consumed.
"""
from __future__ import annotations

import itertools
from typing import Dict, Optional

from detectron2.data.samplers import TrainingSampler

__all__ = ["ResumableTrainingSampler"]


class ResumableTrainingSampler(TrainingSampler):
    """``TrainingSampler`` + a start position and a checkpointed seed.

    The global stream is ``shuffle(range(size)) + shuffle(range(size)) + ...`` from
    ``seed``; rank r takes ``stream[start + r :: world_size]`` where ``start`` is the number
    of images all ranks together consumed before (``iteration * SOLVER.IMS_PER_BATCH``).
    Exact when ``DATALOADER.ASPECT_RATIO_GROUPING`` is off; with grouping, the images
    waiting in a partly filled aspect-ratio bucket at the kill are skipped.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: Optional[int] = None):
        super().__init__(size, shuffle, seed)
        self.start = 0

    def set_start_iter(self, iteration: int, ims_per_batch: int) -> None:
        """Resume after ``iteration`` finished iterations of ``ims_per_batch`` images (all ranks)."""
        self.start = int(iteration) * int(ims_per_batch)

    def __iter__(self):
        yield from itertools.islice(self._infinite_indices(), self.start + self._rank, None, self._world_size)

    # checkpointable: saved by the trainer's checkpointer, so the stream survives a restart
    def state_dict(self) -> Dict[str, int]:
        return {"seed": self._seed, "size": self._size}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        if int(state.get("size", self._size)) != self._size:
            # another dataset: the old stream is meaningless; keep our own seed
            return
        self._seed = int(state["seed"])
