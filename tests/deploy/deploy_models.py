"""The small trained detectors the deploy tests share: a tiny ResNeXt FPN and C4 trained
through train_net on synthetic shapes, exported with tools/export.py (``build_trained``,
behind each module's session fixture ``trained``; the modules that use it run on one
pytest-xdist worker, group ``test_deploy_parity``, and a finished export is reused)."""
# Built on the shipped bases (not the demo configs, which change with the demo): a tiny
# ResNeXt (C=4, d=4, BN, from scratch) on 64-px synthetic shapes, jointly trained (FPN 80 iterations: AP about 2.6, enough for AP comparisons not to compare zeros; C4 40, below).
CONFIGS = {"fpn": "Base-ResNeXt-FPN.yaml", "c4": "Base-ResNeXt-C4.yaml"}
COMMON = [
    "RESNEXT_PLAN.MODE", "joint", "RESNEXT_PLAN.SYNTHETIC.ENABLED", "True",
    "RESNEXT_PLAN.SYNTHETIC.NUM_TRAIN", "32", "RESNEXT_PLAN.SYNTHETIC.NUM_VAL", "6",
    "RESNEXT_PLAN.SYNTHETIC.IMAGE_SIZE", "64", "SEED", "0",
    "MODEL.RESNEXT.DEPTH", "50", "MODEL.RESNEXT.CARDINALITY", "4", "MODEL.RESNEXT.BOTTLENECK_WIDTH", "4",
    "MODEL.RESNEXT.STEM_OUT_CHANNELS", "16", "MODEL.RESNEXT.RES2_OUT_CHANNELS", "32",
    "MODEL.RESNEXT.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0",
    "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "300", "MODEL.RPN.PRE_NMS_TOPK_TEST", "300",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
    "SOLVER.MAX_ITER", "80", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.005",
    "SOLVER.STEPS", "(70,)", "SOLVER.WARMUP_ITERS", "10", "SOLVER.CHECKPOINT_PERIOD", "1000",
    "SOLVER.REFERENCE_WORLD_SIZE", "0", "TEST.EVAL_PERIOD", "0", "DATALOADER.NUM_WORKERS", "0",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "20",
]
ARCH_OPTS = {
    "fpn": ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
            "MODEL.ANCHOR_GENERATOR.SIZES", "[[16], [32], [64], [128], [256]]"],
    # C4's AP stays near 0 at this size whether trained 40 or 80 iterations (0.0 / 0.03): its
    # tests compare detections at score threshold 0 and AP eager vs runtime, which any weights
    # test; 12 iterations (past the warmup) cost 4 s less than 40 (res5 runs per RoI)
    "c4": ["MODEL.ANCHOR_GENERATOR.SIZES", "[[16, 32, 64]]", "SOLVER.MAX_ITER", "12", "SOLVER.STEPS", "(11,)"],
}
# (H, W) of the original images: square, landscape, and sizes whose resized form is not
# divisible by 32 (padding inside the graph)
SIZES = [(64, 64), (80, 120), (75, 101)]


def _opts(out, arch):
    return COMMON + ARCH_OPTS[arch] + ["OUTPUT_DIR", str(out)]


def _train_and_export(d, arch):
    """Train ``arch``'s tiny demo model through train_net into ``d`` and export it with
    tools/export.py (FPN: also the NNCF int8 IR and ONNX Runtime's QDQ int8). A folder that
    already holds the finished export is reused: under pytest-xdist a worker may tear a
    session fixture down between two batches of tests and build it again."""
    from resnext_det import cli
    from resnext_det.apps import export as export_cli

    done = d / "deploy" / ("model_int8.onnx" if arch == "fpn" else "model.onnx")
    if done.is_file():
        return
    name = CONFIGS[arch]
    assert cli.cli(["--config", name] + _opts(d, arch)) == 0
    argv = ["--config-file", name, "--output", str(d / "deploy")]
    if arch == "fpn":
        argv += ["--int8", "--calib-images", "8"]
    assert export_cli.cli(argv + _opts(d, arch) + ["MODEL.WEIGHTS", str(d / "model_final.pth")]) == 0
    if arch == "fpn":
        assert export_cli.cli(argv + ["--int8-runtime", "onnxruntime"] + _opts(d, arch) +
                              ["MODEL.WEIGHTS", str(d / "model_final.pth")]) == 0


def build_trained(tmp_path_factory):
    """{arch: (output dir, config name)} of FPN and C4 demo models trained through train_net,
    each exported with tools/export.py to <dir>/deploy/model.onnx (+ for FPN the NNCF int8
    model_int8.xml through --int8, and ONNX Runtime's QDQ model_int8.onnx)."""
    out = {}
    for arch in CONFIGS:
        d = tmp_path_factory.getbasetemp() / f"trained_{arch}"
        d.mkdir(exist_ok=True)
        _train_and_export(d, arch)
        out[arch] = (d, arch)
    return out


def _cfg(d, arch):
    import resnext_det

    cfg = resnext_det.get_cfg()
    cfg.merge_from_file(resnext_det.get_config_file(CONFIGS[arch]))
    cfg.merge_from_list(_opts(d, arch) + ["MODEL.WEIGHTS", str(d / "model_final.pth")])
    return cfg


def _eager(d, arch):
    from resnext_det.deploy.export import build_export_model

    return build_export_model(_cfg(d, arch))


