"""ResNeXt as an ImageNet-style image classifier: the bottom-up network, global average
pooling over res5 and one fully connected layer (the paper's Table 1 model, torchvision's
layout). Used to count the paper's complexity and to pretrain the demo's miniature ImageNet."""
from __future__ import annotations

from torch import nn
from torch.nn import functional as F

__all__ = ["ResNeXtClassifier"]


class ResNeXtClassifier(nn.Module):
    """A classifier on any detectron2 Backbone that outputs ``res5``."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.output_shape()["res5"].channels, num_classes)

    def forward(self, images):
        """Class logits of ``images`` (N, 3, H, W), already normalised."""
        return self.fc(F.adaptive_avg_pool2d(self.backbone(images)["res5"], 1).flatten(1))
