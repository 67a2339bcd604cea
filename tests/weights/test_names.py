"""weights/names.py: torchvision's ResNet names against detectron2's, one table read both ways."""
import pytest
import torchvision

from resnext_det.weights.names import from_torchvision_name, to_torchvision_name


def test_every_torchvision_trunk_tensor_round_trips():
    names = [k for k in torchvision.models.resnext50_32x4d().state_dict() if not k.startswith("fc.")]
    assert len(names) > 300
    for name in names:
        d2 = from_torchvision_name(name)
        assert d2 is not None and d2.split(".")[0] in {"stem", "res2", "res3", "res4", "res5"}, name
        assert to_torchvision_name(d2) == name


@pytest.mark.parametrize("tv,d2", [
    ("conv1.weight", "stem.conv1.weight"),
    ("bn1.running_var", "stem.conv1.norm.running_var"),
    ("layer1.0.conv2.weight", "res2.0.conv2.weight"),
    ("layer4.2.bn3.bias", "res5.2.conv3.norm.bias"),
    ("layer2.0.downsample.0.weight", "res3.0.shortcut.weight"),
    ("layer3.0.downsample.1.running_mean", "res4.0.shortcut.norm.running_mean"),
])
def test_known_names(tv, d2):
    assert from_torchvision_name(tv) == d2 and to_torchvision_name(d2) == tv


@pytest.mark.parametrize("name", ["fc.weight", "layer1.0.se.fc1.weight", "stem.conv1.weight",
                                  "layer1.0.conv2.weight.extra"])
def test_other_names_are_none(name):
    assert from_torchvision_name(name) is None


def test_detectron2_names_outside_torchvisions_layout_are_none():
    assert to_torchvision_name("roi_heads.box_predictor.cls_score.weight") is None
