"""Precomputed proposals stored in shards read by offset, so memory does not grow with the dataset.

detectron2's proposal file is one pickle of every image's boxes; at COCO size (118k images x
2000 proposals) that is about 4.7 GB, held whole by the process that writes it and by every
training process that reads it. Here instead:

* each worker process writes its own shard while it runs (:class:`ShardWriter`): one ``.npy``
  of float32 rows ``[x0, y0, x1, y1, objectness_logit]`` (boxes ``XYXY_ABS``, in the order the
  RPN gave them) and an ``.index.npz`` with, per image, its id, first row and row count. Both
  appear complete or not at all (:func:`resnext_det.io.atomic_open`) and their names carry a
  random token, so a new run never overwrites files that an older manifest names;
* one small ``manifest.json`` (:func:`write_manifest`, rank 0, after every shard is there)
  lists the shards; it is the path that ``DATASETS.PROPOSAL_FILES_*`` name;
* a training or test process opens the shards memory-mapped (:class:`ProposalStore`): it
  holds only the index (24 bytes an image) and reads an image's rows when the mapper needs them
  (:class:`ProposalMapper`, which then calls detectron2's ``DatasetMapper``).

float32 and not float16: COCO coordinates reach 640 px, where float16 steps are 0.5 px; that
moves IoUs near the 0.5 foreground threshold and so changes stage 2's sampling (results would
no longer equal the pickle path's). The scale tool records float16's error and size beside.

:func:`export_detectron2_pickle` writes detectron2's classic ``.pkl`` from the shards, for
users who want it (it holds every proposal in memory, as detectron2's loader does).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import uuid
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.structures import BoxMode

from ..io import atomic_open, atomic_write_json
from .coco_json import DatasetError

__all__ = [
    "MANIFEST_FORMAT",
    "ProposalFormatError",
    "ShardWriter",
    "write_manifest",
    "write_proposal_shards",
    "is_proposal_manifest",
    "ProposalStore",
    "ProposalMapper",
    "export_detectron2_pickle",
    "write_detectron2_proposals",
    "stores_for",
]

MANIFEST_FORMAT = "resnext_det/proposal-shards/1"
MANIFEST_NAME = "manifest.json"
ROW = ("x0", "y0", "x1", "y1", "objectness_logit")
_DTYPE = np.dtype("<f4")
# room reserved for the .npy header, written last (the row count is known only at the end);
# numpy's own header writer pads to a multiple of 64 bytes, so any (N, 5) shape takes 128
_HEADER_BYTES = 128
_SHARD_RE = re.compile(r"^shard-\d+-of-\d+-[0-9a-f]+\.(npy|index\.npz)$")


class ProposalFormatError(DatasetError):
    """A proposal manifest or shard that cannot be used; the message names the file and a fix
    (a :class:`~resnext_det.data.coco_json.DatasetError`: the command line prints it in one line)."""


class ShardWriter:
    """Streams one worker's proposals into its shard: constant memory, whatever the dataset size.

    Rows go straight to a temporary file; :meth:`close` writes the ``.npy`` header and the
    index and renames both into place. An exception (or :meth:`abort`) removes the temporary
    file; a kill leaves at most a hidden ``.*.tmp`` file, never a shard.

    Args:
        directory: where the shard goes (created if missing).
        rank, world_size: this worker and the number of workers (they name the shard).
    """

    def __init__(self, directory: str, rank: int = 0, world_size: int = 1):
        token = uuid.uuid4().hex[:12]
        self.name = f"shard-{rank:05d}-of-{world_size:05d}-{token}"
        self.directory, self.token = directory, token
        self.data_path = os.path.join(directory, self.name + ".npy")
        self.index_path = os.path.join(directory, self.name + ".index.npz")
        self._ids: List[Any] = []
        self._counts: List[int] = []
        self._rows = 0
        self._stack = contextlib.ExitStack()
        self._file = self._stack.enter_context(atomic_open(self.data_path, "wb"))
        self._file.write(b"\0" * _HEADER_BYTES)

    def add(self, image_id, boxes, logits) -> None:
        """Append one image's proposals.

        Args:
            image_id: the dataset dict's ``image_id`` (int or str).
            boxes: (N, 4) ``XYXY_ABS``.
            logits: (N,) objectness logits.
        """
        boxes = np.asarray(boxes, dtype=_DTYPE).reshape(-1, 4)
        logits = np.asarray(logits, dtype=_DTYPE).reshape(-1)
        if len(boxes) != len(logits):
            raise ProposalFormatError(f"image {image_id!r}: {len(boxes)} boxes but {len(logits)} logits")
        self._file.write(np.concatenate([boxes, logits[:, None]], axis=1).tobytes())
        self._ids.append(image_id)
        self._counts.append(len(boxes))
        self._rows += len(boxes)

    def close(self) -> Dict[str, Any]:
        """Finish the shard (header, index, renames); returns its manifest entry."""
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": np.lib.format.dtype_to_descr(_DTYPE), "fortran_order": False,
                     "shape": (self._rows, len(ROW))})
        if len(header.getvalue()) != _HEADER_BYTES:  # (only for shapes beyond any dataset)
            self.abort()
            raise ProposalFormatError(f"{self.data_path}: .npy header of {len(header.getvalue())} "
                                      f"bytes for {self._rows} rows does not fit {_HEADER_BYTES}")
        self._file.seek(0)
        self._file.write(header.getvalue())
        self._stack.close()  # fsync + rename: the data file is complete
        counts = np.asarray(self._counts, np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if len(counts) else counts
        with atomic_open(self.index_path, "wb") as f:
            np.savez(f, ids=_id_array(self._ids), offsets=offsets, counts=counts,
                     token=np.asarray(self.token))
        return {"data": os.path.basename(self.data_path), "index": os.path.basename(self.index_path),
                "token": self.token, "images": len(self._ids), "rows": int(self._rows),
                "bytes": os.path.getsize(self.data_path)}

    def abort(self) -> None:
        """Drop the unfinished shard (its temporary file is removed)."""
        self._stack.__exit__(RuntimeError, RuntimeError("shard aborted"), None)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()


def _id_array(ids: Sequence[Any]) -> np.ndarray:
    # int ids (COCO's) as int64, searchable; anything else as text, compared as detectron2
    # compares proposal ids with image ids: str(id)
    if all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
        return np.asarray(ids, np.int64).reshape(-1)
    return np.asarray([str(i) for i in ids], dtype=str).reshape(-1)


def write_manifest(directory: str, shards: Sequence[Dict[str, Any]], *, dataset: str = "",
                   bbox_mode: int = int(BoxMode.XYXY_ABS), remove_stale: bool = True) -> str:
    """Write ``directory/manifest.json`` naming ``shards`` (what :meth:`ShardWriter.close`
    returned, in rank order), then remove shard files of earlier runs that it does not name.

    Args:
        directory: the shards' folder.
        shards: their manifest entries.
        dataset: the dataset name (for messages).
        bbox_mode: detectron2 ``BoxMode`` of the boxes.
        remove_stale: delete unnamed ``shard-*`` files (they belong to replaced or killed runs).

    Returns:
        the manifest's path.
    """
    path = os.path.join(directory, MANIFEST_NAME)
    atomic_write_json(path, {
        "format": MANIFEST_FORMAT, "dataset": dataset, "bbox_mode": int(bbox_mode), "dtype": _DTYPE.str,
        "row": list(ROW), "images": sum(s["images"] for s in shards), "rows": sum(s["rows"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards), "shards": list(shards)}, indent=1)
    if remove_stale:
        named = {s["data"] for s in shards} | {s["index"] for s in shards}
        for f in os.listdir(directory):
            if _SHARD_RE.match(f) and f not in named:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, f))
    return path


def write_proposal_shards(directory: str, ids: Sequence[Any], boxes: Sequence[np.ndarray],
                          logits: Sequence[np.ndarray], *, num_shards: int = 1, dataset: str = "",
                          bbox_mode: int = int(BoxMode.XYXY_ABS)) -> str:
    """All of a dataset's proposals written as ``num_shards`` shards and a manifest, in one
    process (conversions, tests; the plan writes one shard per worker with :class:`ShardWriter`).

    Images are split into contiguous runs, shard ``k`` holding the ``k``-th. Returns the
    manifest's path.
    """
    bounds = np.linspace(0, len(ids), num_shards + 1).astype(int)
    entries = []
    for k in range(num_shards):
        with ShardWriter(directory, k, num_shards) as w:
            for j in range(bounds[k], bounds[k + 1]):
                w.add(ids[j], boxes[j], logits[j])
            entries.append(w.close())
    return write_manifest(directory, entries, dataset=dataset, bbox_mode=bbox_mode)


def is_proposal_manifest(path: str) -> bool:
    """Whether ``path`` is a shard manifest (JSON) rather than a detectron2 proposal pickle:
    decided by the first byte, so a file's name does not matter."""
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
    except OSError:
        return False
    return head.startswith(b"{")


