"""Saved ``/proc/cpuinfo`` files, one per CPU kind (tests/data_files/cpuinfo/): the machines the
kind tests and the measured-choice tests stand on."""
from pathlib import Path

from resnext_det.hardware import CpuFeatures

FOLDER = Path(__file__).resolve().parent / "data_files" / "cpuinfo"
#: kind -> the saved cpuinfo of a machine of that kind
SAVED = {
    "amx": FOLDER / "amx-xeon-sapphire-rapids.txt",
    "avx512_bf16": FOLDER / "avx512_bf16-epyc-zen4.txt",
    "avx512": FOLDER / "avx512-xeon-skylake.txt",
    "avx2": FOLDER / "avx2-epyc-zen2.txt",
    "other": FOLDER / "other-aarch64-neoverse-n1.txt",
}


def features(kind: str) -> CpuFeatures:
    """The features read from the saved cpuinfo of a ``kind`` machine."""
    return CpuFeatures.detect(str(SAVED[kind]))
