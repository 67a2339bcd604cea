"""Fig. 3: the three block forms compute the same function given mapped weights."""
import pytest
import torch

from resnext_det.modeling.blocks import BLOCK_CLASSES, GroupedBlock, grouped_state_to_form
from resnext_det import build_backbone_from_preset


def _randomize_norms(block):
    """Give BN non-trivial statistics/affine terms so equivalence is not vacuous."""
    g = torch.Generator().manual_seed(0)
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d) or type(m).__name__ == "FrozenBatchNorm2d":
            n = m.weight.shape[0]
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean.data = torch.randn(n, generator=g) * 0.1
            m.running_var.data = torch.rand(n, generator=g) + 0.5


@pytest.mark.parametrize("form", ["split", "concat"])
@pytest.mark.parametrize("kind,in_ch,out_ch,stride", [
    ("res2 block (C=32, d=4, no downsampling)", 256, 256, 1),
    ("downsampling block with projection shortcut", 256, 512, 2),
])
@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_forms_equal_grouped(form, kind, in_ch, out_ch, stride, norm):
    cardinality = 32
    bottleneck = cardinality * 4 * (out_ch // 256)
    kwargs = dict(bottleneck_channels=bottleneck, stride=stride, num_groups=cardinality, norm=norm)
    torch.manual_seed(0)
    grouped = GroupedBlock(in_ch, out_ch, **kwargs)
    _randomize_norms(grouped)
    other = BLOCK_CLASSES[form](in_ch, out_ch, **kwargs)
    missing, unexpected = other.load_state_dict(
        grouped_state_to_form(grouped.state_dict(), form, cardinality), strict=True)
    assert not missing and not unexpected
    grouped.eval(), other.eval()
    x = torch.randn(2, in_ch, 16, 16)
    with torch.no_grad():
        a, b = grouped(x), other(x)
    assert a.shape == b.shape == (2, out_ch, 16 // stride, 16 // stride)
    assert a.abs().max() > 0.1  # not a trivially zero output
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_forms_differ_structurally():
    g = GroupedBlock(64, 64, bottleneck_channels=16, num_groups=4)
    s = BLOCK_CLASSES["split"](64, 64, bottleneck_channels=16, num_groups=4)
    c = BLOCK_CLASSES["concat"](64, 64, bottleneck_channels=16, num_groups=4)
    assert g.conv2.groups == 4
    assert len(s.paths) == len(c.paths) == 4
    assert s.paths[0].conv2.in_channels == s.paths[0].conv2.out_channels == 4
    assert hasattr(s.paths[0], "conv3") and not hasattr(c.paths[0], "conv3")
    # all three forms have the same number of parameters (the paper: "equivalent")
    n = [sum(p.numel() for p in m.parameters()) for m in (g, s, c)]
    assert n[0] == n[1] == n[2]


def test_backbone_built_in_split_form_matches_grouped():
    common = dict(depth=50, cardinality=4, bottleneck_width=4, res2_out_channels=32,
                  stem_out_channels=16, out_features=["res3"], norm="FrozenBN")
    grouped = build_backbone_from_preset("", **common).eval()
    split = build_backbone_from_preset("", block_form="split", **common).eval()
    state = {}
    for name, module in grouped.named_children():
        sub = module.state_dict()
        if name.startswith("res"):
            for i, block in enumerate(module):
                for k, v in grouped_state_to_form(block.state_dict(), "split", 4).items():
                    state[f"{name}.{i}.{k}"] = v
        else:
            state.update({f"{name}.{k}": v for k, v in sub.items()})
    split.load_state_dict(state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(split(x)["res3"], grouped(x)["res3"], rtol=1e-4, atol=1e-5)


def test_indivisible_bottleneck_is_error():
    with pytest.raises(ValueError, match="not divisible"):
        BLOCK_CLASSES["split"](64, 64, bottleneck_channels=10, num_groups=4)
