"""The preprocessing contract of an exported detector, stored in the model file (an ONNX file's
``metadata_props``, an OpenVINO IR's ``rt_info``). The graph takes one resized CHW float32 image in
``input_format`` order and returns ``boxes`` (N x 4, XYXY, in the resized image's pixels), ``scores``
and ``classes`` (int64); the predictor rescales them (docs/DEPLOY.md, "What is in the graph").
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Dict, List

from ..config import UserInputError

# onnx, onnxruntime and openvino (the optional ``deploy`` extra) are imported inside the functions
# that use them, in this whole package: tools/train_net.py imports resnext_det.deploy without them.

__all__ = ["Contract", "DeployError", "CONTRACT_KEY", "read_contract", "load_onnx", "load_openvino_ir",
           "save_openvino_ir", "model_format", "MODEL_FORMATS"]

# The metadata_props key holding the contract as JSON; its presence marks our exports.
CONTRACT_KEY = "resnext_det.contract"
# The same JSON in an OpenVINO IR: rt_info path (written to the .xml's <rt_info>)
IR_CONTRACT_PATH = ["resnext_det", "contract"]
# file suffix -> format; an IR is its .xml (the .bin beside it holds the weights)
MODEL_FORMATS = {".onnx": "onnx", ".xml": "openvino_ir"}
CONTRACT_VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "scores", "classes")
# channel orders DeployedPredictor takes and converts between (DefaultPredictor's two)
INPUT_FORMATS = ("BGR", "RGB")


class DeployError(UserInputError, RuntimeError):
    """An export, a deployed model file or input that cannot work; the message names it and what would."""


def short_error(e: BaseException) -> str:
    """``"TypeName: first line of the message"`` (runtimes and exporters raise multi-line C++ traces)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


@dataclasses.dataclass
class Contract:
    """What a caller must do to an image before the graph, and what the graph returns. Fields are
    the config's keys of the same meaning (``input_format`` = INPUT.FORMAT; ``pixel_mean/std`` are
    applied inside the graph, recorded for checks); ``precision``: how the weights are stored
    ("fp32", "int8"); ``config``: the full config as YAML."""

    input_format: str
    pixel_mean: List[float]
    pixel_std: List[float]
    min_size_test: int
    max_size_test: int
    size_divisibility: int
    num_classes: int
    class_names: List[str] = dataclasses.field(default_factory=list)
    meta_architecture: str = ""
    precision: str = "fp32"
    score_thresh_test: float = 0.05
    nms_thresh_test: float = 0.5
    detections_per_image: int = 100
    opset: int = 17
    config: str = ""
    version: int = CONTRACT_VERSION

    @classmethod
    def from_cfg(cls, cfg, size_divisibility: int, class_names=(), opset: int = 17,
                 meta_architecture: str = "") -> "Contract":
        """The contract of the exported detector's config; ``meta_architecture``: the model's class when
        not the config's (a two-stage plan's ``TwoStageDetector``)."""
        heads = cfg.MODEL.ROI_HEADS
        return cls(input_format=cfg.INPUT.FORMAT, pixel_mean=[float(v) for v in cfg.MODEL.PIXEL_MEAN],
                   pixel_std=[float(v) for v in cfg.MODEL.PIXEL_STD],
                   min_size_test=int(cfg.INPUT.MIN_SIZE_TEST), max_size_test=int(cfg.INPUT.MAX_SIZE_TEST),
                   size_divisibility=int(size_divisibility), num_classes=int(heads.NUM_CLASSES),
                   class_names=[str(c) for c in class_names],
                   meta_architecture=f"{meta_architecture or cfg.MODEL.META_ARCHITECTURE} ({heads.NAME})",
                   score_thresh_test=float(heads.SCORE_THRESH_TEST),
                   nms_thresh_test=float(heads.NMS_THRESH_TEST),
                   detections_per_image=int(cfg.TEST.DETECTIONS_PER_IMAGE), opset=opset, config=cfg.dump())

    def metadata(self) -> Dict[str, str]:
        """metadata_props entries: the whole contract as JSON, plus each field for tools
        (Netron, ``onnx.load(...).metadata_props``) that show them one by one."""
        d = dataclasses.asdict(self)
        each = {f"resnext_det.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in d.items()
                if k != "config"}
        return {CONTRACT_KEY: json.dumps(d), **each}

    def mismatches(self, cfg) -> List[str]:
        """The preprocessing/label settings where ``cfg`` differs from this contract."""
        other = Contract.from_cfg(cfg, self.size_divisibility)
        keys = {"input_format": "INPUT.FORMAT", "pixel_mean": "MODEL.PIXEL_MEAN",
                "pixel_std": "MODEL.PIXEL_STD", "min_size_test": "INPUT.MIN_SIZE_TEST",
                "max_size_test": "INPUT.MAX_SIZE_TEST", "num_classes": "MODEL.ROI_HEADS.NUM_CLASSES"}
        return [f"{key}: model {getattr(self, f)}, config {getattr(other, f)}" for f, key in keys.items()
                if getattr(self, f) != getattr(other, f)]


def _file_error(path: str, why: str) -> DeployError:
    return DeployError(f"{path}: {why}; give a model written by tools/export.py: model.onnx, or "
                       "model_int8.xml with --int8 (python tools/export.py --config-file CFG "
                       "--output DIR MODEL.WEIGHTS W.pth)")


