"""The command line of ``tools/train_net.py``: train (the plan's stages), ``--eval-only``,
``--dry-run`` and the embedded ``--demo`` (docs/TRAINING.md, docs/DEMOS.md). Flags follow
detectron2's ``default_argument_parser``; trailing ``KEY VALUE`` pairs override the config.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import tempfile
import time

import torch
import torch.multiprocessing as mp
import yaml
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import resnext_det
from resnext_det._warnings import filter_known_third_party_warnings
from resnext_det.apps.evaluate import (check_exported_model, evaluate_exported, export_and_evaluate,
                                        is_exported_model)
from resnext_det.apps.tool import run_tool, tool_error
from resnext_det.config import USER_ERRORS, ResNeXtConfigError, check_device, load_config, resolve_config_file
from resnext_det.data.coco import verify_dataset_files
from resnext_det.data.synthetic import DEMO_CONFIGS
from resnext_det.deploy.contract import DeployError
from resnext_det.engine.checks import TrainingConfigError
from resnext_det.engine.machines import (DEFAULT_TIMEOUT, MachineError, MachineGroup, one_line,
                                         read_worker_failures, write_worker_failure)
from resnext_det.engine.plan import build_plan, final_stage, plan_summary, resolve_datasets
from resnext_det.engine.plan_runner import PlanState, prepare_datasets, run_plan, stage_figures
from resnext_det.engine.pretrain import pretrained_weights_path
from resnext_det.engine.trainer import (NonFiniteLossError, ResNeXtTrainer, load_checkpoint,
                                        validate_for_workers)
from resnext_det.weights import WeightsError

logger = logging.getLogger("resnext_det.train_net")
PROG = "train_net.py"  # the name error lines start with


def get_parser():
    """detectron2's parser plus the project's flags."""
    parser = default_argument_parser()
    parser.add_argument("--config", dest="config_file", metavar="FILE",
                        help="same as --config-file")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved plan (all stages) as YAML and exit")
    parser.add_argument("--demo", nargs="?", const="fpn", choices=sorted(DEMO_CONFIGS),
                        help="embedded CPU demo: synthetic data, tiny ResNeXt, AP and pictures "
                             "('fpn' = joint FPN, default; 'two_stage' = the paper's schedule "
                             "in miniature)")
    parser.add_argument("--runtime", choices=("auto", "onnxruntime", "openvino"), default="auto",
                        help="with --eval-only and MODEL.WEIGHTS *.onnx / *.xml (int8 IR): the "
                             "inference runtime (default auto: the one measured fastest on this "
                             "CPU kind, printed with its reason; an .xml runs in openvino)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "default"), default="fp32",
                        help="with --eval-only and MODEL.WEIGHTS *.onnx: fp32 (default, parity "
                             "with eager), bf16 (OpenVINO on CPUs with native bf16) or the "
                             "runtime's own default (printed)")
    parser.add_argument("--machine-timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="with --num-machines > 1: how long a machine waits for another to "
                             "join, or for its next sign of life, before it stops the whole run "
                             f"with one line naming it (default {DEFAULT_TIMEOUT:.0f})")
    return parser


def add_demo_config(cfg):
    """Add ``RESNEXT_PLAN.DEMO`` (in place): what the report of a finished ``--demo`` run shows."""
    d = cfg.RESNEXT_PLAN.DEMO = CfgNode()
    d.NUM_IMAGES = 6  # val images to draw detections on
    d.SCORE_THRESH = 0.5  # of the drawn detections
    d.EXPORT = True  # also export the detector to ONNX and give its AP through ONNX Runtime


def setup_cfg(args):
    """The config from --config (or --demo) and trailing opts."""
    config_file = args.config_file
    if not config_file and getattr(args, "demo", None):
        config_file = resnext_det.get_config_file(DEMO_CONFIGS[args.demo])
    if not config_file:
        raise ResNeXtConfigError("give --config FILE (or --demo)")
    demo = getattr(args, "demo", None) or os.path.basename(config_file) in DEMO_CONFIGS.values()
    cfg = load_config(config_file, args.opts, add_nodes=add_demo_config if demo else None)
    if args.config_file:
        args.config_file = resolve_config_file(config_file)  # the resolved path (default_setup reads it again)
    if getattr(args, "demo", None) and not any(o == "OUTPUT_DIR" for o in (args.opts or [])[::2]):
        cfg.OUTPUT_DIR = os.path.join("output", f"demo_{args.demo}")
    check_device(cfg)
    cfg.freeze()
    return cfg


def _final_detector_cfg(cfg, weights):
    """The plan's final detector config (frozen) with MODEL.WEIGHTS ``weights``."""
    scfg = final_stage(build_plan(cfg)).cfg.clone()
    scfg.defrost()
    scfg.MODEL.WEIGHTS = weights
    if is_exported_model(weights):
        scfg.MODEL.LOAD_PROPOSALS = False  # it makes its own proposals
    scfg.freeze()
    return scfg


