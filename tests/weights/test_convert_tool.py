"""tools/convert_weights.py: INPUT OUTPUT [--preset NAME] -> a detectron2 checkpoint with metadata."""
import os

import numpy as np
import pytest
import torch
from torchvision.models.resnet import Bottleneck, ResNet

from resnext_det.weights import ResNeXtCheckpointer, read_checkpoint, safe_load

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from resnext_det.apps import convert_weights  # noqa: E402  (tools/convert_weights.py's cli)

import zygote

# one pytest-xdist worker runs this module: its module-scoped fixtures are costly (tools/install.sh
# passes --dist loadgroup)
pytestmark = pytest.mark.xdist_group("test_convert_tool")


@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory):
    torch.manual_seed(0)
    tv = ResNet(Bottleneck, [3, 4, 6, 3], groups=4, width_per_group=4, num_classes=10)
    path = tmp_path_factory.mktemp("tool") / "tiny_tv.pth"
    torch.save({"model": tv.state_dict()}, path)  # wrapped, as some training scripts write
    return str(path)


def test_cli_converts_with_progress_and_metadata(tiny_pth, tmp_path):
    out = tmp_path / "tiny_d2.pkl"
    proc = zygote.run([os.path.join(ROOT, "tools", "convert_weights.py"), tiny_pth, str(out)], timeout=300)
    assert proc.returncode == 0, proc.stderr
    log = proc.stdout + proc.stderr
    assert "Reading" in log and "source: torchvision" in log and "INPUT.FORMAT RGB" in log and "wrote" in log
    data = safe_load(str(out))
    assert set(data) >= {"model", "__author__", "meta", "matching_heuristics"}
    assert data["meta"]["input_format"] == "RGB" and data["meta"]["stride_in_1x1"] is False
    assert isinstance(data["model"]["res2.0.conv2.weight"], np.ndarray)
    assert data["model"]["res2.0.conv2.weight"].shape == (16, 4, 3, 3)


def test_preset_and_bad_inputs_exit_2_with_message(tiny_pth, tmp_path, capsys):
    assert convert_weights.cli([tiny_pth, str(tmp_path / "o.pth"), "--preset", "X-101-32x8d", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convert_weights.py: error:") and "not preset 'X-101-32x8d'" in err
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(b"\x80\x02cposix\nsystem\nX\x05\x00\x00\x00touch\x85R.")
    assert convert_weights.cli([str(evil), str(tmp_path / "o.pth"), "--quiet"]) == 2
    assert "posix.system" in capsys.readouterr().err
    assert not (tmp_path / "o.pth").exists()


def test_pth_output_loads_and_keeps_metadata(tiny_pth, tmp_path):
    out = str(tmp_path / "tiny_d2.pth")
    assert convert_weights.cli([tiny_pth, out, "--quiet"]) == 0
    ckpt = read_checkpoint(out)
    assert ckpt["meta"]["source"] == "torchvision" and ckpt["meta"]["architecture"]["cardinality"] == 4
    from resnext_det import build_backbone_from_preset

    bb = build_backbone_from_preset("", depth=50, cardinality=4, bottleneck_width=4,
                                    out_features=["res2", "res3", "res4", "res5"])
    ck = ResNeXtCheckpointer(bb, strict_backbone=True)
    ck.load(out)
    assert ck.last_report.backbone_loaded == ck.last_report.backbone_total
