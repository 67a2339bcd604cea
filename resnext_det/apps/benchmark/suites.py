"""Side-by-side speed of stock detectron2 vs this project's default and fast ResNeXt paths
(docs/FAST_PATH.md, "Benchmark against stock detectron2"; protocol and records: docs/SPEED.md).

Parts, per preset, on one ``state_dict`` (our parameter names are detectron2's): ``backbone``
(res2..res5, FrozenBN), ``fpn`` / ``c4`` (Faster R-CNN on one image), ``train`` (one SGD iteration,
batch 1). Modes: ``stock_a`` / ``stock_b`` (:mod:`resnext_det.apps.stock`), ``default``, ``fast``
(``prepare_for_inference``), ``fast-bf16`` (only where bf16 is native; elsewhere a probe records how
much slower it is) / ``fast-fp16`` (CUDA), one per training ``auto`` layout (``--bf16-train``: also
under bf16 autocast), and with ``--runtimes`` the ONNX (opset 17) export in ``onnxruntime`` /
``openvino`` (``*-raw``: the bare runtime call; ``--int8``: calibrated on random images, speed only).
GFLOP counts are fvcore's multiply-adds x 2; the ceiling is the best large-GEMM rate (2*n^3 / t,
``--gemm-n``) of torch, ONNX Runtime and OpenVINO in the same run.

    python tools/benchmark.py                      # X-101-32x4d all parts + 2 backbones, 800x1333, + runtimes
    python tools/benchmark.py --quick              # 320x512, X-50-32x4d, fewer runs
    python tools/benchmark.py --presets X-50-32x4d X-101-32x4d X-101-32x8d --backbone-presets
"""
from __future__ import annotations

import atexit
import copy
import dataclasses
import importlib.util
import io
import logging
import os
import shutil
import statistics
import tempfile
import time
import warnings

import numpy as np
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.analysis import FlopCountAnalysis as DetectorFlopCountAnalysis
from fvcore.nn import FlopCountAnalysis
from tabulate import tabulate

import resnext_det
from resnext_det.data.synthetic import synthetic_train_batch
from resnext_det.deploy.contract import DeployError
from resnext_det.deploy.export import onnx_bytes, quiet_export, with_contract
from resnext_det.deploy.modes import DEPLOY_MODES, build_predictors, raw_mode, runtime_modes, wrapped_mode
from resnext_det.deploy.quantize import quantize_int8
from resnext_det.deploy.runtimes import make_runtime
from resnext_det.engine.fast import (apply_training_switches, choose_training_layout, cpu_has_native_bf16,
                                     prepare_for_inference)
from resnext_det.engine.fast.auto import CANDIDATES
from resnext_det.hardware import synchronize
from resnext_det.config import load_config
from resnext_det.apps.stock import randomize_frozen_bn, seeded_global_rng, stock_equivalent_cfg, training_iteration

from .protocol import RATIO_BASIS, STOCK_A, STOCK_B, Protocol, environment, path_record, run_rounds

logger = logging.getLogger("benchmark")


def _gemm_gflops(call, n, reps, device="cpu"):
    """Median GFLOP/s (2*n^3/t) of ``call``, an n x n matmul, after two untimed calls."""
    for _ in range(2):
        call()
    ts = []
    for _ in range(reps):
        synchronize(device)
        t = time.perf_counter()
        call()
        synchronize(device)
        ts.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(ts) / 1e9


