"""The paper's two-stage plan (RPN and Fast R-CNN trained as separate networks, Appendix B) deployed
as one graph: :class:`TwoStageDetector` feeds the stage-1 network's top ``RESNEXT_PLAN.PROPOSALS.TOPK_TEST``
proposals (what the plan's files hold in training) to the stage-2 network in one forward.
"""
from __future__ import annotations

import torch
from detectron2.structures import ImageList
from torch import nn

__all__ = ["TwoStageDetector"]


class TwoStageDetector(nn.Module):
    """Stage-1 ``ProposalNetwork`` + stage-2 ``GeneralizedRCNN`` (its RoI head classifies the
    proposals; its own proposal generator is not used), each with its own backbone."""

    def __init__(self, rpn_network: nn.Module, detector: nn.Module):
        super().__init__()
        self.rpn_network, self.detector = rpn_network, detector

    @property
    def backbone(self):
        """The stage-2 backbone (its size divisibility is the graph's padding)."""
        return self.detector.backbone

    def inference(self, batched_inputs, do_postprocess: bool = False):
        """Like ``GeneralizedRCNN.inference``: proposals from stage 1, boxes from stage 2."""
        rpn = self.rpn_network
        images = self.detector.preprocess_image(batched_inputs)
        images_rpn = images if _same_input(rpn, self.detector) else _preprocess(rpn, batched_inputs)
        proposals, _ = rpn.proposal_generator(images_rpn, rpn.backbone(images_rpn.tensor), None)
        features = self.detector.backbone(images.tensor)
        results, _ = self.detector.roi_heads(images, features, proposals, None)
        if do_postprocess:
            return self.detector._postprocess(results, batched_inputs, images.image_sizes)
        return results

    def forward(self, batched_inputs):
        """Eval-mode detections in the original image coordinates (detectron2's convention)."""
        return self.inference(batched_inputs, do_postprocess=True)


def _same_input(a, b) -> bool:
    return torch.equal(a.pixel_mean, b.pixel_mean) and torch.equal(a.pixel_std, b.pixel_std)


def _preprocess(rpn, batched_inputs):
    images = [(x["image"].to(rpn.pixel_mean.device) - rpn.pixel_mean) / rpn.pixel_std for x in batched_inputs]
    return ImageList.from_tensors(images, rpn.backbone.size_divisibility)
