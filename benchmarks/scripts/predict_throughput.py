"""tools/predict.py's throughput against detectron2's own demo loop, and over Ray (a
``predict-throughput`` record of benchmarks/schema.json in benchmarks/<kind>/predict-throughput.json).
Development tool, not part of the package.

    python benchmarks/scripts/predict_throughput.py --images 32 --ray-images 8

A folder of JPEGs at 800x1333-class sizes (scikit-image's photographs, resized); the X-101-32x4d
FPN detector with random weights (seeded), exported to ONNX; stock detectron2 built from the
same weights. Interleaved: the stock loop (DefaultPredictor + read_image + Visualizer + imwrite,
what detectron2's demo/demo.py does), tools/predict.py with the exported model (its default
runtime), the stock loop again (the A/A control). Then Ray: the plain command, 1 actor x 2 CPUs,
2 actors x 1 CPU on fewer pictures, and Ray's own start-up (init + shutdown).
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

SIZES = [(800, 1333), (800, 1200), (1067, 800), (800, 1066), (800, 1333), (1333, 800), (800, 1280), (900, 1333)]


def make_pictures(folder, count):
    import cv2
    import skimage.data as data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        h, w = SIZES[i % len(SIZES)]
        img = cv2.resize(photos[i % len(photos)][:, :, ::-1], (w, h), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(os.path.join(folder, f"{i:03d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return sorted(os.path.join(folder, f) for f in os.listdir(folder))


def stock_loop(cfg, pictures, out):
    """detectron2's demo/demo.py, reduced to its loop: read, predict, draw, write."""
    import cv2
    from detectron2.data import MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.engine import DefaultPredictor
    from detectron2.utils.visualizer import Visualizer

    start = time.perf_counter()  # the whole command, model loading included, as for tools/predict.py
    predictor = DefaultPredictor(cfg)
    meta = MetadataCatalog.get("coco_2017_val")
    os.makedirs(out, exist_ok=True)
    for path in pictures:
        img = read_image(path, format="BGR")
        inst = predictor(img)["instances"].to("cpu")
        vis = Visualizer(img[:, :, ::-1], meta).draw_instance_predictions(inst[inst.scores >= 0.5])
        cv2.imwrite(os.path.join(out, os.path.basename(path)), vis.get_image()[:, :, ::-1])
    return time.perf_counter() - start


def predict_command(config, folder, out, weights, *extra):
    from resnext_det.apps import predict as predict_app

    args = predict_app.get_parser().parse_args(["--config-file", config, "--input", folder, "--output", out, *extra,
                                                "MODEL.WEIGHTS", weights])
    start = time.perf_counter()
    summary = predict_app.run(args)
    return time.perf_counter() - start, summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--ray-images", type=int, default=8)
    ap.add_argument("--out", default="")
    a = ap.parse_args()

    import torch
    from detectron2.modeling import build_model

    from resnext_det.apps.benchmark.protocol import environment, record_path, write_record
    from resnext_det.apps.stock import stock_equivalent_cfg
    from resnext_det.config import load_config
    from resnext_det.deploy.export import build_export_model, export_onnx

    env = environment()
    work = tempfile.mkdtemp(prefix="predict_bench_")
    config = "faster_rcnn_X101_32x4d_FPN.yaml"
    opts = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "800", "INPUT.MAX_SIZE_TEST", "1333", "MODEL.WEIGHTS", ""]
    cfg = load_config(config, opts)
    torch.manual_seed(0)
    ours = build_export_model(cfg)
    export_onnx(cfg, os.path.join(work, "deploy"), model=ours)
    onnx_path = os.path.join(work, "deploy", "model.onnx")
    scfg = stock_equivalent_cfg(cfg)
    stock = build_model(scfg)
    stock.load_state_dict(ours.state_dict())
    torch.save({"model": stock.state_dict()}, os.path.join(work, "stock.pth"))
    scfg.defrost()
    scfg.MODEL.WEIGHTS = os.path.join(work, "stock.pth")
    scfg.freeze()
    del ours, stock
    pictures = make_pictures(os.path.join(work, "pictures"), a.images)
    record = {"images": a.images, "sizes": sorted({tuple(map(int, s)) for s in SIZES}),
              "model": "X-101-32x4d FPN Faster R-CNN, random weights (seed 0), MIN/MAX_SIZE_TEST 800/1333"}
    load_before_loops = list(os.getloadavg())
    stock_a = stock_loop(scfg, pictures, os.path.join(work, "stock_a"))
    ours_s, summary = predict_command(config, os.path.join(work, "pictures"), os.path.join(work, "ours"), onnx_path)
    stock_b = stock_loop(scfg, pictures, os.path.join(work, "stock_b"))
    record["interleaved"] = {
        "stock_demo_loop_a_s": round(stock_a, 2), "predict_default_s": round(ours_s, 2),
        "stock_demo_loop_b_s": round(stock_b, 2), "aa_control": round(stock_b / stock_a, 4),
        "predict_runtime": summary["runtime"], "predict_precision": summary["precision"],
        "predict_predictor_s": summary["predictor_seconds"],
        "speedup_vs_stock_loop": round((stock_a + stock_b) / 2 / ours_s, 3),
        "predict_model_load_s": summary["model_load_seconds"],
        "command_overhead_vs_predictor": round(ours_s / summary["predictor_seconds"] - 1, 4),
        "command_overhead_vs_predictor_after_loading": round(
            (ours_s - summary["model_load_seconds"]) / summary["predictor_seconds"] - 1, 4),
        "seconds_per_image": {"stock": round((stock_a + stock_b) / 2 / a.images, 3),
                              "predict": round(ours_s / a.images, 3)},
        "noisy": abs(stock_b / stock_a - 1) > 0.05, "loadavg_at_start": load_before_loops}
    print(json.dumps(record["interleaved"], indent=1), flush=True)

    if a.ray_images:
        import ray

        few = os.path.join(work, "few")
        os.makedirs(few)
        for p in pictures[:a.ray_images]:
            os.symlink(p, os.path.join(few, os.path.basename(p)))
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 _node_ip_address="127.0.0.1")
        ray.shutdown()
        startup = time.perf_counter() - start
        runs = {}
        for name, extra in (("plain command, 2 threads", []),
                            ("ray, 1 actor x 2 CPUs", ["--ray", "--ray-actors", "1", "--ray-cpus-per-actor", "2"]),
                            ("ray, 2 actors x 1 CPU", ["--ray", "--ray-actors", "2", "--ray-cpus-per-actor", "1"])):
            s, summ = predict_command(config, few, os.path.join(work, "ray_" + str(len(runs))), onnx_path, *extra)
            runs[name] = {"wall_s": round(s, 2), "images_per_s": round(a.ray_images / s, 4)}
            print(name, runs[name], flush=True)
        record["ray"] = {"images": a.ray_images, "ray_init_and_shutdown_s": round(startup, 2), "runs": runs,
                         "ray_version": ray.__version__}
    out = a.out or record_path(ROOT, env["cpu_kind"], "predict-throughput")
    write_record(out, "predict-throughput", record, env,
                 what="tools/predict.py's throughput against detectron2's own demo loop (interleaved, the stock "
                      "loop twice: the A/A control), and over Ray",
                 command="python benchmarks/scripts/predict_throughput.py " + " ".join(sys.argv[1:]))
    print("written", out)


if __name__ == "__main__":
    main()
