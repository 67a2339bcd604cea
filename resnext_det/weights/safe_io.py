"""Reading weight files without running what is inside them (docs/WEIGHTS.md, "Safety"): a pickle
may call any Python function, so torch files load with ``weights_only=True`` and ``.pkl`` files go
through :class:`RestrictedUnpickler`, which refuses any other global *before* it is called;
``.safetensors`` and Torch7 ``.t7`` are data only. The format is sniffed from the first bytes.
"""
from __future__ import annotations

import builtins
import collections
import importlib
import os
import pickle
import re
import struct
from typing import Any

import numpy as np
import torch
import torchfile
from safetensors.torch import load_file as load_safetensors

from ..config import UserInputError

__all__ = ["WeightsError", "ForbiddenGlobalError", "RestrictedUnpickler", "sniff_format", "safe_load",
           "load_restricted_pickle"]

SUPPORTED = ("torchvision/timm state dicts (.pth/.pt, plain or wrapped; timm .safetensors), "
             "Caffe2/Detectron ImageNet .pkl (blob names like res2_0_branch2a_w), "
             "detectron2 checkpoints (.pkl with __author__, .pth with 'model'), "
             "Torch7 models (.t7, fb.resnet.torch / facebookresearch/ResNeXt layout)")


class WeightsError(UserInputError, ValueError):
    """A weights file that cannot be used. The message names the file and what would work."""


class ForbiddenGlobalError(WeightsError):
    """A pickle (``.pkl`` or torch file) asked for a global outside the allow-list; it was not called."""

    def __init__(self, path: str, module: str, name: str):
        self.path, self.module, self.name = path, module, name
        super().__init__(f"{path}: refused to load: the file asks for the global '{module}.{name}', which a "
                         "weights file never needs (only tensors, numpy arrays and dtypes, and builtin "
                         "containers and numbers are admitted); nothing from the file was executed. If you "
                         "created this file yourself, re-save the weights as a plain state dict of tensors "
                         "(torch.save(model.state_dict(), path)) or of numpy arrays (.pkl).")


def _np_core(sub: str):
    # numpy >= 2 moved numpy.core to numpy._core; pickles from numpy 1.x name the old path.
    try:
        return importlib.import_module(f"numpy._core.{sub}")
    except ImportError:  # numpy 1.x
        return importlib.import_module(f"numpy.core.{sub}")


def _latin1_encode(obj, encoding="latin1", errors="strict"):
    # Protocol-2 pickles of bytes (numpy buffers) call _codecs.encode(str, 'latin1'): only that is admitted
    if encoding not in ("latin1", "latin-1", "iso-8859-1") or not isinstance(obj, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return obj.encode("latin1", errors)


def _allowed_globals():
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _latin1_encode, ("collections", "OrderedDict"): collections.OrderedDict}
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = _np_core("multiarray")._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = _np_core("multiarray").scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = _np_core("numeric")._frombuffer
    for mod in ("builtins", "__builtin__"):
        for name in ("set", "frozenset", "bytearray", "complex", "int", "float", "bool", "str",
                     "bytes", "list", "tuple", "dict", "slice"):
            allowed[(mod, name)] = getattr(builtins, name)
    return allowed


_ALLOWED = None


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only an allow-list of globals (numpy arrays/dtypes, builtins). Every
    callable a pickle can invoke is first looked up by :meth:`find_class`: refused there, it never runs."""

    def __init__(self, file, path: str = "<stream>"):
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module, name):
        global _ALLOWED
        if _ALLOWED is None:
            _ALLOWED = _allowed_globals()
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ForbiddenGlobalError(self._path, module, name) from None

    def persistent_load(self, pid):
        raise WeightsError(f"{self._path}: refused to unpickle: the file uses persistent ids ({pid!r}), "
                           "which plain weight pickles never do (torch files must be read with torch.load)")


# The first object of a legacy (non-zip) torch.save file: torch's magic number.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def sniff_format(path: str) -> str:
    """The container format of ``path`` from its first bytes: ``"torch-zip"``, ``"pickle"``,
    ``"safetensors"`` or ``"torch7"`` (WeightsError: missing, empty or unrecognised file)."""
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such file")
    size = os.path.getsize(path)
    if size == 0:
        raise WeightsError(f"{path}: the file is empty (0 bytes); expected one of: {SUPPORTED}")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head[:1] == b"\x80":  # pickle protocol >= 2 (also legacy torch.save files)
        return "pickle"
    if head[8:9] == b"{" and 8 + struct.unpack("<Q", head[:8])[0] <= size:  # u64 length, then a JSON header
        return "safetensors"
    if len(head) >= 8 and struct.unpack("<ii", head[:8]) in ((3, 1), (4, 1)):  # Torch7: table/torch obj #1
        return "torch7"
    if path.endswith(".pkl") and head[:1] in (b"(", b"}", b"]", b"c"):  # protocol 0/1 pickles
        return "pickle"
    raise WeightsError(f"{path}: not a checkpoint this project can read (starts with {head[:8]!r}); "
                       f"expected one of: {SUPPORTED}")


def _truncated(path: str, err: Exception, remedy: str = "download or convert it again") -> WeightsError:
    return WeightsError(f"{path}: the file is truncated or corrupted ({type(err).__name__}: {err}); {remedy}")


def _torch_safe_globals():
    # the .pkl allow-list; anything else is refused by torch's weights-only unpickler before it is called
    allowed = [fn for (module, _), fn in _allowed_globals().items() if module != "_codecs"]
    allowed += [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int8, np.int16,
                                             np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)]
    return allowed


def _torch_load(path: str):
    try:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # Refused before anything ran. Report it in the project's own message, naming the
        # global: torch's own text advises weights_only=False, the opposite of a safe loader.
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))
        if refused:
            module, _, name = refused.group(1).rpartition(".")
            raise ForbiddenGlobalError(path, module, name) from None
        raise WeightsError(f"{path}: refused to load: the file holds objects a weights file never needs; "
                           "nothing from the file was executed. Re-save the weights as a plain state dict "
                           "of tensors.") from None
    except Exception as e:  # RuntimeError, EOFError, zip/safetensors errors ...: a damaged file
        raise _truncated(path, e) from None


def load_restricted_pickle(path: str, unpickler: type = RestrictedUnpickler,
                           remedy: str = "download or convert it again"):
    """A pickle file read by ``unpickler`` (:class:`RestrictedUnpickler` or a subclass admitting a few
    more globals). WeightsError: a refused global, or a damaged file (the message ends with ``remedy``)."""
    with open(path, "rb") as f:
        try:
            return unpickler(f, path).load()
        except WeightsError:
            raise
        except Exception as e:  # EOFError, UnpicklingError, bad opcodes/arguments ...: damaged file
            raise _truncated(path, e, remedy) from None


def safe_load(path: str) -> Any:
    """The object stored in a weights file (a dict, or a ``torchfile`` object for Torch7), loaded
    without executing anything from it. WeightsError: empty, truncated, unrecognised or unsafe file."""
    fmt = sniff_format(path)
    if fmt == "torch-zip":
        return _torch_load(path)
    if fmt in ("safetensors", "torch7"):
        try:
            return torchfile.load(path) if fmt == "torch7" else dict(load_safetensors(path, device="cpu"))
        except Exception as e:  # SafetensorError; struct.error, EOFError, T7ReaderException ...: damaged file
            raise _truncated(path, e) from None
    obj = load_restricted_pickle(path)
    if isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC:  # legacy torch.save (non-zip)
        return _torch_load(path)
    return obj
