"""A hand-made ONNX graph with an export's signature, for the deploy runtime unit tests: it runs
in milliseconds in both runtimes and its answers are written out here.

``image`` (3, H, W) float -> three detections:

- ``boxes`` (3, 4): fractions of the image it was given, ``FACTORS`` x (W, H, W, H), so a box
  shows the size the graph saw (the resize) and, once post-processed, the original's;
- ``scores`` (3,): the mean of each channel, so a score shows the channel order it was given;
- ``classes`` (3,): the constants ``CLASSES``.
"""
import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper

from resnext_det.deploy.contract import Contract

FACTORS = np.array([[0.25, 0.25, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.75, 0.75]], np.float32)
CLASSES = [2, 0, 1]


def detector_graph(op="ReduceMean", domain=""):
    """The graph (``op``/``domain``: another scores operator, e.g. one no runtime knows)."""
    nodes = [
        helper.make_node(op, ["image"], ["scores"], axes=[1, 2], keepdims=0, domain=domain),
        helper.make_node("Shape", ["image"], ["shape"]),
        helper.make_node("Cast", ["shape"], ["shape_f"], to=TensorProto.FLOAT),
        # (C, H, W)[[2, 1, 2, 1]] = (W, H, W, H), one row per detection
        helper.make_node("Constant", [], ["whwh_index"],
                         value=helper.make_tensor("i", TensorProto.INT64, [3, 4], [2, 1, 2, 1] * 3)),
        helper.make_node("Gather", ["shape_f", "whwh_index"], ["whwh"]),
        helper.make_node("Constant", [], ["factors"],
                         value=helper.make_tensor("f", TensorProto.FLOAT, [3, 4], FACTORS.ravel().tolist())),
        helper.make_node("Mul", ["whwh", "factors"], ["boxes"]),
        helper.make_node("Constant", [], ["classes"], value=helper.make_tensor("c", TensorProto.INT64, [3], CLASSES)),
    ]
    graph = helper.make_graph(
        nodes, "tiny_detector", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [3, "h", "w"])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [3, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("classes", TensorProto.INT64, [3])])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def contract(**changes):
    """An export's contract: RGB, shortest edge 64, longest at most 96."""
    c = Contract(input_format="RGB", pixel_mean=[0.0, 0.0, 0.0], pixel_std=[1.0, 1.0, 1.0], min_size_test=64,
                 max_size_test=96, size_divisibility=32, num_classes=3)
    return dataclasses.replace(c, **changes)


def write_export(path, model=None, **changes):
    """``model`` (default :func:`detector_graph`) with a contract (``changes`` to the default)
    at ``path``, as tools/export.py writes it."""
    model = detector_graph() if model is None else model
    helper.set_model_props(model, contract(**changes).metadata())
    onnx.save(model, str(path))
    return str(path)


def image_chw(values=(1.0, 2.0, 3.0), h=4, w=6):
    """A 3xHxW float32 image, each channel one value."""
    return np.stack([np.full((h, w), v, np.float32) for v in values])
