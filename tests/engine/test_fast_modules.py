"""engine.fast's module classes: a prepared model is made of modules whose class says what
they compute (folded Conv2d with bias, fused blocks, the AutocastTrunk wrapper), swapped in by
setattr, sharing the original parameters; no instance-level forward anywhere."""
import copy
import pickle
import warnings

import pytest
import torch

from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock
from detectron2.modeling.proposal_generator.rpn import StandardRPNHead

from resnext_det.engine.fast import (
    AutocastTrunk,
    FrozenBNFoldedConv2d,
    FusedBottleneckBlock,
    FusedRPNHead,
    FusedStem,
    apply_training_switches,
    apply_training_switches_with_report,
    fold_frozen_bn,
    prepare_for_inference,
)
from resnext_det.apps.stock import randomize_frozen_bn


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg)
    randomize_frozen_bn(model, torch.Generator().manual_seed(seed))
    return model.eval()


def test_no_instance_level_forward_after_any_switch(tiny_resnext_cfg):
    """Every module of a prepared or switched model computes with its class's methods: no
    ``forward``/``inference`` set on an instance (the fast path swaps modules instead)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "no native bf16 on this CPU"
        models = [prepare_for_inference(_model(tiny_resnext_cfg())),
                  prepare_for_inference(_model(tiny_resnext_cfg()), precision="bf16"),
                  prepare_for_inference(_model(tiny_resnext_cfg(), seed=1).backbone, precision="bf16"),
                  apply_training_switches(_model(tiny_resnext_cfg()), channels_last=True, fold_frozen_bn=True,
                                          autocast="bf16")]
    for model in models:
        for name, m in model.named_modules():
            assert not {"forward", "inference"} & set(vars(m)), (name, type(m))


def test_prepared_fpn_model_is_made_of_fused_and_folded_classes(tiny_resnext_cfg):
    model = prepare_for_inference(_model(tiny_resnext_cfg()))
    bottom_up = model.backbone.bottom_up
    assert type(bottom_up.stem) is FusedStem and isinstance(bottom_up.stem, BasicStem)
    blocks = [m for m in bottom_up.modules() if isinstance(m, BottleneckBlock)]
    assert blocks and all(type(b) is FusedBottleneckBlock for b in blocks)
    # ResNet.forward iterates its own list of stages: the swapped blocks are inside those
    assert all(type(stage[0]) is FusedBottleneckBlock for stage in bottom_up.stages)
    head = model.proposal_generator.rpn_head
    assert type(head) is FusedRPNHead and isinstance(head, StandardRPNHead)
    for m in bottom_up.modules():
        assert "forward" not in vars(m), type(m)
        if isinstance(m, Conv2d):
            assert type(m) is Conv2d and m.norm is None and m.bias is not None
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())


def test_fused_bottleneck_falls_back_to_detectron2_forward(tiny_resnext_cfg):
    """Calls the fused kernels cannot serve (autograd) run detectron2's own forward on the
    same folded convs; both equal the unfolded block."""
    block = _model(tiny_resnext_cfg()).backbone.bottom_up.res3[0]
    ref_block = copy.deepcopy(block)
    fold_frozen_bn(block)
    fused = FusedBottleneckBlock.from_block(block)
    assert fused.conv1 is block.conv1 and fused.shortcut is block.shortcut and fused.stride == block.stride
    x = torch.randn(1, block.in_channels, 16, 12)
    with torch.no_grad():
        ref = ref_block(x)
        out_fused = fused(x)
    x_grad = x.clone().requires_grad_(True)
    out_plain = fused(x_grad)  # autograd: detectron2's BottleneckBlock.forward
    out_plain.sum().backward()
    assert x_grad.grad is not None
    torch.testing.assert_close(out_fused, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_plain.detach(), ref, rtol=1e-4, atol=1e-5)


def test_fusable_only_for_folded_blocks(tiny_resnext_cfg):
    block = _model(tiny_resnext_cfg()).backbone.bottom_up.res2[0]
    assert not FusedBottleneckBlock.fusable(block)  # FrozenBN still there
    fold_frozen_bn(block)
    assert FusedBottleneckBlock.fusable(block)


def test_frozen_bn_folded_conv_shares_parameters_and_equals_conv_then_norm():
    torch.manual_seed(0)
    conv = Conv2d(8, 16, 3, padding=1, groups=4, bias=False, norm=FrozenBatchNorm2d(16),
                  activation=torch.nn.ReLU())
    randomize_frozen_bn(conv, torch.Generator().manual_seed(1))
    folded = FrozenBNFoldedConv2d.from_conv(conv)
    assert isinstance(folded, Conv2d)
    assert folded.weight is conv.weight and folded.norm is conv.norm and folded.bias is None
    assert list(folded.state_dict()) == list(conv.state_dict())
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    ref = conv(x)
    out = folded(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    (w_ref,) = torch.autograd.grad(ref, conv.weight, g)
    (w_out,) = torch.autograd.grad(out, folded.weight, g)
    torch.testing.assert_close(w_out, w_ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match="FrozenBatchNorm2d"):
        FrozenBNFoldedConv2d.from_conv(Conv2d(4, 4, 1))


def test_training_fold_swaps_convs_keeping_names(tiny_resnext_cfg):
    model = _model(tiny_resnext_cfg())
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    _, report = apply_training_switches_with_report(model, channels_last=False, fold_frozen_bn=True)
    assert report.folded_on_the_fly > 0
    assert isinstance(model.backbone.bottom_up.res3[0].conv2, FrozenBNFoldedConv2d)
    assert [n for n, _ in model.named_parameters()] == names
    assert all(p is params[n] for n, p in model.named_parameters())  # the same tensors
    assert not model.backbone.bottom_up.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_bf16_backbone_is_an_autocast_trunk_with_the_same_parameters(tiny_resnext_cfg):
    model = _model(tiny_resnext_cfg())
    folded = copy.deepcopy(model.backbone)
    fold_frozen_bn(folded)
    keys = list(folded.state_dict())  # the folded backbone's names: nothing added by the scope
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "no native bf16 on this CPU"
        bare = prepare_for_inference(copy.deepcopy(model.backbone), precision="bf16")
        prepared = prepare_for_inference(model, precision="bf16")
    for trunk in (bare, prepared.backbone):
        assert type(trunk) is AutocastTrunk and type(trunk.trunk) is FPN
        assert list(trunk.state_dict()) == keys
        # what detectron2 reads of a backbone is the wrapped FPN's
        assert trunk.size_divisibility == trunk.trunk.size_divisibility
        assert trunk.output_shape() == trunk.trunk.output_shape()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = bare(x)
    assert all(v.dtype == torch.float32 for v in out.values())
    # a prepared model can be copied and pickled
    for clone in (copy.deepcopy(bare), pickle.loads(pickle.dumps(bare))):
        assert type(clone) is AutocastTrunk and clone.autocast_dtype == torch.bfloat16
        assert list(clone.state_dict()) == keys
        with torch.no_grad():
            torch.testing.assert_close(clone(x), out)


def test_training_autocast_keeps_checkpoint_keys_and_parameters(tiny_resnext_cfg):
    """The wrapper adds a module level (``backbone.trunk.*`` in named_parameters) but neither
    a state_dict key nor a parameter: checkpoints and the optimizer see the same tensors."""
    model = _model(tiny_resnext_cfg())
    keys = list(model.state_dict())
    params = list(model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        apply_training_switches(model, channels_last=False, fold_frozen_bn=False, autocast="bf16")
    assert isinstance(model.backbone, AutocastTrunk)
    assert list(model.state_dict()) == keys
    assert len(list(model.parameters())) == len(params)
    assert all(a is b for a, b in zip(model.parameters(), params))
