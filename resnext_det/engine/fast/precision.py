"""Precision names, the CPU's native bf16 support, and the autocast context for training."""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Optional

import torch

from ...config import ResNeXtConfigError

__all__ = ["PRECISIONS", "cpu_has_native_bf16", "autocast_dtype", "check_autocast_train", "training_autocast",
           "warn_if_bf16_is_slow"]

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """True when oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX)."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if probe is not None:
        with contextlib.suppress(Exception):  # very old/odd builds: the CPU capability decides
            return bool(probe())
    cap = torch.backends.cpu.get_cpu_capability()
    return "AMX" in cap or "BF16" in cap


def autocast_dtype(precision: str, device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype of a precision name on a device type; None means fp32. fp16 is refused
    on CPU (oneDNN has no fp16 conv there worth using)."""
    if precision not in PRECISIONS:
        raise ResNeXtConfigError(f"MODEL.RESNEXT.FAST.PRECISION={precision!r} is not valid; use one of {PRECISIONS}")
    if precision == "fp16" and device_type == "cpu":
        raise ResNeXtConfigError(
            "MODEL.RESNEXT.FAST.PRECISION='fp16' is not valid on CPU; use 'bf16' on CPU "
            "(fp16 or bf16 on CUDA) or 'fp32'"
        )
    return _DTYPES[precision]


def warn_if_bf16_is_slow(dtype: Optional[torch.dtype], device_type: str, what: str) -> None:
    """Warn, naming the setting ``what``, when bf16 is asked for on a CPU without native bf16
    (oneDNN's reference kernels there are several times slower than fp32)."""
    if dtype == torch.bfloat16 and device_type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            f"{what}: this CPU has no native bf16 (AVX512-BF16/AMX); oneDNN falls back to "
            "reference kernels and bf16 will be much SLOWER than fp32 here. Use fp32 on this machine.",
            RuntimeWarning, stacklevel=3,
        )


def check_autocast_train(value: str, device_type: str) -> str:
    """``MODEL.RESNEXT.FAST.AUTOCAST_TRAIN`` checked: "" or "bf16" (off for "" / "fp32"). It is for
    bf16 on CPU, which detectron2's CUDA-only ``SOLVER.AMP`` cannot do; fp16 or any value on
    CUDA is refused, naming ``SOLVER.AMP.ENABLED``."""
    if value in ("", "fp32"):
        return ""
    if value == "fp16" or (value in PRECISIONS and device_type != "cpu"):
        raise ResNeXtConfigError(
            f"MODEL.RESNEXT.FAST.AUTOCAST_TRAIN={value!r} on {device_type}: mixed-precision training "
            "there is detectron2's SOLVER.AMP.ENABLED True (AMPTrainer: fp16 autocast with a grad "
            "scaler, CUDA); set that and leave AUTOCAST_TRAIN '' (AUTOCAST_TRAIN 'bf16' is for CPU "
            "training only)")
    if value != "bf16":
        raise ResNeXtConfigError(f"MODEL.RESNEXT.FAST.AUTOCAST_TRAIN={value!r} is not valid; use '' (off) or 'bf16' (CPU)")
    return value


@contextlib.contextmanager
def training_autocast(cfg=None, device_type: str = "cpu", precision: Optional[str] = None) -> Iterator[None]:
    """Autocast a whole ``model(data)`` call (heads too, unlike
    :func:`~resnext_det.engine.fast.apply_training_switches`; losses stay fp32) at
    ``MODEL.RESNEXT.FAST.AUTOCAST_TRAIN`` or ``precision``; a no-op for "" / "fp32"."""
    if precision is None:
        value = str(cfg.MODEL.RESNEXT.FAST.AUTOCAST_TRAIN) if cfg is not None else ""
        precision = check_autocast_train(value, device_type)
    dtype = autocast_dtype(precision or "fp32", device_type)
    with contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device_type, dtype=dtype):
        yield
