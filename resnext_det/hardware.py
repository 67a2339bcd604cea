"""What CPU this is, in the kinds every speed figure is filed under (``benchmarks/<kind>/``) and every
measured choice looks up: kernels differ by kind (AVX2 has no native bf16, AMX multiplies bf16 and int8
several times faster than AVX-512). The one place that names kinds; no torch import, so every layer may use it.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import platform
from typing import FrozenSet, Optional

__all__ = ["CPU_KINDS", "CpuFeatures", "cpuinfo_field", "read_cpu_flags", "cpu_kind", "available_cores",
           "synchronize"]

#: the kinds, most capable first (AVX-512 with AMX, with native bf16, without; AVX2; anything else)
CPU_KINDS = ("amx", "avx512_bf16", "avx512", "avx2", "other")


def cpuinfo_field(prefixes, cpuinfo: str = "/proc/cpuinfo") -> Optional[str]:
    """The value of ``cpuinfo``'s first line starting with ``prefixes`` (a str or tuple); None without one."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith(prefixes):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return None


def read_cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> FrozenSet[str]:
    """The CPU flags of ``cpuinfo`` (x86 ``flags`` or Arm ``Features`` line; empty without one)."""
    return frozenset((cpuinfo_field(("flags", "Features"), cpuinfo) or "").split())


@dataclasses.dataclass(frozen=True)
class CpuFeatures:
    """The CPU flags that decide kernels and layouts (Linux ``/proc/cpuinfo`` flag names)."""

    avx2: bool = False
    avx512f: bool = False
    avx512_bf16: bool = False
    avx512_vnni: bool = False
    amx: bool = False

    @classmethod
    def from_flags(cls, flags) -> "CpuFeatures":
        flags = set(flags)
        return cls(avx2="avx2" in flags, avx512f="avx512f" in flags, avx512_bf16="avx512_bf16" in flags,
                   avx512_vnni="avx512_vnni" in flags, amx=any(f.startswith("amx") for f in flags))

    @classmethod
    def detect(cls, cpuinfo: str = "/proc/cpuinfo") -> "CpuFeatures":
        """This machine's features: ``cpuinfo``, else torch's dispatch capability."""
        flags = read_cpu_flags(cpuinfo)
        if flags:
            return cls.from_flags(flags)
        try:  # not Linux: torch knows the vector ISA it dispatches to
            import torch

            cap = torch.backends.cpu.get_cpu_capability()
        except Exception:  # no torch, or no such API
            return cls()
        return cls(avx2=cap in ("AVX2", "AVX512") or "AMX" in cap, avx512f=cap.startswith("AVX512"),
                   avx512_bf16="BF16" in cap or "AMX" in cap, amx="AMX" in cap)

    @property
    def native_bf16(self) -> bool:
        return self.avx512_bf16 or self.amx

    @property
    def kind(self) -> str:
        """One of :data:`CPU_KINDS`."""
        if self.avx512f and self.amx:
            return "amx"
        if self.avx512f and self.native_bf16:
            return "avx512_bf16"
        if self.avx512f:
            return "avx512"
        if self.avx2:
            return "avx2"
        return "other"

    def describe(self) -> str:
        """The flags that are set, space separated (what records and log lines print)."""
        names = [f.name for f in dataclasses.fields(self) if getattr(self, f.name)]
        return " ".join(names) or "no AVX2"


def cpu_kind(features: Optional[CpuFeatures] = None) -> str:
    """The kind of this machine's CPU (or of ``features``), one of :data:`CPU_KINDS`. ``RESNEXT_DET_CPU_KIND``
    overrides the detection: for a CPU whose kernels are capped (e.g. ``ONEDNN_MAX_CPU_ISA=AVX2`` on an
    AVX-512 machine) or to test another kind's branch."""
    forced = os.environ.get("RESNEXT_DET_CPU_KIND", "").strip()
    if forced:
        if forced not in CPU_KINDS:
            raise ValueError(f"RESNEXT_DET_CPU_KIND={forced!r} is not a CPU kind; use one of "
                             f"{', '.join(CPU_KINDS)}")
        return forced
    if features is None:
        if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
            return "other"
        features = CpuFeatures.detect()
    return features.kind


def synchronize(device) -> None:
    """Wait until ``device`` (a ``torch.device`` or name) has finished its queued work (CUDA only)."""
    if str(getattr(device, "type", device)).split(":")[0] == "cuda":
        import torch  # only here: this module stays importable without torch

        torch.cuda.synchronize(device)


def _cgroup_cpu_limit(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> Optional[int]:
    """The cgroup v2 CPU quota in whole CPUs (rounded up), None when unlimited or unknown."""
    try:
        quota, period = pathlib.Path(cpu_max).read_text().split()[:2]
        return None if quota == "max" else max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError, ZeroDivisionError):
        return None


def available_cores(cpus=None, sysfs: str = "/sys/devices/system/cpu",
                    cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """Physical cores among ``cpus`` (default: this process's affinity set), hyper-threads of one
    core counted once, capped by the cgroup CPU quota: the inference runtimes' thread count
    (threads sharing a core wait on each other)."""
    if cpus is None:
        try:
            cpus = os.sched_getaffinity(0)
        except AttributeError:  # not Linux
            cpus = range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = pathlib.Path(sysfs, f"cpu{cpu}", "topology")
        try:
            cores.add(tuple((topology / f).read_text().strip() for f in ("physical_package_id", "core_id")))
        except OSError:  # no topology: every logical CPU is a core
            cores.add(("cpu", cpu))
    n = max(1, len(cores))
    limit = _cgroup_cpu_limit(cpu_max)
    return min(n, limit) if limit else n