def load_onnx(path: str):
    """``(onnx.ModelProto, Contract)`` of an ``.onnx`` export, checked. FileNotFoundError; DeployError:
    empty, truncated or not ONNX, or without this project's contract (a foreign export)."""
    import onnx  # lazy: the optional deploy extra (see the note at the top)

    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported model {path!r} not found; export one with tools/export.py")
    if os.path.getsize(path) == 0:
        raise _file_error(path, "the file is empty")
    try:
        model = onnx.load(path)
    except Exception as e:  # protobuf DecodeError and friends: truncated or not ONNX at all
        raise _file_error(path, f"not a readable ONNX file (truncated or another format: "
                                f"{short_error(e)})") from None
    if not model.graph.node:
        raise _file_error(path, "not a readable ONNX file (no graph: truncated or another format)")
    contract = _contract_of(model, path)
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise _file_error(path, f"onnx.checker rejects it: {short_error(e)}") from None
    return model, contract


def _contract_of(model, path: str) -> Contract:
    props = {p.key: p.value for p in model.metadata_props}
    if CONTRACT_KEY not in props:
        raise _file_error(path, "an ONNX model without resnext_det's preprocessing contract in its "
                                f"metadata ({CONTRACT_KEY!r}: not exported by this project)")
    return _checked_contract(path, props[CONTRACT_KEY], [i.name for i in model.graph.input],
                             [o.name for o in model.graph.output])


def read_contract_bytes(data: bytes) -> Contract:
    """The contract of serialized ONNX bytes (an export not yet written)."""
    import onnx  # lazy: the optional deploy extra (see the note at the top)

    return _contract_of(onnx.load_from_string(data), "<exported bytes>")


def model_format(path: str) -> str:
    """"onnx" or "openvino_ir" by the file's suffix (DeployError for another)."""
    fmt = MODEL_FORMATS.get(os.path.splitext(str(path))[1].lower())
    if fmt is None:
        raise DeployError(f"{path}: not an exported model file; give model.onnx (tools/export.py) or "
                          "an OpenVINO IR model_int8.xml (tools/export.py --int8)")
    return fmt


def _checked_contract(path: str, text: str, names_in: List[str], names_out: List[str]) -> Contract:
    """The contract stored as JSON ``text`` in an export whose graph has the detector's input and output names."""
    try:
        data = json.loads(text)
        fields = {f.name for f in dataclasses.fields(Contract)}
        contract = Contract(**{k: v for k, v in data.items() if k in fields})
    except (ValueError, TypeError) as e:
        raise _file_error(path, f"its {CONTRACT_KEY!r} metadata is unreadable ({e})") from None
    if names_in != [INPUT_NAME] or tuple(names_out) != OUTPUT_NAMES:
        raise _file_error(path, f"graph inputs {names_in} / outputs {names_out}; expected "
                                f"[{INPUT_NAME!r}] / {list(OUTPUT_NAMES)}")
    return contract


def load_openvino_ir(path: str):
    """``(openvino.Model, Contract)`` of an exported IR (``.xml`` with its ``.bin``), checked as
    :func:`load_onnx` checks (FileNotFoundError also for a missing ``.bin``)."""
    import openvino as ov  # lazy: the optional deploy extra (see the note at the top)

    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported model {path!r} not found; write one with tools/export.py --int8")
    weights = os.path.splitext(path)[0] + ".bin"
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{path}: its weights file {weights!r} is missing (an IR is the .xml "
                                "and the .bin beside it)")
    try:
        model = ov.Core().read_model(path)
    except Exception as e:  # truncated XML, foreign file
        raise _file_error(path, f"OpenVINO cannot read it ({short_error(e)})") from None
    if not model.has_rt_info(IR_CONTRACT_PATH):
        raise _file_error(path, "an OpenVINO IR without resnext_det's preprocessing contract in its "
                                f"rt_info ({'/'.join(IR_CONTRACT_PATH)}: not exported by this project)")
    contract = _checked_contract(path, model.get_rt_info(IR_CONTRACT_PATH).astype(str),
                                 [i.get_any_name() for i in model.inputs], [o.get_any_name() for o in model.outputs])
    return model, contract


def save_openvino_ir(model, contract: Contract, path: str) -> str:
    """Write ``model`` (an ``openvino.Model``) as ``path`` (.xml) + .bin with ``contract`` in its
    rt_info. Both files are written to temporary names and renamed into place, .bin first, so
    a reader never finds a new .xml beside an old .bin."""
    import openvino as ov  # lazy: the optional deploy extra (see the note at the top)

    if model_format(path) != "openvino_ir":
        raise DeployError(f"{path}: an OpenVINO IR is written to a .xml path (weights go to the .bin beside it)")
    model.set_rt_info(json.dumps(dataclasses.asdict(contract)), IR_CONTRACT_PATH)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".ir-") as tmp:
        tmp_xml = os.path.join(tmp, "model.xml")
        # int8 weights are stored as int8 by NNCF; fp32 constants stay fp32 (no fp16 rounding)
        ov.save_model(model, tmp_xml, compress_to_fp16=False)
        os.replace(os.path.join(tmp, "model.bin"), os.path.splitext(path)[0] + ".bin")
        os.replace(tmp_xml, path)
    return path


def read_contract(path: str) -> Contract:
    """The contract stored in an exported file, ONNX or OpenVINO IR (errors: :func:`load_onnx`)."""
    return (load_openvino_ir if model_format(path) == "openvino_ir" else load_onnx)(path)[1]


def expected_image_message(input_format: str) -> str:
    """What ``DeployedPredictor`` with ``input_format`` (its caller's, not the model's) accepts."""
    how = ("cv2.imread's order; input_format='RGB' for RGB arrays" if input_format == "BGR"
           else "as set by input_format='RGB'; the default is BGR, cv2.imread's order")
    return f"an HxWx3 uint8 numpy array in {input_format} channel order ({how}; H, W >= 1)"
