"""Precomputed proposals in shards read by offset, so memory does not grow with the dataset
(detectron2's one pickle of every image's boxes is held whole by every process): :class:`ShardWriter`,
:func:`write_manifest`, :class:`ProposalStore`, :class:`ProposalMapper`. Layout, why float32: docs/SCALE.md.
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

__all__ = ["MANIFEST_FORMAT", "ProposalFormatError", "ShardWriter", "write_manifest",
           "write_proposal_shards", "is_proposal_manifest", "ProposalStore", "ProposalMapper",
           "export_detectron2_pickle", "write_detectron2_proposals", "stores_for"]

MANIFEST_FORMAT = "resnext_det/proposal-shards/1"
MANIFEST_NAME = "manifest.json"
ROW = ("x0", "y0", "x1", "y1", "objectness_logit")
_DTYPE = np.dtype("<f4")
# room reserved for the .npy header, written last (the row count is known only at the end);
# numpy's own header writer pads to a multiple of 64 bytes, so any (N, 5) shape takes 128
_HEADER_BYTES = 128
_SHARD_RE = re.compile(r"^shard-\d+-of-\d+-[0-9a-f]+\.(npy|index\.npz)$")


class ProposalFormatError(DatasetError):
    """A proposal manifest or shard that cannot be used; the message names the file and a fix."""


class ShardWriter:
    """Streams one worker's proposals into its shard in ``directory`` (constant memory): rows go to a
    temporary file; :meth:`close` writes the header and index and renames both into place; an exception
    or :meth:`abort` removes it (a kill leaves a hidden ``.*.tmp``)."""

    def __init__(self, directory: str, rank: int = 0, world_size: int = 1):
        self.token = uuid.uuid4().hex[:12]
        self.name = f"shard-{rank:05d}-of-{world_size:05d}-{self.token}"
        self.data_path = os.path.join(directory, self.name + ".npy")
        self.index_path = os.path.join(directory, self.name + ".index.npz")
        self._ids: List[Any] = []
        self._counts: List[int] = []
        self._stack = contextlib.ExitStack()
        self._file = self._stack.enter_context(atomic_open(self.data_path, "wb"))
        self._file.write(b"\0" * _HEADER_BYTES)

    def add(self, image_id, boxes, logits) -> None:
        """Append one image's proposals: boxes (N, 4) ``XYXY_ABS``, logits (N,)."""
        boxes = np.asarray(boxes, dtype=_DTYPE).reshape(-1, 4)
        logits = np.asarray(logits, dtype=_DTYPE).reshape(-1)
        if len(boxes) != len(logits):
            raise ProposalFormatError(f"image {image_id!r}: {len(boxes)} boxes but {len(logits)} logits")
        self._file.write(np.concatenate([boxes, logits[:, None]], axis=1).tobytes())
        self._ids.append(image_id)
        self._counts.append(len(boxes))

    def close(self) -> Dict[str, Any]:
        """Finish the shard (header, index, renames); returns its manifest entry."""
        rows = sum(self._counts)
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": np.lib.format.dtype_to_descr(_DTYPE), "fortran_order": False,
                     "shape": (rows, len(ROW))})
        if len(header.getvalue()) != _HEADER_BYTES:  # (only for shapes beyond any dataset)
            self.abort()
            raise ProposalFormatError(f"{self.data_path}: .npy header of {len(header.getvalue())} "
                                      f"bytes for {rows} rows does not fit {_HEADER_BYTES}")
        self._file.seek(0)
        self._file.write(header.getvalue())
        self._stack.close()  # fsync + rename: the data file is complete
        counts = np.asarray(self._counts, np.int64)
        with atomic_open(self.index_path, "wb") as f:
            np.savez(f, ids=_id_array(self._ids), offsets=np.cumsum(counts) - counts, counts=counts,
                     token=np.asarray(self.token))
        return {"data": os.path.basename(self.data_path), "index": os.path.basename(self.index_path),
                "token": self.token, "images": len(self._ids), "rows": rows,
                "bytes": os.path.getsize(self.data_path)}

    def abort(self) -> None:
        self._stack.__exit__(RuntimeError, RuntimeError("shard aborted"), None)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()


def _id_array(ids: Sequence[Any]) -> np.ndarray:
    # int ids as int64; anything else as text (detectron2 compares str(id))
    if all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
        return np.asarray(ids, np.int64).reshape(-1)
    return np.asarray([str(i) for i in ids], dtype=str).reshape(-1)


def write_manifest(directory: str, shards: Sequence[Dict[str, Any]], *, dataset: str = "",
                   bbox_mode: int = int(BoxMode.XYXY_ABS), remove_stale: bool = True) -> str:
    """Write ``directory/manifest.json`` naming ``shards`` (:meth:`ShardWriter.close`'s entries, in
    rank order) and, with ``remove_stale``, delete the ``shard-*`` files it does not name; returns its path."""
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
    """A dataset's proposals written in one process as ``num_shards`` contiguous shards and a
    manifest (conversions, tests); returns the manifest's path."""
    bounds = np.linspace(0, len(ids), num_shards + 1).astype(int)
    entries = []
    for k in range(num_shards):
        with ShardWriter(directory, k, num_shards) as w:
            for j in range(bounds[k], bounds[k + 1]):
                w.add(ids[j], boxes[j], logits[j])
            entries.append(w.close())
    return write_manifest(directory, entries, dataset=dataset, bbox_mode=bbox_mode)