def matmul_ceiling(dtype, device, n=2048, reps=5):
    """Median GFLOP/s (2*n^3/t) of an n x n matmul."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return _gemm_gflops(lambda: a @ b, n, reps, device), n


def _gemm_onnx(n):
    """An ONNX graph computing A @ B with B an n x n constant (the runtimes' GEMM rate)."""
    # lazy: onnx is the optional deploy extra; without it the benchmark runs the torch modes only
    from onnx import TensorProto, helper, numpy_helper

    b = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n)).astype("float32"), "B")
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "gemm",
                              [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])], [b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def runtime_gemm_ceiling(runtime, precision="fp32", n=2048, reps=5):
    """Median GFLOP/s of an n x n MatMul in ``runtime`` (None when it is not installed)."""
    try:
        runner = make_runtime(runtime, _gemm_onnx(n), precision=precision)
    except (ImportError, DeployError):  # onnx (ImportError) or the runtime (DeployError) not installed
        return None
    a = np.random.default_rng(1).standard_normal((n, n)).astype("float32")
    return _gemm_gflops(lambda: runner.run_all({"A": a}), n, reps)


def runtimes_available(names):
    """The runtimes of ``names`` whose packages import (the deploy extra)."""
    return [r for r in names if importlib.util.find_spec(r) is not None
            and importlib.util.find_spec("onnx") is not None]


class _OutputsAsTuple(torch.nn.Module):
    """A backbone returning its feature maps as a tuple in ``names`` order (what ONNX can return)."""

    def __init__(self, backbone, names):
        super().__init__()
        self.backbone, self.names = backbone, list(names)

    def forward(self, x):
        out = self.backbone(x)
        return tuple(out[k] for k in self.names)


def _backbone_onnx(model, x):
    names = sorted(model.output_shape())
    wrapper = _OutputsAsTuple(model, names).eval()
    buf = io.BytesIO()
    with quiet_export(), torch.no_grad():
        torch.onnx.export(wrapper, (x,), buf, opset_version=17, dynamo=False,
                          input_names=["x"], output_names=names)
    model.eval()
    return buf.getvalue(), names


def _cfg(config_name, preset, device, c4_topk=None, opts=()):
    # --opts after the preset: e.g. a tiny network for a quick check of the tool
    cfg = load_config(resnext_det.get_config_file(config_name), ["MODEL.RESNEXT.PRESET", preset, *opts])
    cfg.MODEL.DEVICE = device.type
    if c4_topk:
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST = c4_topk
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # random heads: keep detections to compare
    return cfg


def _randomize(model, seed=0):
    """Non-trivial FrozenBN statistics (fresh ones are the identity) and a spread box head."""
    g = torch.Generator().manual_seed(seed)
    randomize_frozen_bn(model, g)
    with torch.no_grad():
        box_predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
        if box_predictor is not None:  # spread the scores so rounding cannot reorder them
            box_predictor.cls_score.weight.normal_(0, 0.5, generator=g)
    return model


def _rel_err(ref, out):
    """max |out - ref| / max |ref| over all tensors of the outputs (None if not comparable)."""
    if isinstance(ref, dict):
        errs = [_rel_err(ref[k], out[k]) for k in ref]
        return None if any(e is None for e in errs) else max(errs)
    if isinstance(ref, torch.Tensor):
        if ref.shape != out.shape:
            return None
        return ((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12)).item()
    return None


def _det_err(ref, out):
    """For each output box the nearest reference box (max abs coordinate difference), the worst over
    max |ref box|. Order-free: with random heads, near-equal scores swap ranks under float rounding."""
    a, b = ref[0]["instances"].pred_boxes.tensor, out[0]["instances"].pred_boxes.tensor
    if len(a) != len(b) or len(a) == 0:
        return None
    dist = (b[:, None, :] - a[None, :, :]).abs().amax(dim=2).amin(dim=1)
    return (dist.max() / a.abs().max().clamp_min(1e-12)).item()


def _raw_or_det_err(ref, out):
    """_det_err, also for a bare runtime output ``(boxes, scores, classes)`` (here at the original size)."""
    if isinstance(out, (tuple, list)) and len(out) == 3 and not isinstance(out[0], dict):
        inst = Instances(ref[0]["instances"].image_size)
        inst.pred_boxes = Boxes(torch.as_tensor(out[0]))
        out = [{"instances": inst}]
    return _det_err(ref, out)


def _fvcore_gflop(model, inputs):
    """fvcore multiply-adds x 2, in GFLOP; None if counting fails."""
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if isinstance(inputs, torch.Tensor):
                fca = FlopCountAnalysis(model, inputs)
            else:  # detectron2's variant takes a detector's list-of-dicts input
                fca = DetectorFlopCountAnalysis(model, inputs)
            fca.unsupported_ops_warnings(False)
            fca.uncalled_modules_warnings(False)
            return 2 * fca.total() / 1e9
    except Exception as e:  # pragma: no cover - report, don't die
        logger.warning("fvcore count failed: %s", e)
        return None


def _inference_calls(models, inputs):
    """{name: a call of that model on ``inputs`` without autograd}, for :func:`run_rounds`."""
    return {k: torch.no_grad()(lambda m=m: m(inputs)) for k, m in models.items()}


def _two_stocks(build, default):
    """stock_a and stock_b, two instances with ``default``'s weights (the A/A control), then ``default``."""
    out = {}
    for name in (STOCK_A, STOCK_B):
        out[name] = build()
        out[name].load_state_dict(default.state_dict())
    return {**out, "default": default}


class Bench:
    """One benchmark session (``args``: the parsed command line): each part a :mod:`.protocol` run,
    its records appended to :attr:`records` and its control to :attr:`controls`."""

    def __init__(self, args, device):
        self.args, self.device = args, device
        self.protocol = Protocol(min_rounds=args.min_rounds, max_seconds=args.max_seconds,
                                 max_rounds=args.max_rounds, warmup=args.warmup)
        self.env = environment(device)
        self.records, self.controls = [], []
        self.ceiling = {}
        native = ["bf16"] if cpu_has_native_bf16() else []
        self.precisions = ["fp16", "bf16"] if device.type == "cuda" else native
        self.runtimes = runtimes_available(args.runtimes) if device.type == "cpu" else []
        self.tmp = tempfile.mkdtemp(prefix="resnext_bench_")
        # exported models (hundreds of MB at full size) go when the process ends
        atexit.register(shutil.rmtree, self.tmp, True)

    def _run(self, fns, protocol=None):
        return run_rounds(fns, protocol or self.protocol, sync=lambda: synchronize(self.device))

    def _report(self, name, preset, res, gflop, errf, notes=None, extra=None):
        """One record per path of the run ``res`` (ratios only when its control settled)."""
        self.controls.append({"name": name, "preset": preset, **res.control(), **(extra or {})})
        for mode in res.times:
            rec = path_record(name, preset, mode, res)
            seconds = rec["seconds"]
            err = 0.0 if mode == STOCK_A else errf(res.outputs[STOCK_A], res.outputs[mode])
            rec.update({
                "max_rel_err_vs_stock": err, "gflop": gflop,
                "gflops": (gflop / seconds) if (gflop and seconds) else None,
                "ceiling_gflops": dict(self.ceiling), "image": list(self.args.size),
                "device": self.device.type, "note": (notes or {}).get(mode, ""),
            })
            sp = rec["spread"]
            if rec["gflops"] and self.ceiling.get("fp32"):
                rec["pct_of_fp32_matmul"] = 100 * rec["gflops"] / self.ceiling["fp32"]
                # reduced-precision modes against the best bf16 GEMM, fp32/int8 against fp32's
                key = "bf16" if "bf16" in mode and self.ceiling.get("bf16") else "fp32"
                rec["pct_of_ceiling"] = 100 * rec["gflops"] / self.ceiling[key]
            self.records.append(rec)
            logger.info("%-9s %-12s %-20s %7.3fs [%.3f-%.3f] x%s err=%s", name, preset, mode, seconds,
                        sp["min"], sp["max"], f"{rec['ratio']:.2f}" if rec["ratio"] else "-", err)
        aa = res.aa_ratio
        if not res.settled:
            logger.warning("NOISY: %s %s: A/A control stock_b/stock_a = %s after %d rounds, outside %.2f-%.2f: "
                           "its ratios are not published; re-run on an idle machine (nothing else running)",
                           name, preset, f"{aa:.3f}" if aa else "-", res.rounds, *res.band)

    def _fast_variants(self, default):
        models = {"fast": prepare_for_inference(copy.deepcopy(default), "fp32", self.device)}
        for p in self.precisions:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                models[f"fast-{p}"] = prepare_for_inference(copy.deepcopy(default), p, self.device)
        return models

    def backbone(self, preset):
        cfg = _cfg("faster_rcnn_X50_32x4d_FPN.yaml", preset, self.device, opts=self.args.opts)
        shape = ShapeSpec(channels=3)
        default = _randomize(build_backbone(cfg, shape)).to(self.device).eval().bottom_up
        models = _two_stocks(lambda: build_backbone(stock_equivalent_cfg(cfg), shape).bottom_up.to(self.device)
                             .eval(), default)
        models.update(self._fast_variants(default))
        h, w = self.args.size
        x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(self.device)
        gflop = _fvcore_gflop(models[STOCK_A], x)
        fns = _inference_calls(models, x)
        fns.update(self._backbone_runtimes(default, x))
        self._report("backbone", preset, self._run(fns), gflop, _rel_err)

    def _backbone_runtimes(self, model, x):
        if not self.runtimes:
            return {}
        data, names = _backbone_onnx(model, x)
        xn = x.cpu().numpy()
        fns = {}
        for mode in runtime_modes(self.runtimes, bf16=cpu_has_native_bf16()):
            _, runtime, options = DEPLOY_MODES[mode]
            runner = make_runtime(runtime, data, **options)
            fns[mode] = lambda runner=runner: {k: torch.from_numpy(v) for k, v in zip(names, runner.run_all({"x": xn}))}
        return fns

    def _detector_runtimes(self, cfg, model, image):
        """DeployedPredictor modes and bare runtime calls (``-raw``) on the exported ``model``."""
        if not self.runtimes:
            return {}
        cfg = cfg.clone()
        cfg.defrost()
        h, w = image.shape[1:]
        # the contract's resize leaves the benchmark image as it is (same input as eager)
        cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = min(h, w), max(h, w)
        path = os.path.join(self.tmp, "detector.onnx")
        with open(path, "wb") as f:
            f.write(with_contract(onnx_bytes(copy.deepcopy(model), image), cfg, model))
        int8 = None
        if self.args.int8:
            calib = [torch.randint(0, 256, image.shape, generator=torch.Generator().manual_seed(s))
                     .float().numpy() for s in range(3)]
            int8 = quantize_int8(path, calib, os.path.join(self.tmp, "detector_int8.onnx"))
        modes = runtime_modes(self.runtimes, bf16=cpu_has_native_bf16(), int8=bool(int8))
        # hwc is the stock model's input (INPUT.FORMAT order), not a BGR cv2 image: say so,
        # or the predictor's default BGR would flip it for an RGB model
        preds = build_predictors(path, int8, modes, input_format=cfg.INPUT.FORMAT)
        hwc = np.ascontiguousarray(image.permute(1, 2, 0).numpy().astype(np.uint8))
        chw = np.ascontiguousarray(image.numpy())
        fns = {}
        for mode, p in preds.items():
            fns[mode] = lambda p=p: [p(hwc)]
            if mode in self.runtimes:  # the bare runtime call, for the wrapper's overhead
                fns[raw_mode(mode)] = lambda p=p: p.runner.run(chw)
        return fns

    def detector(self, preset, arch):
        name = {"fpn": "faster_rcnn_X50_32x4d_FPN.yaml", "c4": "faster_rcnn_X50_32x4d.yaml"}[arch]
        topk = self.args.c4_topk if arch == "c4" else None
        cfg = _cfg(name, preset, self.device, topk, self.args.opts)
        with seeded_global_rng(0):  # the same random weights every run; the caller's stream untouched
            default = _randomize(build_model(cfg)).eval()
        models = _two_stocks(lambda: build_model(stock_equivalent_cfg(cfg)).eval(), default)
        models.update(self._fast_variants(default))
        h, w = self.args.size
        image = torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(0)).float()
        inputs = [{"image": image.to(self.device), "height": h, "width": w}]
        gflop = _fvcore_gflop(models[STOCK_A], inputs) if self.args.count_detector_flops else None
        fns = _inference_calls(models, inputs)
        fns.update(self._detector_runtimes(cfg, default, image))
        res = self._run(fns)
        config_topk = load_config(resnext_det.get_config_file(name)).MODEL.RPN.POST_NMS_TOPK_TEST
        # the C4 head runs res5 once per proposal: a smaller POST_NMS_TOPK_TEST is a different workload
        note = f"RPN.POST_NMS_TOPK_TEST={topk} (all paths; the config says {config_topk})" if topk else ""
        notes = {m: note for m in res.times}
        scores = res.outputs[STOCK_A][0]["instances"].scores
        saturated = float((scores >= 0.9999).float().mean()) if len(scores) else 0.0
        if saturated > 0.5:  # random heads on large images: many scores are exactly 1.0
            tie = (f"{100 * saturated:.0f}% of stock's scores are 1.0 (random head): which of the tied "
                   "boxes are kept depends on sort order, so err is not a parity figure for modes "
                   "outside torch (parity: tests/deploy, trained models)")
            for m in res.times:
                if m not in (STOCK_A, STOCK_B, "default") and not m.startswith("fast"):
                    notes[m] = (notes[m] + "; " if notes[m] else "") + tie
        for m in res.times:
            if wrapped_mode(m):
                notes[m] = (note + "; " if note else "") + "bare runtime call (no resize / rescaling); " \
                    f"wrapper overhead = {wrapped_mode(m)} / {m}"
        self._report(arch, preset, res, gflop, _raw_or_det_err, notes,
                     {"post_nms_topk_test": topk or config_topk} if arch == "c4" else None)

    def train(self, preset):
        """One training iteration per candidate layout of the training ``auto`` rule (and ``default``:
        every switch off), against the two stocks."""
        cfg = _cfg("faster_rcnn_X50_32x4d_FPN.yaml", preset, self.device, opts=self.args.opts)
        with seeded_global_rng(0):  # the same random weights every run; the caller's stream untouched
            default = _randomize(build_model(cfg))
        models = _two_stocks(lambda: build_model(stock_equivalent_cfg(cfg)), default)
        autocast = "bf16" if self.device.type == "cuda" or (cpu_has_native_bf16() and self.args.bf16_train) else ""
        for cand, (cl, fold) in CANDIDATES.items():
            if cand != "stock":
                models[cand] = apply_training_switches(copy.deepcopy(default), channels_last=cl,
                                                       fold_frozen_bn=fold, autocast=autocast)
        data = synthetic_train_batch([self.args.size])
        opts = {k: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)
                for k, m in models.items()}

        def step(k):
            return lambda: torch.tensor(training_iteration(models[k], opts[k], data))
        # first-iteration losses (before any step): the equality check of the switches; also the warm-up
        first = {k: step(k)() for k in models}
        res = self._run({k: step(k) for k in models}, dataclasses.replace(self.protocol, warmup=0))
        res.outputs = first
        note = "err = first-iteration loss vs stock_a" + (f"; {autocast} autocast on every candidate" if autocast else "")
        # what auto decides on this machine with the table shipped now (the record may change it)
        choice = choose_training_layout(None, None, device_type=self.device.type)
        self._report("train", preset, res, None, _rel_err, {m: note for m in res.times},
                     {"autocast": autocast, "auto_with_shipped_table": choice.reason})

    def bf16_probe(self):
        """On CPUs without native bf16: one grouped-conv layer, bf16 vs fp32 (why bf16 is skipped)."""
        x = torch.randn(1, 256, 64, 96).contiguous(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(256, 256, 3, padding=1, groups=32).to(memory_format=torch.channels_last)

        def run(dtype):
            def f():
                with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                    return conv(x)
            return f
        res = self._run({"fp32": run(torch.float32), "bf16": run(torch.bfloat16)},
                        Protocol(min_rounds=3, max_rounds=3, warmup=1))
        med = {k: statistics.median(v) for k, v in res.times.items()}
        self.records.append({
            "name": "bf16_probe", "preset": "conv3x3 256ch g32 64x96", "mode": "bf16",
            "seconds": med["bf16"], "fp32_s": med["fp32"], "ratio": None,
            "max_rel_err_vs_stock": None, "gflops": None, "ceiling_gflops": dict(self.ceiling),
            "note": "CPU without native bf16 (no AVX512-BF16/AMX): bf16 fast path not benchmarked; "
                    "fp32_s / seconds = how much slower one bf16 layer is (a probe, not a figure vs stock)",
            "loadavg_at_start": res.loadavg_at_start, "loadavg_at_end": res.loadavg_at_end})


def print_table(records, header):
    """The paths of a run as a table (median, spread, ratio, error, GFLOP/s, share of the ceiling)."""
    def f(v, fmt):
        return "" if v is None else format(v, fmt)
    rows = [[r["name"], r["preset"], r["mode"], f(r["seconds"], ".3f"),
             f"{f((r.get('spread') or {}).get('min'), '.3f')}-{f((r.get('spread') or {}).get('max'), '.3f')}",
             f(r["ratio"], ".2f"), f(r["max_rel_err_vs_stock"], ".1e"), f(r.get("gflops"), ".1f"),
             f(r.get("pct_of_ceiling"), ".0f")] for r in records]
    return header + "\n\n" + tabulate(rows, ["part", "preset", "mode", "s (median)", "min-max", "ratio",
                                            "max rel err", "GFLOP/s", "% ceiling"], tablefmt="github")


def measure(args):
    """Run the parts of ``args`` (:mod:`.cli`); returns the record's ``results`` and its
    ``environment`` (taken before the first part)."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    t0 = time.time()
    b = Bench(args, device)
    n = args.gemm_n
    # the ceiling is the best GEMM of every library at hand, not torch's alone
    b.ceiling["torch_fp32"], _ = matmul_ceiling(torch.float32, device, n=n)
    native_bf16 = device.type == "cuda" or cpu_has_native_bf16()
    # without native bf16 a 2048^2 bf16 matmul takes ~a minute: measure a smaller one
    b.ceiling["torch_bf16"], _ = matmul_ceiling(torch.bfloat16, device, n=n if native_bf16 else min(n, 512),
                                                reps=5 if native_bf16 else 2)
    for r in b.runtimes:
        b.ceiling[f"{r}_fp32"] = runtime_gemm_ceiling(r, "fp32", n=n)
    if "openvino" in b.runtimes and cpu_has_native_bf16():
        b.ceiling["openvino_bf16"] = runtime_gemm_ceiling("openvino", "bf16", n=n)
    b.ceiling["fp32"] = max(v for k, v in b.ceiling.items() if k.endswith("_fp32") and v)
    b.ceiling["bf16"] = max(v for k, v in b.ceiling.items() if k.endswith("_bf16") and v)
    logger.info("matmul ceiling GFLOP/s (n=%d): %s", n, b.ceiling)
    if not native_bf16:
        b.bf16_probe()
    for preset in args.presets:
        for part in args.parts:
            if part == "backbone":
                b.backbone(preset)
            elif part in ("fpn", "c4"):
                b.detector(preset, part)
            elif part == "train":
                b.train(preset)
    for preset in args.backbone_presets:
        if "backbone" in args.parts:
            b.backbone(preset)
    settings = {
        "wall_s": time.time() - t0, "native_bf16": native_bf16,
        "cuda": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "image": list(args.size), "presets": list(args.presets), "parts": list(args.parts), "opts": list(args.opts),
        "protocol": b.protocol.as_dict(), "gemm_n": n, "ceiling_gflops": dict(b.ceiling),
        "published": all(c["settled"] for c in b.controls),
        "noisy_parts": [f"{c['name']} {c['preset']}" for c in b.controls if not c["settled"]],
    }
    return {"aa_control": True, "settings": settings, "controls": b.controls, "paths": b.records}, b.env


def summary(record):
    """The printed table of a benchmark record, with the conditions and, for noisy runs, what to do."""
    env, res = record["environment"], record["results"]
    ceil, image = res["settings"]["ceiling_gflops"], res["settings"]["image"]
    header = (f"{record['command']} | {record['date']} | {env['device']} {env['cpu_kind']} "
              f"({' '.join(env['cpu_flags'])}) x{env['threads']['torch_intra_op']} threads | load avg "
              f"{env['loadavg_at_start']} -> {env['loadavg_at_end']} | {image[0]}x{image[1]} | GEMM ceiling "
              f"GFLOP/s fp32 {ceil['fp32']:.0f}, bf16 {ceil['bf16']:.1f} | ratios vs {RATIO_BASIS}")
    lines = [print_table(res["paths"], header), ""]
    for c in res["controls"]:
        aa = c["aa_ratio"]
        lines.append(f"A/A {c['name']} {c['preset']}: stock_b/stock_a = {aa:.3f} after {c['rounds']} rounds: "
                     + ("settled" if c["settled"] else
                        "NOISY -- ratios not published; re-run on an idle machine (nothing else running)"))
    return "\n".join(lines)