def evaluate_only(cfg, resume=False, runtime="auto", precision="fp32"):
    """COCO AP of MODEL.WEIGHTS (or, with ``resume``, the last checkpoint) with the plan's final
    detector config; an exported ``.onnx`` / ``.xml`` runs through ``runtime`` at ``precision``."""
    scfg = _final_detector_cfg(cfg, cfg.MODEL.WEIGHTS)
    if is_exported_model(scfg.MODEL.WEIGHTS):
        try:
            return evaluate_exported(scfg, scfg.MODEL.WEIGHTS, runtime=runtime, precision=precision)
        except DeployError as e:
            raise WeightsError(f"MODEL.WEIGHTS: {e}") from None
    model = ResNeXtTrainer.build_model(scfg)
    load_checkpoint(model, scfg, scfg.MODEL.WEIGHTS, resume=resume)
    return ResNeXtTrainer.test(scfg, model)


def main(args, trainer_cls=None):
    """Per-process entry (what launch() runs). In a worker of several, the project's errors print
    one line (or go to the launcher's report) and exit; in-process, ``cli`` reports them."""
    filter_known_third_party_warnings()  # a spawned worker is a new process
    if comm.get_world_size() <= 1:
        return _main(args, trainer_cls)
    # several machines: the launcher prints the one line (naming the machine) from a report
    report = getattr(args, "machines_report", None)
    try:
        return _main(args, trainer_cls)
    except USER_ERRORS + (NonFiniteLossError,) as e:
        code = 2 if isinstance(e, USER_ERRORS) else 1
        if report:
            write_worker_failure(report["folder"], comm.get_rank(), e, user_error=True, exit_code=code)
        else:
            tool_error(f"{PROG} (worker {comm.get_rank()})", e)
        sys.exit(code)
    except Exception as e:  # a bug, or a peer that went away: no traceback wall on the console
        if not report:
            raise
        write_worker_failure(report["folder"], comm.get_rank(), e, user_error=False, exit_code=1,
                             traceback_dir=report["traceback_dir"])
        sys.exit(1)


def _main(args, trainer_cls=None):
    cfg = setup_cfg(args)
    default_setup(cfg, args)  # sets cudnn.benchmark from CUDNN_BENCHMARK, for training only
    if args.eval_only:
        # the library leaves process-wide settings alone; evaluation honours the key too
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="resnext_det",
                 abbrev_name="resnext")
    logging.getLogger("resnext_det").propagate = True  # also to handlers set up on the root logger
    prepare_datasets(cfg)
    if args.eval_only:
        return evaluate_only(cfg, resume=args.resume, runtime=args.runtime, precision=args.precision)
    return run_plan(cfg, resume=args.resume, trainer_cls=trainer_cls)


