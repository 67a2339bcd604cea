"""resnext_det.deploy.graph_fix on a small graph with the pattern detectron2's exports have:
torchvision's batched_nms, whose empty answer is an ``If`` branch holding a zero-element
constant. Without the rewrite OpenVINO (CPU) answers an input with no candidate boxes with one
box of stale memory; with it, every runtime gives what the graph says, call after call."""
import io

import numpy as np
import pytest
import torch
import torchvision

from resnext_det.deploy.contract import DeployError
from resnext_det.deploy.graph_fix import (empty_branch_constants, empty_branch_constants_ir,
                                          rewrite_empty_branch_constants)
from resnext_det.deploy.runtimes import make_runtime


class ScoreGatedNMS(torch.nn.Module):
    """Rows (score, x0, y0, x1, y1): keep rows scoring > 0.5, then NMS (IoU 0.5) over them."""

    def forward(self, rows):
        scores = rows[:, 0]
        keep = scores > 0.5
        boxes, kept = rows[keep][:, 1:5], scores[keep]
        order = torchvision.ops.batched_nms(boxes, kept, torch.zeros_like(kept, dtype=torch.int64), 0.5)
        return boxes[order], kept[order]


FULL = np.array([[0.9, 0, 0, 10, 10], [0.8, 20, 20, 30, 30], [0.7, 1, 1, 10, 10], [0.1, 0, 0, 1, 1]],
                np.float32)
EMPTY = np.array([[0.1, 0, 0, 1, 1], [0.3, 5, 5, 9, 9]], np.float32)
# what the graph means, per input: (boxes kept, their scores); the third row of FULL overlaps the
# first at IoU 0.81 and is suppressed
EXPECTED = {"full": (np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), np.array([0.9, 0.8], np.float32)),
            "empty": (np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))}


def _exported():
    import onnx

    buf = io.BytesIO()
    torch.onnx.export(ScoreGatedNMS(), torch.from_numpy(FULL), buf, opset_version=17, dynamo=False,
                      input_names=["rows"], output_names=["boxes", "scores"],
                      dynamic_axes={"rows": {0: "n"}, "boxes": {0: "k"}, "scores": {0: "k"}})
    return onnx.load_from_string(buf.getvalue())


def _sequence(run):
    """The graph's answers on empty, full, empty, full, empty."""
    return [(name, run({"rows": x})) for name, x in
            [("empty", EMPTY), ("full", FULL), ("empty", EMPTY), ("full", FULL), ("empty", EMPTY[:1])]]


def _check(answers, label):
    for i, (name, (boxes, scores)) in enumerate(answers):
        want_boxes, want_scores = EXPECTED[name]
        assert boxes.shape == want_boxes.shape and scores.shape == want_scores.shape, \
            f"{label}, call {i} ({name}): got {scores.shape[0]} detections {scores.tolist()}, want {want_scores.shape[0]}"
        np.testing.assert_allclose(boxes, want_boxes)
        np.testing.assert_allclose(scores, want_scores)


def test_export_has_the_pattern_and_the_rewrite_removes_it():
    import onnx

    proto = _exported()
    assert len(empty_branch_constants(proto)) == 1
    assert rewrite_empty_branch_constants(proto) == 1
    assert empty_branch_constants(proto) == []
    assert rewrite_empty_branch_constants(proto) == 0  # idempotent
    onnx.checker.check_model(proto, full_check=True)
    # the replacement: ConstantOfShape inside the branch, driven by the If's condition
    if_node = next(n for n in proto.graph.node if n.op_type == "If")
    then = next(a.g for a in if_node.attribute if a.name == "then_branch")
    assert [n.op_type for n in then.node] == ["Cast", "Constant", "Mul", "ConstantOfShape"]
    assert then.node[0].input[0] == if_node.input[0]


@pytest.mark.parametrize("runtime,options", [("onnxruntime", {}), ("openvino", {"shape_mode": "dynamic"}),
                                             ("openvino", {"shape_mode": "static"}),
                                             ("openvino", {"precision": "bf16"})])
def test_rewritten_graph_answers_each_call_alone(runtime, options):
    proto = _exported()
    rewrite_empty_branch_constants(proto)
    runner = make_runtime(runtime, proto.SerializeToString(), num_threads=1, **options)
    _check(_sequence(lambda feeds: tuple(runner.run_all(feeds))), f"{runtime} {options}")


def test_openvino_runner_rewrites_an_old_export_at_load(tmp_path):
    """A graph written before the rewrite (a file on disk, as an older tools/export.py wrote
    it) is rewritten when OpenVINO loads it; the file itself is left as it was."""
    import onnx

    path = tmp_path / "old.onnx"
    onnx.save(_exported(), str(path))
    before = path.read_bytes()
    runner = make_runtime("openvino", str(path), num_threads=1)
    _check(_sequence(lambda feeds: tuple(runner.run_all(feeds))), "openvino, old file")
    assert path.read_bytes() == before


def test_openvino_ir_of_an_old_export_is_refused_and_a_new_one_runs(tmp_path):
    import openvino as ov

    old, new = _exported(), _exported()
    rewrite_empty_branch_constants(new)
    for name, proto in (("old", old), ("new", new)):
        (tmp_path / f"{name}.onnx").write_bytes(proto.SerializeToString())
        ov.save_model(ov.convert_model(str(tmp_path / f"{name}.onnx")), str(tmp_path / f"{name}.xml"))
    assert empty_branch_constants_ir(ov.Core().read_model(str(tmp_path / "old.xml")))
    assert empty_branch_constants_ir(ov.Core().read_model(str(tmp_path / "new.xml"))) == []
    with pytest.raises(DeployError, match=r"old\.xml.*Re-export"):
        make_runtime("openvino", str(tmp_path / "old.xml"))
    runner = make_runtime("openvino", str(tmp_path / "new.xml"), num_threads=1)
    _check(_sequence(lambda feeds: tuple(runner.run_all(feeds))), "openvino IR")