class ProposalStore:
    """The proposals of a manifest, read by image id from memory-mapped shards.

    Holds the shards' indexes (id, first row, count: 24 bytes an image); the rows stay in the
    files (memory-mapped on first use in each process, so a forked data-loader worker maps
    its own). Picklable without the mappings.

    Args:
        manifest: the ``manifest.json`` path.

    Raises:
        ProposalFormatError: naming the file, when the manifest or a shard is missing, of
            another format, or does not match (a shard of another run).
    """

    def __init__(self, manifest: str):
        self.manifest_path = manifest
        self.directory = os.path.dirname(os.path.abspath(manifest))
        try:
            with open(manifest) as f:
                m = json.load(f)
        except (OSError, ValueError) as e:
            raise ProposalFormatError(f"cannot read proposal manifest {manifest!r}: {e}; run the "
                                      "proposals stage again") from None
        if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
            raise ProposalFormatError(
                f"{manifest!r} is not a proposal manifest (format {m.get('format') if isinstance(m, dict) else None!r}"
                f", expected {MANIFEST_FORMAT!r}); give a manifest.json written by the proposals "
                "stage or a detectron2 proposal .pkl")
        self.dataset = m.get("dataset", "")
        self.bbox_mode = BoxMode(m["bbox_mode"])
        self.shards = [s["data"] for s in m["shards"]]
        ids, shard_of, offsets, counts = [], [], [], []
        for k, s in enumerate(m["shards"]):
            index_path = os.path.join(self.directory, s["index"])
            try:
                with np.load(index_path, allow_pickle=False) as z:
                    idx = {key: z[key] for key in ("ids", "offsets", "counts", "token")}
            except (OSError, ValueError, KeyError) as e:
                raise ProposalFormatError(
                    f"proposal shard index {index_path!r} (named by {manifest!r}) cannot be read: "
                    f"{e}; run the proposals stage again") from None
            if str(idx["token"]) != s["token"] or len(idx["ids"]) != s["images"] or int(idx["counts"].sum()) != s["rows"]:
                raise ProposalFormatError(
                    f"proposal shard {index_path!r} does not match {manifest!r} (another run's "
                    f"shard: token {str(idx['token'])!r}, manifest {s['token']!r}); run the "
                    "proposals stage again")
            ids.append(idx["ids"])
            shard_of.append(np.full(len(idx["ids"]), k, np.int32))
            offsets.append(idx["offsets"])
            counts.append(idx["counts"])
        self._rows_expected = [s["rows"] for s in m["shards"]]
        all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        if all_ids.dtype.kind not in "iu":
            all_ids = all_ids.astype(str)
        self._ids_in_order = all_ids  # shard order, write order (the classic pickle's order)
        order = np.argsort(all_ids, kind="stable")
        self._sorted_ids = all_ids[order]
        self._shard = np.concatenate(shard_of)[order] if ids else np.zeros(0, np.int32)
        self._offset = np.concatenate(offsets)[order] if ids else np.zeros(0, np.int64)
        self._count = np.concatenate(counts)[order] if ids else np.zeros(0, np.int64)
        self._maps: Dict[int, np.ndarray] = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self._sorted_ids)

    @property
    def ids(self) -> List[Any]:
        """The image ids, in the shards' order."""
        return self._ids_in_order.tolist()

    @property
    def index_nbytes(self) -> int:
        """Bytes of the index this object holds (what a process keeps besides mapped pages)."""
        return sum(a.nbytes for a in (self._ids_in_order, self._sorted_ids, self._shard, self._offset, self._count))

    def _find(self, image_id) -> int:
        if self._sorted_ids.dtype.kind in "iu":
            try:
                key = int(image_id)
            except (TypeError, ValueError):
                return -1
            if str(key) != str(image_id):  # detectron2 matches str(id): "07" is not 7
                return -1
        else:
            key = str(image_id)
        i = int(np.searchsorted(self._sorted_ids, key))
        return i if i < len(self._sorted_ids) and self._sorted_ids[i] == key else -1

    def __contains__(self, image_id) -> bool:
        return self._find(image_id) >= 0

    def _map(self, k: int) -> np.ndarray:
        if self._pid != os.getpid():  # a forked process maps the files itself
            self._maps, self._pid = {}, os.getpid()
        if k not in self._maps:
            path = os.path.join(self.directory, self.shards[k])
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise ProposalFormatError(f"proposal shard {path!r} (named by {self.manifest_path!r}) "
                                          f"cannot be read: {e}; run the proposals stage again") from None
            if arr.dtype != _DTYPE or arr.ndim != 2 or arr.shape != (self._rows_expected[k], len(ROW)):
                raise ProposalFormatError(
                    f"proposal shard {path!r} holds {arr.dtype} {arr.shape}, the manifest "
                    f"{self.manifest_path!r} says float32 ({self._rows_expected[k]}, {len(ROW)}); "
                    "run the proposals stage again")
            self._maps[k] = arr
        return self._maps[k]

    def verify(self) -> None:
        """Open every shard (its header, not its rows): each is there with the manifest's shape.

        Raises:
            ProposalFormatError: naming the shard that is missing or does not match.
        """
        for k in range(len(self.shards)):
            self._map(k)

    def get(self, image_id) -> Tuple[np.ndarray, np.ndarray]:
        """``(boxes (N, 4), logits (N,))`` of one image, float32 copies, in the written order.

        Raises:
            KeyError: naming the id and the manifest, when the image has no proposals.
        """
        i = self._find(image_id)
        if i < 0:
            raise KeyError(f"image id {image_id!r} has no proposals in {self.manifest_path!r} "
                           f"({len(self)} images of {self.dataset or 'its dataset'}); recompute the "
                           "proposals for this dataset")
        start = int(self._offset[i])
        rows = np.array(self._map(int(self._shard[i]))[start:start + int(self._count[i])])
        return rows[:, :4], rows[:, 4]

    def to_detectron2_dict(self) -> Dict[str, Any]:
        """Everything as detectron2's proposal-file dict (``ids``, ``boxes``,
        ``objectness_logits``, ``bbox_mode``), images in the shards' order. Holds it all."""
        boxes, logits = [], []
        for image_id in self.ids:
            b, s = self.get(image_id)
            boxes.append(np.ascontiguousarray(b))
            logits.append(np.ascontiguousarray(s))
        return {"ids": self.ids, "boxes": boxes, "objectness_logits": logits,
                "bbox_mode": int(self.bbox_mode)}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maps"], state["_pid"] = {}, None
        return state