def check_files(cfg, args):
    """Before any process starts: every needed input is on disk, or one clear message."""
    base = resolve_datasets(cfg)
    if args.eval_only:
        stage = _final_detector_cfg(cfg, "" if args.resume else cfg.MODEL.WEIGHTS)
        verify_dataset_files(stage, train=False)
        if is_exported_model(stage.MODEL.WEIGHTS):
            try:
                check_exported_model(stage, stage.MODEL.WEIGHTS)
            except DeployError as e:
                raise WeightsError(f"MODEL.WEIGHTS: {e}") from None
        return
    verify_dataset_files(base)
    for st in build_plan(cfg):
        if st.kind == "train" and st.cfg.MODEL.WEIGHTS != base.MODEL.WEIGHTS:
            verify_dataset_files(st.cfg, train=False, test=False)  # a stage's own WEIGHTS


def print_demo_report(cfg, args, seconds):
    """Pictures of a finished demo run and each stage's figures printed; returns ``(AP, picture
    paths, plot path)``."""
    # lazy: slow to import, and only a finished --demo run draws
    from resnext_det.apps.demo import draw_detections, plot_metrics

    stages = build_plan(cfg)
    final = final_stage(stages)
    state = PlanState(cfg.OUTPUT_DIR).load()
    figures = stage_figures(state.data["results"])
    ap = figures.get("box_AP", float("nan"))
    scfg = _final_detector_cfg(cfg, os.path.join(final.output_dir, "model_final.pth"))
    demo = cfg.RESNEXT_PLAN.DEMO
    pics = draw_detections(scfg, scfg.DATASETS.TEST[0], os.path.join(cfg.OUTPUT_DIR, "pictures"),
                           num_images=demo.NUM_IMAGES, score_thresh=demo.SCORE_THRESH)
    labels = {"rpn_AR@100": ("stage 1 (RPN) AR@100 x100", 100),
              "oracle_box_AP": ("stage 2 AP, GT boxes as proposals (oracle)", 1),
              "shuffled_box_AP": ("stage 2 AP, another image's proposals (control)", 1)}
    lines = {label: scale * figures[key] for key, (label, scale) in labels.items() if key in figures}
    plot = plot_metrics({s.name: os.path.join(s.output_dir, "metrics.json")
                         for s in stages if s.kind == "train"},
                        os.path.join(cfg.OUTPUT_DIR, "pictures", "losses_and_ap.png"), figures=lines)
    test = scfg.DATASETS.TEST[0]
    print(f"\nDemo ({args.demo}) finished in {seconds:.0f} s: COCO box AP on {test} = {ap:.1f}")
    if cfg.RESNEXT_PLAN.PRETRAIN.ENABLED:
        info_path = pretrained_weights_path(resolve_datasets(cfg)) + ".json"
        if os.path.isfile(info_path):
            with open(info_path) as f:
                info = json.load(f)["results"]
            print(f"  pretraining (miniature ImageNet): top-1 {info['top1']:.1f}% on val crops, "
                  f"{info['seconds']:.0f} s -> {info['weights']} (torchvision format)")
    if "rpn_AR@100" in figures:
        print(f"  stage 1 (RPN) proposals on {test}: AR@100 {figures['rpn_AR@100']:.3f}, AR@1000 "
              f"{figures['rpn_AR@1000']:.3f}; recall@100 at IoU 0.5 "
              f"{figures['rpn_recall@100_IoU0.5']:.3f}, at IoU 0.7 {figures['rpn_recall@100_IoU0.7']:.3f}")
    if "box_AP" in figures:
        print(f"  {'stage 2 (Fast R-CNN)' if final.name == 'fast_rcnn' else 'detector'}: box AP "
              f"{figures['box_AP']:.1f}, AP50 {figures['box_AP50']:.1f}")
    for key, proposals in (("oracle_box_AP", "ground-truth boxes as proposals (oracle)"),
                           ("shuffled_box_AP", "each image given another image's proposals (control)")):
        if key in figures:
            print(f"  stage 2 with {proposals}: box AP {figures[key]:.1f}")
    runnable = scfg.MODEL.WEIGHTS if final.name != "fast_rcnn" else ""  # stage 2 needs proposals
    if cfg.RESNEXT_PLAN.DEMO.EXPORT:
        dep = export_and_evaluate(cfg, os.path.join(cfg.OUTPUT_DIR, "deploy"))
        print(f"  exported to ONNX: {dep['path']}: box AP {dep['results']['bbox']['AP']:.1f} through "
              f"ONNX Runtime (eager {ap:.1f})")
        runnable = dep["path"]  # the whole detector (a two-stage plan's too) in one graph
    print(f"  detections: {pics[0]}  (+{len(pics) - 1} single images)")
    print(f"  losses and AP plot: {plot}")
    print(f"  metrics: {os.path.join(final.output_dir, 'metrics.json')}, results JSON: "
          f"{os.path.join(final.output_dir, 'inference', 'eval_results.json')}, stage figures: "
          f"{state.path}")
    if runnable:
        config = DEMO_CONFIGS[args.demo] if args.demo and not args.config_file else args.config_file
        synthetic = resolve_datasets(cfg).RESNEXT_PLAN.SYNTHETIC
        data = os.path.join(synthetic.ROOT, "val") if synthetic.ENABLED else "PICTURES"
        print(f"  run it on pictures, folders or videos: python tools/predict.py --config-file {config} "
              f"--input {data} --output {os.path.join(cfg.OUTPUT_DIR, 'predict')} MODEL.WEIGHTS {runnable}")
    return ap, pics, plot