def is_proposal_manifest(path: str) -> bool:
    """Whether ``path`` is a shard manifest (JSON, by its first byte) rather than a pickle."""
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
    except OSError:
        return False
    return head.startswith(b"{")


class ProposalStore:
    """The proposals of a manifest, read by image id from shards memory-mapped on first use in
    each process (picklable without the mappings); holds only the indexes.
    :class:`ProposalFormatError` names a missing, foreign or mismatched file."""

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
        ids, offsets, counts = [], [], []
        for s in m["shards"]:
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
            offsets.append(idx["offsets"])
            counts.append(idx["counts"])
        self._rows_expected = [s["rows"] for s in m["shards"]]
        all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        if all_ids.dtype.kind not in "iu":
            all_ids = all_ids.astype(str)
        self._ids_in_order = all_ids  # shard order, write order (the classic pickle's order)
        order = np.argsort(all_ids, kind="stable")
        self._sorted_ids = all_ids[order]
        self._shard = np.repeat(np.arange(len(ids), dtype=np.int32), [len(a) for a in ids])[order]
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
        """Bytes of the index this object holds."""
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
        """Open every shard's header: each is there with the manifest's shape."""
        for k in range(len(self.shards)):
            self._map(k)

    def get(self, image_id) -> Tuple[np.ndarray, np.ndarray]:
        """``(boxes (N, 4), logits (N,))`` of one image, float32 copies (KeyError if it has none)."""
        i = self._find(image_id)
        if i < 0:
            raise KeyError(f"image id {image_id!r} has no proposals in {self.manifest_path!r} "
                           f"({len(self)} images of {self.dataset or 'its dataset'}); recompute the "
                           "proposals for this dataset")
        start = int(self._offset[i])
        rows = np.array(self._map(int(self._shard[i]))[start:start + int(self._count[i])])
        return rows[:, :4], rows[:, 4]

    def to_detectron2_dict(self) -> Dict[str, Any]:
        """Everything as detectron2's proposal-file dict, in the shards' order (all in memory)."""
        rows = [self.get(image_id) for image_id in self.ids]
        return {"ids": self.ids, "boxes": [np.ascontiguousarray(b) for b, _ in rows],
                "objectness_logits": [np.ascontiguousarray(s) for _, s in rows],
                "bbox_mode": int(self.bbox_mode)}

    def __getstate__(self):
        return dict(self.__dict__, _maps={}, _pid=None)


def write_detectron2_proposals(data: dict, path: str) -> str:
    """Write a detectron2 proposal dict (``ids``, ``boxes``, ``objectness_logits``, ``bbox_mode``)
    to ``path`` atomically: the one writer of that format. Returns ``path``."""
    with atomic_open(path, "wb") as f:
        pickle.dump(data, f, pickle.HIGHEST_PROTOCOL)
    return path


def export_detectron2_pickle(manifest: str, path: str) -> str:
    """Write detectron2's proposal ``.pkl`` from a manifest's shards, atomically. Returns ``path``."""
    return write_detectron2_proposals(ProposalStore(manifest).to_detectron2_dict(), path)


class ProposalMapper:
    """Attaches an image's proposals (from the first of ``stores`` holding its id) to a shallow
    copy of its dataset dict, as detectron2's ``load_proposals_into_dataset`` would (same keys,
    sorted by descending logit), then calls ``mapper`` (detectron2's ``DatasetMapper``)."""

    def __init__(self, mapper, stores: Iterable[ProposalStore]):
        self.mapper = mapper
        self.stores = list(stores)

    def attach(self, dataset_dict: dict) -> dict:
        image_id = dataset_dict["image_id"]
        for store in self.stores:
            if image_id in store:
                boxes, logits = store.get(image_id)
                break
        else:
            raise KeyError(f"image id {image_id!r} ({dataset_dict.get('file_name', '')!r}) has no "
                           f"proposals in {[s.manifest_path for s in self.stores]}; recompute them")
        inds = logits.argsort()[::-1]
        return dict(dataset_dict, proposal_boxes=boxes[inds], proposal_objectness_logits=logits[inds],
                    proposal_bbox_mode=store.bbox_mode)

    def __call__(self, dataset_dict: dict):
        return self.mapper(self.attach(dataset_dict))


def stores_for(files: Sequence[str], datasets: Sequence[str]) -> Optional[List[ProposalStore]]:
    """The :class:`ProposalStore` of each manifest in ``files`` (one per dataset), or None when
    all are pickles. Refuses a mix, and datasets sharing an image id (found by id alone)."""
    kinds = [is_proposal_manifest(f) for f in files]
    if not any(kinds):
        return None
    if not all(kinds):
        raise ProposalFormatError(
            f"proposal files {list(files)} mix shard manifests and detectron2 pickles; give one "
            "kind for all datasets (export_detectron2_pickle converts a manifest)")
    stores = [ProposalStore(f) for f in files]
    if len(stores) > 1:
        ids = [s._sorted_ids for s in stores]  # int64, or str (ProposalStore converts other ids)
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