def write_detectron2_proposals(data: dict, path: str) -> str:
    """Write a detectron2 proposal file (``ids``, ``boxes``, ``objectness_logits``,
    ``bbox_mode``: what ``detectron2.data.build.load_proposals_into_dataset`` reads), atomically:
    the one writer of that format. Returns ``path``.

    Args:
        data: the proposal dict.
        path: the ``.pkl`` to write.
    """
    with atomic_open(path, "wb") as f:
        pickle.dump(data, f, pickle.HIGHEST_PROTOCOL)
    return path


def export_detectron2_pickle(manifest: str, path: str) -> str:
    """Write detectron2's classic proposal ``.pkl`` (what ``DATASETS.PROPOSAL_FILES_*`` held
    before shards) from a manifest's shards, atomically. Returns ``path``."""
    return write_detectron2_proposals(ProposalStore(manifest).to_detectron2_dict(), path)


class ProposalMapper:
    """A mapper that first attaches an image's precomputed proposals to its dataset dict, then
    calls ``mapper`` (detectron2's ``DatasetMapper`` built with ``precomputed_proposal_topk``),
    whose ``transform_proposals`` resizes, flips, clips and keeps the top k as always.

    The keys and their order are those detectron2's ``load_proposals_into_dataset`` gives
    (``proposal_boxes``, ``proposal_objectness_logits`` sorted by descending logit,
    ``proposal_bbox_mode``), so a batch equals the pickle path's. The dataset's own dict is not
    changed (a shallow copy gets the arrays), so the dataset list never grows.

    Args:
        mapper: the mapper to call.
        stores: the datasets' proposal stores; an image's proposals come from the first that
            holds its id (the loaders check that the datasets' ids do not overlap).
    """

    def __init__(self, mapper, stores: Iterable[ProposalStore]):
        self.mapper = mapper
        self.stores = list(stores)

    def attach(self, dataset_dict: dict) -> dict:
        """A shallow copy of ``dataset_dict`` with its proposals."""
        image_id = dataset_dict["image_id"]
        for store in self.stores:
            if image_id in store:
                boxes, logits = store.get(image_id)
                break
        else:
            raise KeyError(f"image id {image_id!r} ({dataset_dict.get('file_name', '')!r}) has no "
                           f"proposals in {[s.manifest_path for s in self.stores]}; recompute them")
        # detectron2's order: argsort()[::-1] of the logits (load_proposals_into_dataset)
        inds = logits.argsort()[::-1]
        out = dict(dataset_dict)
        out["proposal_boxes"] = boxes[inds]
        out["proposal_objectness_logits"] = logits[inds]
        out["proposal_bbox_mode"] = store.bbox_mode
        return out

    def __call__(self, dataset_dict: dict):
        return self.mapper(self.attach(dataset_dict))


