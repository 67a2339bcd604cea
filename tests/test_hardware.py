"""resnext_det.hardware: the CPU kind every record and measured rule is filed under."""
import pytest
from saved_cpuinfo import SAVED, features

from resnext_det.hardware import CPU_KINDS, CpuFeatures, cpu_kind, read_cpu_flags


@pytest.mark.parametrize("flags, kind", [
    ({"avx2", "fma"}, "avx2"),
    ({"avx2", "avx512f", "avx512_vnni"}, "avx512"),
    ({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}, "avx512_bf16"),
    ({"avx2", "avx512f", "amx_tile", "amx_bf16"}, "amx"),
    ({"avx2", "amx_tile", "amx_bf16"}, "avx2"),  # AMX counts only with AVX-512
    ({"sse4_2"}, "other"),
])
def test_kind_from_flags(flags, kind):
    assert cpu_kind(CpuFeatures.from_flags(flags)) == kind


def test_every_kind_has_a_saved_cpuinfo():
    assert set(SAVED) == set(CPU_KINDS) and all(p.is_file() for p in SAVED.values())


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_kind_of_a_saved_cpuinfo(kind):
    f = features(kind)
    assert f.kind == kind and cpu_kind(f) == kind
    # AMX (Sapphire Rapids) also has avx512_bf16: its own kind all the same, never folded into it
    assert f.native_bf16 is (kind in ("amx", "avx512_bf16"))
    assert f.amx is (kind == "amx")


def test_arm_features_line_is_read():
    flags = read_cpu_flags(str(SAVED["other"]))
    assert "asimd" in flags and not any(f.startswith("avx") for f in flags)


def test_flags_read_from_cpuinfo(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert read_cpu_flags(str(f)) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert read_cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_kind_can_be_forced_and_a_bad_one_is_named(monkeypatch):
    monkeypatch.setenv("RESNEXT_DET_CPU_KIND", "avx2")
    assert cpu_kind() == "avx2"
    monkeypatch.setenv("RESNEXT_DET_CPU_KIND", "avx3")
    with pytest.raises(ValueError, match="RESNEXT_DET_CPU_KIND='avx3'.*avx512_bf16"):
        cpu_kind()
    monkeypatch.delenv("RESNEXT_DET_CPU_KIND")
    assert cpu_kind() in CPU_KINDS
