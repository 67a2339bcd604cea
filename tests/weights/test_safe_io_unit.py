"""resnext_det.weights.safe_io on hand-made bytes, in milliseconds: the format sniffer's every
rule and boundary, what the restricted unpickler admits (numpy 1.x and 2.x names, protocol 2's
latin-1 bytes) and refuses, and each container's damaged-file message."""
import collections
import io
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from resnext_det.weights.safe_io import (
    ForbiddenGlobalError,
    RestrictedUnpickler,
    WeightsError,
    load_restricted_pickle,
    safe_load,
    sniff_format,
)


@pytest.fixture(autouse=True)
def fresh_allow_list(monkeypatch):
    """The unpickler builds its allow-list once per process: every test here builds it anew, so
    each one checks the list itself and not one an earlier test left behind."""
    from resnext_det.weights import safe_io

    monkeypatch.setattr(safe_io, "_ALLOWED", None)


def _file(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


# ----------------------------------------------------------------------------- sniffing
def test_sniff_format_rules(tmp_path):
    assert sniff_format(_file(tmp_path, "a.bin", b"PK\x03\x04" + b"\0" * 20)) == "torch-zip"
    assert sniff_format(_file(tmp_path, "b.bin", b"\x80\x02}q\x00.")) == "pickle"
    header = b'{"a": 1}'
    st = struct.pack("<Q", len(header)) + header
    assert sniff_format(_file(tmp_path, "c.bin", st)) == "safetensors"  # header ends at the file's end
    assert sniff_format(_file(tmp_path, "t.bin", struct.pack("<iii", 3, 1, 0))) == "torch7"  # a table
    assert sniff_format(_file(tmp_path, "u.bin", struct.pack("<ii", 4, 1) + b"\0" * 8)) == "torch7"  # an object
    for first in (b"(", b"}", b"]", b"c"):  # protocol 0/1 pickles, by their .pkl name only
        assert sniff_format(_file(tmp_path, "p.pkl", first + b"rest of it")) == "pickle"
    with pytest.raises(WeightsError, match=r"p\.pth: not a checkpoint this project can read \(starts with b'\(rest of'\)"):
        sniff_format(_file(tmp_path, "p.pth", b"(rest of it"))


@pytest.mark.parametrize("data", [
    struct.pack("<Q", 9) + b'{"a": 1}',   # header one byte longer than the file
    struct.pack("<Q", 8) + b'["a": 1]',   # no JSON object after the length
    struct.pack("<ii", 3, 2) + b"\0" * 4,  # Torch7 table, but not object #1
    struct.pack("<ii", 5, 1) + b"\0" * 4,  # object #1 of another type
    struct.pack("<ii", 3, 1)[:7],          # too short to tell
    b"x",
])
def test_sniff_format_refuses_near_misses(data, tmp_path):
    path = _file(tmp_path, "w.bin", data)
    with pytest.raises(WeightsError) as e:
        sniff_format(path)
    assert str(e.value).startswith(f"{path}: not a checkpoint this project can read (starts with {data[:8]!r}); "
                                   "expected one of: torchvision/timm state dicts")


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(WeightsError) as e:
        sniff_format(str(tmp_path / "none.pth"))
    assert str(e.value) == f"{tmp_path / 'none.pth'}: no such file"
    path = _file(tmp_path, "e.pth", b"")
    with pytest.raises(WeightsError, match=r"e\.pth: the file is empty \(0 bytes\); expected one of: "):
        safe_load(path)


# ----------------------------------------------------------------------------- the unpickler
def test_numpy_pickles_of_both_numpy_generations_load(tmp_path):
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    obj = {"w": arr, "scalar": np.float32(2.5), "d": collections.OrderedDict(a=1),
           "misc": [set([1]), frozenset([2]), complex(1, 2), slice(1, 3), bytearray(b"x"), (1.5, True, "s", b"b")]}
    for protocol in (2, 4, 5):  # 5: numpy pickles its buffer through numeric._frombuffer
        data = pickle.dumps(obj, protocol=protocol)
        got = load_restricted_pickle(_file(tmp_path, f"p{protocol}.pkl", data))
        assert np.array_equal(got["w"], arr) and got["w"].dtype == np.float32
        assert got["scalar"] == np.float32(2.5) and got["d"] == collections.OrderedDict(a=1)
        assert got["misc"] == obj["misc"]
        if protocol == 2:  # the same file as numpy 1.x wrote it: numpy.core, not numpy._core
            old = data.replace(b"numpy._core", b"numpy.core")  # (GLOBAL names end at a newline)
            assert old != data
            got = load_restricted_pickle(_file(tmp_path, f"old{protocol}.pkl", old))
            assert np.array_equal(got["w"], arr)
    # Python 2 era builtins module name
    data = pickle.dumps({"s": {1, 2}}, protocol=2).replace(b"cbuiltins\nset", b"c__builtin__\nset")
    assert load_restricted_pickle(_file(tmp_path, "py2.pkl", data)) == {"s": {1, 2}}


class _Call:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("payload,module,name", [
    (_Call(os.getcwd), "posix", "getcwd"),
    (_Call(eval, "1"), "builtins", "eval"),
    (_Call(getattr, 1, "real"), "builtins", "getattr"),
    (_Call(np.load, "x"), "numpy", "load"),
])
def test_other_globals_are_refused_by_name(payload, module, name, tmp_path):
    path = _file(tmp_path, "evil.pkl", pickle.dumps({"x": payload}, protocol=4))
    with pytest.raises(ForbiddenGlobalError) as e:
        load_restricted_pickle(path)
    assert (e.value.path, e.value.module, e.value.name) == (path, module, name)
    assert str(e.value) == (
        f"{path}: refused to load: the file asks for the global '{module}.{name}', which a weights file never "
        "needs (only tensors, numpy arrays and dtypes, and builtin containers and numbers are admitted); nothing "
        "from the file was executed. If you created this file yourself, re-save the weights as a plain state "
        "dict of tensors (torch.save(model.state_dict(), path)) or of numpy arrays (.pkl).")


def test_codecs_encode_admits_latin1_only(tmp_path):
    import codecs

    for enc in ("latin1", "latin-1", "iso-8859-1"):
        data = pickle.dumps(_Call(codecs.encode, "\xe9t\xe9", enc), protocol=2)
        assert load_restricted_pickle(_file(tmp_path, "l.pkl", data)) == b"\xe9t\xe9"
    # a character latin-1 cannot hold: encoding fails strictly (UnicodeEncodeError), as damage
    data = pickle.dumps(_Call(codecs.encode, "\u20ac", "latin1"), protocol=2)
    with pytest.raises(WeightsError, match=r"\(UnicodeEncodeError: 'latin-1' codec can't encode"):
        load_restricted_pickle(_file(tmp_path, "euro.pkl", data))
    for args in (("abc", "utf-8"), (b"abc", "latin1"), ("abc", "zlib_codec")):
        data = pickle.dumps(_Call(codecs.encode, *args), protocol=2)
        with pytest.raises(WeightsError, match=r"the file is truncated or corrupted \(UnpicklingError: "
                                               r"_codecs\.encode with encoding"):
            load_restricted_pickle(_file(tmp_path, "z.pkl", data))


def test_persistent_ids_and_damaged_pickles(tmp_path):
    class WithPid(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage0" if isinstance(obj, str) and obj == "t" else None

    buf = io.BytesIO()
    WithPid(buf, protocol=2).dump({"x": "t"})
    path = _file(tmp_path, "pid.pkl", buf.getvalue())
    with pytest.raises(WeightsError) as e:
        load_restricted_pickle(path)
    assert str(e.value) == (f"{path}: refused to unpickle: the file uses persistent ids ('storage0'), which plain "
                            "weight pickles never do (torch files must be read with torch.load)")
    cut = _file(tmp_path, "cut.pkl", pickle.dumps({"w": np.ones(10)}, protocol=2)[:30])
    with pytest.raises(WeightsError, match=r"cut\.pkl: the file is truncated or corrupted \(.*\); convert again$"):
        load_restricted_pickle(cut, remedy="convert again")
    with pytest.raises(WeightsError, match=r"download or convert it again$"):
        load_restricted_pickle(cut)
    with open(cut, "rb") as f:  # the class itself: the path it was given names the file
        with pytest.raises(ForbiddenGlobalError, match="^<stream>: refused"):
            RestrictedUnpickler(io.BytesIO(pickle.dumps(_Call(os.getcwd), protocol=2))).load()


# ----------------------------------------------------------------------------- containers
def test_torch_files_zip_and_legacy(tmp_path):
    sd = {"w": torch.arange(4.0), "np": np.ones(3, np.int64), "dt": np.dtype(np.float16)}
    for name, zipped in (("new.pth", True), ("legacy.pth", False)):
        path = str(tmp_path / name)
        torch.save(sd, path, _use_new_zipfile_serialization=zipped)
        assert sniff_format(path) == ("torch-zip" if zipped else "pickle")
        got = safe_load(path)
        assert torch.equal(got["w"], sd["w"]) and np.array_equal(got["np"], sd["np"]) and got["dt"] == np.float16
    path = str(tmp_path / "evil.pth")
    torch.save({"x": _Call(os.getcwd)}, path)
    with pytest.raises(ForbiddenGlobalError) as e:
        safe_load(path)
    assert (e.value.module, e.value.name) == ("posix", "getcwd") and "weights_only" not in str(e.value)
    data = open(str(tmp_path / "new.pth"), "rb").read()
    cut = _file(tmp_path, "cut.pth", data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"cut\.pth: the file is truncated or corrupted \(") as e:
        safe_load(cut)
    assert str(e.value).endswith("; download or convert it again")


def test_safetensors_and_torch7(tmp_path):
    from safetensors.torch import save_file

    path = str(tmp_path / "m.safetensors")
    save_file({"w": torch.ones(2, 2)}, path)
    got = safe_load(path)
    assert isinstance(got, dict) and torch.equal(got["w"], torch.ones(2, 2))
    data = open(path, "rb").read()
    cut = _file(tmp_path, "cut.safetensors", data[:-3])
    with pytest.raises(WeightsError, match=r"cut\.safetensors: the file is truncated or corrupted") as e:
        safe_load(cut)
    assert str(e.value).endswith("; download or convert it again")
    t7 = _file(tmp_path, "m.t7", struct.pack("<iii", 3, 1, 1) + struct.pack("<id", 1, 1.0) + struct.pack("<id", 1, 7.0))
    assert safe_load(t7) == [7]  # the Lua table {[1] = 7}, which torchfile reads as a list
    cut = _file(tmp_path, "cut.t7", struct.pack("<iii", 3, 1, 1) + struct.pack("<i", 1))
    with pytest.raises(WeightsError, match=r"cut\.t7: the file is truncated or corrupted") as e:
        safe_load(cut)
    assert str(e.value).endswith("; download or convert it again")


# ----------------------------------------------------------------------------- more rules and their edges
def test_sniff_format_edges(tmp_path):
    # the smallest safetensors header: its length (1) and '{' in exactly 9 bytes
    assert sniff_format(_file(tmp_path, "s.bin", struct.pack("<Q", 1) + b"{")) == "safetensors"
    # exactly 8 bytes of a Torch7 table, object #1
    assert sniff_format(_file(tmp_path, "t.bin", struct.pack("<ii", 3, 1))) == "torch7"
    # a header length past 2**63 is a huge length, not a negative one
    huge = _file(tmp_path, "h.bin", struct.pack("<Q", 2 ** 64 - 1) + b'{"a": 1}')
    with pytest.raises(WeightsError, match=r"h\.bin: not a checkpoint this project can read"):
        sniff_format(huge)


def test_python2_strings_decode_as_latin1(tmp_path):
    """A Python 2 pickle (Detectron's .pkl files) holds array buffers as str (BINSTRING): each
    byte becomes the character of that code point, so every byte value comes back."""
    every_byte = bytes(range(256))
    data = b"\x80\x02T" + struct.pack("<I", 256) + every_byte + b"."
    assert load_restricted_pickle(_file(tmp_path, "py2str.pkl", data)) == every_byte.decode("latin1")


def test_codecs_encode_arguments(tmp_path):
    import codecs

    data = pickle.dumps(_Call(codecs.encode, "abc"), protocol=2)  # no encoding named: latin-1
    assert load_restricted_pickle(_file(tmp_path, "one.pkl", data)) == b"abc"
    data = pickle.dumps(_Call(codecs.encode, "a\u20ac", "latin1", "replace"), protocol=2)  # errors= honoured
    assert load_restricted_pickle(_file(tmp_path, "rep.pkl", data)) == b"a?"


def test_numpy_1x_module_names_resolve_without_numpy_core(monkeypatch):
    """On numpy 1.x (no numpy._core) the allow-list takes numpy.core's functions."""
    from resnext_det.weights import safe_io

    real, asked = safe_io.importlib.import_module, []

    def import_module(name):
        asked.append(name)
        if name.startswith("numpy._core"):
            raise ImportError(f"No module named {name!r}")
        return real(name)

    monkeypatch.setattr(safe_io.importlib, "import_module", import_module)
    module = safe_io._np_core("multiarray")
    assert asked == ["numpy._core.multiarray", "numpy.core.multiarray"]
    assert module.__name__ == "numpy.core.multiarray" and module._reconstruct is np.core.multiarray._reconstruct


def test_a_pickled_number_is_returned_as_it_is(tmp_path):
    """Only torch's magic number opens a legacy torch file; any other number is the content."""
    assert safe_load(_file(tmp_path, "n.pkl", pickle.dumps(7, protocol=2))) == 7


def _rezip(src, dst, change):
    """The torch zip file ``src`` written again at ``dst`` with ``change(name, bytes)`` applied."""
    import zipfile

    with zipfile.ZipFile(src) as z:
        items = {n: change(n, z.read(n)) for n in z.namelist()}
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for n, b in items.items():
            z.writestr(n, b)
    return str(dst)


def test_torch_refusals_name_the_file_and_the_whole_global(tmp_path):
    import xml.sax.saxutils

    from resnext_det.weights import safe_io

    for payload, module, name in ((_Call(xml.sax.saxutils.escape, "x"), "xml.sax.saxutils", "escape"),
                                  # the loader's own latin-1 stand-in is for .pkl files only
                                  (_Call(safe_io._latin1_encode, "x", "latin1"), "resnext_det.weights.safe_io",
                                   "_latin1_encode")):
        path = str(tmp_path / f"{name}.pth")
        torch.save({"x": payload}, path)
        with pytest.raises(ForbiddenGlobalError) as e:
            safe_load(path)
        assert (e.value.path, e.value.module, e.value.name) == (path, module, name)
        assert str(e.value).startswith(f"{path}: refused to load: the file asks for the global '{module}.{name}'")


def test_torch_refuses_what_it_cannot_name(tmp_path):
    """An opcode torch's weights-only unpickler does not run (protocol 0's INT): refused in the
    project's words, without torch's advice to turn weights_only off."""
    torch.save({"w": torch.zeros(1)}, tmp_path / "ok.pth")
    path = _rezip(tmp_path / "ok.pth", tmp_path / "op.pth",
                  lambda n, b: b"\x80\x02I7\n." if n.endswith("/data.pkl") else b)
    with pytest.raises(WeightsError) as e:
        safe_load(path)
    assert str(e.value) == (f"{path}: refused to load: the file holds objects a weights file never needs; nothing "
                            "from the file was executed. Re-save the weights as a plain state dict of tensors.")


def test_torch_file_saved_on_a_gpu_loads_on_the_cpu(tmp_path):
    torch.save({"w": torch.arange(4.0)}, tmp_path / "cpu.pth")
    # the same file as a CUDA machine writes it: the storage's location says cuda:0
    path = _rezip(tmp_path / "cpu.pth", tmp_path / "gpu.pth",
                  lambda n, b: b.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
                  if n.endswith("/data.pkl") else b)
    got = safe_load(path)["w"]
    assert got.device == torch.device("cpu") and got.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_torch_files_stay_weights_only_when_the_environment_says_otherwise(tmp_path, monkeypatch):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD turns off torch.load's default safety, not an explicit one."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path = str(tmp_path / "evil.pth")
    torch.save({"x": _Call(os.getcwd)}, path)
    with pytest.raises(ForbiddenGlobalError) as e:
        safe_load(path)
    assert (e.value.module, e.value.name) == ("posix", "getcwd")


def test_damaged_files_name_the_library_error(tmp_path):
    from safetensors.torch import save_file

    torch.save({"w": torch.arange(4.0)}, tmp_path / "new.pth")
    data = (tmp_path / "new.pth").read_bytes()
    with pytest.raises(WeightsError, match=r"the file is truncated or corrupted \(RuntimeError: PytorchStreamReader "
                                           r"failed reading zip archive"):
        safe_load(_file(tmp_path, "cut.pth", data[: len(data) // 2]))
    save_file({"w": torch.ones(2, 2)}, str(tmp_path / "m.safetensors"))
    data = (tmp_path / "m.safetensors").read_bytes()
    with pytest.raises(WeightsError, match=r"the file is truncated or corrupted \(SafetensorError: "):
        safe_load(_file(tmp_path, "cut.safetensors", data[:-3]))
    cut = _file(tmp_path, "cut.t7", struct.pack("<iii", 3, 1, 1) + struct.pack("<i", 1))
    with pytest.raises(WeightsError) as e:
        safe_load(cut)
    assert str(e.value) == (f"{cut}: the file is truncated or corrupted (error: unpack requires a buffer of 8 "
                            "bytes); download or convert it again")