def validate_plan_solvers(cfg, world_size):
    """Every training stage's SOLVER values work on ``world_size`` workers (else naming the stage)."""
    for st in build_plan(cfg):
        if st.kind != "train":
            continue
        try:
            validate_for_workers(st.cfg, world_size)
        except TrainingConfigError as e:
            where = "" if st.name == "detector" else (
                f" [plan stage '{st.name}': set RESNEXT_PLAN.{st.name.upper()}.* for its solver]")
            raise TrainingConfigError(f"{e}{where}") from None


def _default_demo_name(argv):
    """``--demo KEY VALUE ...``: the default demo with overrides (argparse would take KEY for its name)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, a in enumerate(argv):
        if a == "--demo" and i + 1 < len(argv) and argv[i + 1] not in DEMO_CONFIGS \
                and not argv[i + 1].startswith("-"):
            return argv[: i + 1] + ["fpn"] + argv[i + 1:]
    return argv


def cli(argv=None, trainer_cls=None):
    """The command line: returns the exit status (0 ok, 2 bad input, 1 diverged or another machine
    failed). ``trainer_cls``: what each worker trains with (default ResNeXtTrainer)."""
    return run_tool(PROG, functools.partial(_cli, trainer_cls=trainer_cls), argv)


def _cli(argv, trainer_cls=None):
    args = get_parser().parse_args(_default_demo_name(argv))
    try:
        return _run(args, trainer_cls)
    except MachineError as e:
        tool_error(PROG, e)
        return 1
    except NonFiniteLossError as e:
        tool_error(PROG, f"training diverged: {e}")
        return 1
    except mp.ProcessExitedException as e:  # workers exited (their message is already on stderr)
        if e.exit_code in (1, 2):
            return e.exit_code
        if e.signal_name:  # e.g. SIGKILL (OOM killer)
            tool_error(PROG, f"training process {e.error_index} of {args.num_gpus} was killed "
                             f"({e.signal_name}); the others were stopped. Rerun the same command "
                             "with --resume to continue from the last checkpoint")
            return 1
        raise


def _run(args, trainer_cls=None):
    cfg = setup_cfg(args)
    world_size = args.num_gpus * args.num_machines
    if not args.eval_only:  # bad solver values fail before any process starts
        validate_plan_solvers(cfg, world_size)
    if args.dry_run:
        summary = plan_summary(cfg, world_size)
        if not cfg.MODEL.WEIGHTS and not cfg.RESNEXT_PLAN.PRETRAIN.ENABLED:
            summary["config"]["note"] = ("MODEL.WEIGHTS is empty: stages start from random "
                                         "init; the paper starts each from ImageNet weights")
        print(yaml.safe_dump(summary, sort_keys=False, default_flow_style=None, width=100))
        return 0
    start = time.perf_counter()
    if args.num_machines > 1:
        return _cli_machines(cfg, args, trainer_cls, start)
    prepare_inputs(cfg, args)
    _set_cpu_worker_threads(cfg, args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args, trainer_cls))
    if args.demo and not args.eval_only:
        print_demo_report(cfg, args, time.perf_counter() - start)
    return 0


def prepare_inputs(cfg, args):
    """Before this machine's workers start: the plan's inputs made and every input checked."""
    if cfg.RESNEXT_PLAN.PRETRAIN.ENABLED:
        setup_logger(name="resnext_det.engine.pretrain", abbrev_name="resnext.pretrain")
    prepare_datasets(cfg)
    check_files(cfg, args)


def _set_cpu_worker_threads(cfg, args):
    if args.num_gpus > 1 and cfg.MODEL.DEVICE == "cpu":
        # CPU worker processes share the cores: their OpenMP threads must sleep, not spin, and
        # split the cores (spawned workers read the environment at start)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.num_gpus)))


@contextlib.contextmanager
def _environ(values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _check_shared_output_dir(cfg, args, group):
    """A plan of several stages and --resume need one OUTPUT_DIR for all machines."""
    needs = len(build_plan(cfg)) > 1 or args.resume
    if needs and not group.sees_folder_of_machine_0(cfg.OUTPUT_DIR):
        why = ("--resume reads the last checkpoint on every worker" if args.resume else
               "stage 2 of the plan reads what every worker wrote in stage 1")
        raise TrainingConfigError(
            f"OUTPUT_DIR {cfg.OUTPUT_DIR!r} is not the folder machine 0 writes ({why}); give "
            "every machine the same shared folder (e.g. on NFS) as OUTPUT_DIR")


def _cli_machines(cfg, args, trainer_cls, start):
    """One machine of ``--num-machines``: join the group, prepare and check its inputs, wait until
    every machine is ready, train; a failure anywhere stops every machine with one line."""
    group = MachineGroup(args.dist_url, args.num_machines, args.machine_rank,
                         args.machine_timeout).connect()
    me = group.who(args.machine_rank)
    try:
        prepare_inputs(cfg, args)  # on every machine: its own inputs, or the shared ones
        _check_shared_output_dir(cfg, args, group)
    except USER_ERRORS as e:  # one line here and on every other machine
        reason = f"cannot start: {one_line(e, limit=4000)}"
        group.fail(reason)
        group.leave()
        tool_error(PROG, f"{me} failed: {reason}")
        return 2
    group.wait_until_ready()
    _set_cpu_worker_threads(cfg, args)
    with tempfile.TemporaryDirectory(prefix="resnext_det_workers_") as folder:
        args.machines_report = {"folder": folder, "traceback_dir": cfg.OUTPUT_DIR}
        try:
            with _environ(group.worker_env()):
                launch(main, args.num_gpus, num_machines=args.num_machines,
                       machine_rank=args.machine_rank, dist_url=args.dist_url,
                       args=(args, trainer_cls))
        except Exception as e:  # a worker of this machine ended badly
            if group.is_stopping():  # the watchdog stopped them: its one line is said, it exits
                group.await_verdict()
            reports = read_worker_failures(folder)
            own = [r for r in reports if not r["lost_peer"]]
            lost_peer = bool(reports) and not own or (not reports and any(
                t in str(e) for t in ("Connection reset by peer", "Connection closed by peer")))
            if lost_peer:  # another machine went away: the watchdog names it (and exits)
                group.await_verdict(peer_lost=True)
            reason = (own[0]["reason"] if own else reports[0]["reason"] if reports
                      else f"a worker process ended: {one_line(e)}")
            if lost_peer:
                reason = f"lost contact with the other machines ({reason})"
            group.fail(reason)
            group.leave()
            tool_error(PROG, f"{me} failed: {reason}")
            return own[0]["exit_code"] if own else 1
    group.finish()
    if args.demo and args.machine_rank == 0 and not args.eval_only:
        print_demo_report(cfg, args, time.perf_counter() - start)
    return 0