def stores_for(files: Sequence[str], datasets: Sequence[str]) -> Optional[List[ProposalStore]]:
    """The :class:`ProposalStore` of each manifest in ``files`` (one per dataset), or None
    when they are all detectron2 pickles (detectron2 loads those itself).

    Raises:
        ProposalFormatError: a mix of manifests and pickles, or two datasets sharing an
            image id (the mapper finds an image's proposals by its id alone).
    """
    kinds = [is_proposal_manifest(f) for f in files]
    if not any(kinds):
        return None
    if not all(kinds):
        raise ProposalFormatError(
            f"proposal files {list(files)} mix shard manifests and detectron2 pickles; give one "
            "kind for all datasets (export_detectron2_pickle converts a manifest)")
    stores = [ProposalStore(f) for f in files]
    if len(stores) > 1:
        ids = [s._sorted_ids if s._sorted_ids.dtype.kind in "iu" else s._sorted_ids.astype(str) for s in stores]
        if any(a.dtype.kind not in "iu" for a in ids):
            ids = [a.astype(str) for a in ids]  # detectron2 compares str(id)
        owner = np.concatenate([np.full(len(a), k) for k, a in enumerate(ids)])
        allids = np.concatenate(ids)
        order = np.argsort(allids, kind="stable")
        dup = np.flatnonzero(allids[order][1:] == allids[order][:-1])
        if len(dup):
            a, b = order[dup[0]], order[dup[0] + 1]
            raise ProposalFormatError(
                f"image id {allids[a].item()!r} is in the proposals of both {datasets[owner[a]]!r} and "
                f"{datasets[owner[b]]!r}; shard manifests need datasets with distinct image ids "
                "(or export them to detectron2 pickles with export_detectron2_pickle)")
    return stores
