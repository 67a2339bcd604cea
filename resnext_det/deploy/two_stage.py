"""The paper's two-stage plan (RPN and Fast R-CNN trained as separate networks, Appendix B)
deployed as one graph.

In training, stage 2 reads stage 1's proposals from files. Deployed, a detector must make
its own: :class:`TwoStageDetector` runs the stage-1 network (its own backbone + RPN, top
``RESNEXT_PLAN.PROPOSALS.TOPK_TEST`` proposals, as the plan's proposal files hold) and feeds
them to the stage-2 network (its own backbone + RoI head) in one forward, so the export,
the runtimes and the predictor treat it as any other detector: one file, one call.
"""
from __future__ import annotations

import os

import torch
from detectron2.modeling import build_model
from detectron2.structures import ImageList
from torch import nn

from ..engine.plan import build_plan, final_stage
from ..weights import load_checkpoint
from .contract import DeployError

__all__ = ["TwoStageDetector", "build_two_stage_detector", "plan_export_target"]


class TwoStageDetector(nn.Module):
    """Stage-1 RPN network + stage-2 Fast R-CNN network, each with its own backbone.

    Args:
        rpn_network: detectron2 ``ProposalNetwork`` (backbone + RPN).
        detector: ``GeneralizedRCNN`` whose RoI head classifies the proposals (its own
            proposal generator, ``PrecomputedProposals``, is not used).
    """

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
        images_rpn = self.detector.preprocess_image(batched_inputs) if _same_input(rpn, self.detector) \
            else _preprocess(rpn, batched_inputs)
        proposals, _ = rpn.proposal_generator(images_rpn, rpn.backbone(images_rpn.tensor), None)
        images = self.detector.preprocess_image(batched_inputs)
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


def build_two_stage_detector(stages, weights: str = "") -> nn.Module:
    """The deployed form of a two-stage plan (``build_plan(cfg)``) from its trained weights.

    Args:
        stages: the plan's stages (rpn, proposals, fast_rcnn).
        weights: the stage-2 (Fast R-CNN) weights; default ``<stage 2>/model_final.pth``.
            Stage 1's are ``<stage 1>/model_final.pth`` (where the plan wrote them).

    Raises:
        FileNotFoundError: a stage's weights are missing (named, with the stage).
    """
    by = {s.name: s for s in stages}
    rpn_cfg = by["rpn"].cfg.clone()
    rpn_cfg.defrost()
    # the proposals the plan's files hold for evaluation: the top TOPK_TEST after NMS
    rpn_cfg.MODEL.RPN.POST_NMS_TOPK_TEST = by["fast_rcnn"].cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST
    det_cfg = by["fast_rcnn"].cfg.clone()
    det_cfg.defrost()
    det_cfg.MODEL.LOAD_PROPOSALS = False
    files = {"rpn": os.path.join(by["rpn"].output_dir, "model_final.pth"),
             "fast_rcnn": weights or os.path.join(by["fast_rcnn"].output_dir, "model_final.pth")}
    for stage, path in files.items():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"two-stage plan: the {stage} stage's weights {path!r} not found "
                                    f"(run the plan first: tools/train_net.py --config-file ...; "
                                    f"OUTPUT_DIR {os.path.dirname(by['rpn'].output_dir) or '.'!r})")
    if det_cfg.MODEL.DEVICE != "cpu":
        raise DeployError(f"MODEL.DEVICE={det_cfg.MODEL.DEVICE!r}: export on the CPU (MODEL.DEVICE cpu)")
    rpn_net, detector = build_model(rpn_cfg), build_model(det_cfg)
    load_checkpoint(rpn_net, rpn_cfg, files["rpn"])
    load_checkpoint(detector, det_cfg, files["fast_rcnn"])
    return TwoStageDetector(rpn_net, detector).eval()


def plan_export_target(cfg):
    """What to export for a plan config: ``(cfg of the deployed detector, model or None)``.

    Joint plan: the final stage's config, the model built from it (None here). Two-stage
    plan: stage 2's config (making its own proposals) and the :class:`TwoStageDetector` of
    both trained stages (MODEL.WEIGHTS: stage 2's file; default where the plan wrote it).

    Args:
        cfg: a train_net config (RESNEXT_PLAN), datasets registered.
    """
    stages = build_plan(cfg)
    scfg = final_stage(stages).cfg.clone()
    scfg.defrost()
    model = None
    if cfg.RESNEXT_PLAN.MODE == "two_stage":
        model = build_two_stage_detector(stages, cfg.MODEL.WEIGHTS)
        scfg.MODEL.LOAD_PROPOSALS = False
        scfg.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"  # the graph makes its own (stage 1's)
        scfg.MODEL.META_ARCHITECTURE = "TwoStageDetector"
    scfg.MODEL.WEIGHTS = cfg.MODEL.WEIGHTS
    scfg.freeze()
    return scfg, model
