"""Kill-safe file writes: a temporary file renamed into place (``os.replace`` is atomic on POSIX),
so a killed process leaves the old file or the complete new one."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import IO, Any, Iterator

__all__ = ["atomic_open", "atomic_write_json", "AtomicPathManager", "make_atomic", "file_lock"]


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", **kwargs) -> Iterator[IO[Any]]:
    """Like ``open(path, mode)`` for writing (append modes refused), but the file appears only when
    complete."""
    if "a" in mode or "+" in mode or not ("w" in mode or "x" in mode):
        raise ValueError(f"atomic_open supports plain write modes, got {mode!r}")
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    # mkstemp makes the file private (0600); the result gets the permissions open() would give
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    try:
        with os.fdopen(fd, mode.replace("x", "w"), **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # make the rename itself durable
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str, obj: Any, **dump_kwargs) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, **dump_kwargs)


class AtomicPathManager:
    """Wraps an iopath ``PathManager``: local writes become atomic, everything else is delegated."""

    def __init__(self, inner):
        self._inner = inner

    def open(self, path: str, mode: str = "r", **kwargs):
        is_local = "://" not in str(path)
        if is_local and ("w" in mode or "x" in mode) and "a" not in mode and "+" not in mode:
            return atomic_open(path, mode, **kwargs)
        return self._inner.open(path, mode, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def make_atomic(checkpointer):
    """Make a ``Checkpointer``'s saves and its ``last_checkpoint`` tag atomic (both go through its
    ``path_manager``, swapped for an :class:`AtomicPathManager`). Returns the checkpointer."""
    if not isinstance(checkpointer.path_manager, AtomicPathManager):
        checkpointer.path_manager = AtomicPathManager(checkpointer.path_manager)
    return checkpointer


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` (created if missing) while the block runs, so
    processes preparing the same files take turns (works on NFS; released if the process dies)."""
    import fcntl  # POSIX only, as detectron2's training

    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
