"""Public Python API: a ResNeXt backbone from a preset, in custom detectors."""
import pytest
import torch
from torch import nn

from resnext_det import ResNeXtConfigError, TorchvisionBackbone, build_backbone_from_preset

TINY = dict(depth=50, cardinality=4, bottleneck_width=4, res2_out_channels=32, stem_out_channels=16)


def test_preset_builds_fpn_backbone():
    b = build_backbone_from_preset("X-101-32x4d", fpn=True)
    assert list(b.output_shape()) == ["p2", "p3", "p4", "p5", "p6"]
    assert b.bottom_up.res4[0].conv2.groups == 32
    assert len(b.bottom_up.res4) == 23


def test_preset_contradiction_and_unknown_option():
    with pytest.raises(ResNeXtConfigError, match="contradicts"):
        build_backbone_from_preset("X-101-32x4d", cardinality=64)
    with pytest.raises(TypeError, match="groups"):
        build_backbone_from_preset("X-50-32x4d", groups=4)


def test_custom_detectron2_meta_architecture_trains():
    """A user-defined detectron2 meta-architecture registered with META_ARCH_REGISTRY."""
    from detectron2.modeling import META_ARCH_REGISTRY

    name = "TinyCenterClassifier"
    if name not in META_ARCH_REGISTRY:
        @META_ARCH_REGISTRY.register()
        class TinyCenterClassifier(nn.Module):
            """Predicts the class of each image's object from pooled p3 features."""

            def __init__(self, cfg=None, num_classes=3):
                super().__init__()
                self.backbone = build_backbone_from_preset("", fpn=True, fpn_out_channels=32,
                                                           norm="BN", **TINY)
                self.head = nn.Linear(32, num_classes)

            def forward(self, batched_inputs):
                x = torch.stack([b["image"] for b in batched_inputs])
                feats = self.backbone(x)["p3"].mean(dim=(2, 3))
                logits = self.head(feats)
                if self.training:
                    y = torch.tensor([b["label"] for b in batched_inputs])
                    return {"loss_cls": nn.functional.cross_entropy(logits, y)}
                return logits.argmax(1)

    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = name
    cfg.MODEL.DEVICE = "cpu"
    from detectron2.modeling import build_model

    model = build_model(cfg)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    batch = [{"image": torch.randn(3, 64, 64), "label": i % 3} for i in range(6)]
    first = None
    for _ in range(15):
        loss = model(batch)["loss_cls"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first  # it learns: gradients flow through the ResNeXt backbone


def test_torchvision_fasterrcnn_trains_and_infers():
    from torchvision.models.detection import FasterRCNN

    backbone = TorchvisionBackbone(build_backbone_from_preset("", fpn=True, fpn_out_channels=32, **TINY))
    assert backbone.out_channels == 32
    model = FasterRCNN(backbone, num_classes=4, min_size=96, max_size=128,
                       rpn_anchor_generator=backbone.anchor_generator(),
                       box_roi_pool=backbone.roi_pool(),
                       rpn_post_nms_top_n_train=64, box_batch_size_per_image=32)
    images = [torch.rand(3, 96, 128), torch.rand(3, 96, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[30.0, 20.0, 100.0, 90.0]]), "labels": torch.tensor([3])}]
    model.train()
    losses = model(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} == set(losses)
    total = sum(losses.values())
    total.backward()
    grads = [p.grad for n, p in backbone.named_parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 96, 128)])
    assert out[0]["boxes"].shape[1] == 4


def test_torchvision_adapter_rejects_mixed_channels():
    with pytest.raises(ValueError, match="one channel count"):
        TorchvisionBackbone(build_backbone_from_preset("", out_features=["res4", "res5"], **TINY))
