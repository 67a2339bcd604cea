"""TorchScript export of a detector with this backbone (default or ``prepare_for_inference``'d) through
detectron2's ``TracingAdapter`` (docs/FAST_PATH.md, "Export"); the saved file loads without detectron2.
A traced graph is specialised to what it saw: trace with an image of the size you will deploy; the
batch is one image.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch
from torch import nn

from detectron2.export import TracingAdapter
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess

__all__ = ["trace_detector", "run_traced", "export_torchscript"]


def _inference_func(model, inputs):
    instances = model.inference(inputs, do_postprocess=False)[0]
    return [{"instances": instances}]


def trace_detector(model: nn.Module, image: torch.Tensor) -> Tuple[torch.jit.ScriptModule, TracingAdapter]:
    """Trace a detectron2 ``GeneralizedRCNN`` (set to eval) on one CHW image to TorchScript; returns
    ``(traced, adapter)``: ``traced(image)`` gives a tuple of tensors, ``adapter.outputs_schema``
    rebuilds ``[{"instances": Instances}]`` from it."""
    if not isinstance(model, GeneralizedRCNN):
        raise TypeError(f"trace_detector expects a detectron2 GeneralizedRCNN, got {type(model).__name__}")
    model.eval()
    adapter = TracingAdapter(model, [{"image": image}], _inference_func)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about python values in detectron2
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    return traced, adapter


def run_traced(traced: torch.jit.ScriptModule, adapter: TracingAdapter, image: torch.Tensor,
               height: Optional[int] = None, width: Optional[int] = None):
    """Run a traced detector (:func:`trace_detector`, or ``torch.jit.load`` of a saved one) on one
    CHW image; returns ``Instances`` as the eager model does for ``{"image", "height", "width"}``:
    :func:`detector_postprocess` is applied here, boxes rescaled to ``height`` x ``width``
    (default: the image's size) and clipped."""
    with torch.no_grad():
        flat = traced(image)
    instances = adapter.outputs_schema(flat)[0]["instances"]
    return detector_postprocess(instances, height or image.shape[-2], width or image.shape[-1])


def export_torchscript(model: nn.Module, image: torch.Tensor, path: str) -> TracingAdapter:
    """Trace (see :func:`trace_detector`) and save to ``path``; returns the adapter for the schema."""
    traced, adapter = trace_detector(model, image)
    traced.save(path)
    return adapter
