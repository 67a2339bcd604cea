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


def _equal_to_grouped(form, in_ch, out_ch, x, **kwargs):
    torch.manual_seed(0)
    grouped = GroupedBlock(in_ch, out_ch, **kwargs)
    _randomize_norms(grouped)
    other = BLOCK_CLASSES[form](in_ch, out_ch, **kwargs)
    other.load_state_dict(grouped_state_to_form(grouped.state_dict(), form, kwargs["num_groups"]), strict=True)
    grouped.eval(), other.eval()
    with torch.no_grad():
        a, b = grouped(x), other(x)
    assert a.shape == b.shape and a.abs().max() > 0.1
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    return other


@pytest.mark.parametrize("form", ["split", "concat"])
def test_stride_in_1x1_and_dilation_as_grouped(form):
    """MSRA's stride on the first 1x1, and a dilated 3x3 (RES5_DILATION 2): still form (c)'s function."""
    x = torch.randn(1, 32, 12, 12)
    blk = _equal_to_grouped(form, 32, 64, x, bottleneck_channels=16, stride=2, num_groups=4, norm="FrozenBN",
                            stride_in_1x1=True)
    assert blk.paths[0].conv1.stride == (2, 2) and blk.paths[0].conv2.stride == (1, 1)
    blk = _equal_to_grouped(form, 32, 64, x, bottleneck_channels=16, stride=1, num_groups=4, norm="FrozenBN",
                            dilation=2)
    assert blk.paths[0].conv2.dilation == (2, 2) and blk.paths[0].conv2.padding == (2, 2)


@pytest.mark.parametrize("form", ["split", "concat"])
def test_block_attributes_and_defaults(form):
    blk = BLOCK_CLASSES[form](32, 64, bottleneck_channels=16, num_groups=4, stride=2)
    assert (blk.in_channels, blk.out_channels, blk.stride) == (32, 64, 2)
    assert (blk.cardinality, blk.group_width) == (4, 4)
    single = BLOCK_CLASSES[form](32, 32, bottleneck_channels=16)  # one path unless told
    assert len(single.paths) == 1 and single.group_width == 16 and single.shortcut is None


@pytest.mark.parametrize("form", ["split", "concat"])
@pytest.mark.parametrize("norm,frozen", [("FrozenBN", True), ("BN", False)])
def test_the_requested_norm_reaches_every_path(form, norm, frozen):
    """Training mode: FrozenBN keeps every statistic (detection fine-tuning); BN updates its own."""
    blk = BLOCK_CLASSES[form](16, 32, bottleneck_channels=8, num_groups=2, norm=norm).train()
    before = {k: v.clone() for k, v in blk.state_dict().items()}
    blk(torch.randn(2, 16, 8, 8))
    changed = {k for k, v in blk.state_dict().items() if not torch.equal(v, before[k])}
    if frozen:
        assert changed == set()
    else:
        assert {f"paths.{i}.conv{j}.norm.running_mean" for i in range(2) for j in (1, 2)} <= changed


def test_grouped_form_is_a_copy_and_unknown_forms_are_named():
    state = GroupedBlock(16, 16, bottleneck_channels=8, num_groups=2).state_dict()
    same = grouped_state_to_form(state, "grouped", 2)
    assert same == dict(state) and same is not state
    with pytest.raises(ValueError) as e:
        grouped_state_to_form(state, "fig3d", 2)
    assert str(e.value) == "unknown block form 'fig3d'; use one of ('grouped', 'split', 'concat')"
