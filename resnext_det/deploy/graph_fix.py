"""One rewrite of an exported detector graph, so that an image with nothing to detect gives no
detections in every runtime. With no candidate boxes, torchvision's scripted ``batched_nms`` exports
an ``If`` whose then-branch is a zero-element ``Constant``; OpenVINO's CPU plugin (2025.4 to 2026.4.1
at least) compiles it to one element of uninitialised memory, so an empty image gets a garbage or the
previous image's detection. Each such ``Constant`` becomes a ``ConstantOfShape`` of its shape times the
branch condition: the same empty tensor, computed at run time so that no runtime folds it back (an IR
converted from it keeps the fix).
"""
from __future__ import annotations

from typing import List

__all__ = ["rewrite_empty_branch_constants", "empty_branch_constants", "empty_branch_constants_ir"]


def _branches(graph):
    """(If node, branch graph) for every ``If`` in ``graph`` and, recursively, in its branches."""
    for node in graph.node:
        if node.op_type != "If":
            continue
        for attr in node.attribute:
            if attr.name in ("then_branch", "else_branch"):
                yield node, attr.g
                yield from _branches(attr.g)


def _empty_constant(node):
    """The value of a zero-element ``Constant`` node, else None."""
    import onnx

    for attr in node.attribute if node.op_type == "Constant" else ():
        if attr.name == "value":
            tensor = onnx.helper.get_attribute_value(attr)
            return tensor if 0 in tensor.dims else None
    return None


def empty_branch_constants(proto) -> List[str]:
    """Names of the zero-element ``Constant`` nodes inside ``If`` branches of an ONNX model."""
    return [n.name or n.output[0] for _, branch in _branches(proto.graph) for n in branch.node
            if _empty_constant(n) is not None]


def rewrite_empty_branch_constants(proto) -> int:
    """Rewrite (in place) every zero-element ``Constant`` inside an ``If`` branch of an ONNX
    model as ``ConstantOfShape(dims * cast(condition))``; returns how many (0: none, or done before)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    count = 0
    for if_node, branch in _branches(proto.graph):
        for node in list(branch.node):
            tensor = _empty_constant(node)
            if tensor is None:
                continue
            out = node.output[0]
            stem = f"{out}__empty_{count}"
            dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
            zero = numpy_helper.from_array(np.zeros([1], dtype=dtype), name=f"{stem}_value")
            new = [
                helper.make_node("Cast", [if_node.input[0]], [f"{stem}_on"], to=TensorProto.INT64,
                                 name=f"{stem}_on"),
                helper.make_node("Constant", [], [f"{stem}_dims"], name=f"{stem}_dims",
                                 value=helper.make_tensor(f"{stem}_dims_value", TensorProto.INT64,
                                                          [len(tensor.dims)], list(tensor.dims))),
                helper.make_node("Mul", [f"{stem}_dims", f"{stem}_on"], [f"{stem}_shape"], name=f"{stem}_shape"),
                helper.make_node("ConstantOfShape", [f"{stem}_shape"], [out], name=f"{stem}_fill", value=zero),
            ]
            kept = list(branch.node)
            at = kept.index(node)
            kept[at:at + 1] = new
            del branch.node[:]
            branch.node.extend(kept)
            count += 1
    return count


def empty_branch_constants_ir(model) -> List[str]:
    """Names of the ``If`` ops of an ``openvino.Model`` that show the defect: a branch whose result is
    a ``Constant`` of lower rank than the ``If``'s output (OpenVINO's reader makes a zero-element
    constant a scalar), as in an IR converted from a graph exported before the rewrite."""
    found = []

    def walk(m):
        for op in m.get_ordered_ops():
            if op.get_type_name() != "If":
                continue
            for k in range(2):
                body = op.get_function(k)
                for index, result in enumerate(body.get_results()[:op.get_output_size()]):
                    source = result.input_value(0).get_node()
                    rank = op.get_output_partial_shape(index).rank
                    if source.get_type_name() == "Constant" and rank.is_static and \
                            len(source.get_output_shape(0)) < rank.get_length():
                        found.append(op.get_friendly_name())
                walk(body)

    walk(model)
    return sorted(set(found))
