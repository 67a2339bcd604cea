"""tools/predict.py (resnext_det.apps.predict): a detector on real photographs (scikit-image's,
re-encoded with EXIF orientation and odd modes), folders, globs and a video; each picture's
detections are those of the predictor on detectron2's ``read_image`` of it; unreadable files
are listed with their reason and the run goes on; a SIGKILLed run started again ends with the
same predictions.json (started as tools/demo.py, then again without Ray imported); video
frames give what single pictures give; Ray actors give what one process gives. The model is a
tiny FPN with random weights (detections are plentiful and arbitrary: these tests check the
plumbing; tests/deploy/test_predict_ap.py checks the AP)."""
import io
import json
import os
import signal
import sys
import time

import numpy as np
import pytest

from resnext_det.apps import predict as predict_app

import zygote
from conftest import ALL_CPUS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.xdist_group("test_predict")
CONFIG = "Base-ResNeXt-FPN.yaml"
# a tiny FPN (C=4, d=4), 3 classes, test images resized to 64..128 px
TINY = ["MODEL.RESNEXT.PRESET", "", "MODEL.RESNEXT.DEPTH", "50", "MODEL.RESNEXT.CARDINALITY", "4",
        "MODEL.RESNEXT.BOTTLENECK_WIDTH", "4", "MODEL.RESNEXT.STEM_OUT_CHANNELS", "16",
        "MODEL.RESNEXT.RES2_OUT_CHANNELS", "32", "MODEL.RESNEXT.NORM", "BN", "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
        "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
        "TEST.DETECTIONS_PER_IMAGE", "10", "DATASETS.TEST", "()", "DATASETS.TRAIN", "()"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(folder, checkpoint, model.onnx) of the tiny FPN with random weights (seeded)."""
    import torch

    from resnext_det.config import load_config
    from resnext_det.deploy.export import build_export_model, export_onnx

    d = tmp_path_factory.mktemp("model")
    cfg = load_config(CONFIG, TINY)
    torch.manual_seed(0)
    net = build_export_model(cfg)
    torch.save({"model": net.state_dict()}, d / "model.pth")
    export_onnx(cfg, str(d), model=net)
    return d, str(d / "model.pth"), str(d / "model.onnx")


def _jpeg_with_orientation(rgb, orientation):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    b = io.BytesIO()
    Image.fromarray(rgb).save(b, "JPEG", exif=exif.tobytes(), quality=92)
    return b.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photographs in every awkward form, and files that are not pictures."""
    import skimage.data as data
    from PIL import Image

    d = tmp_path_factory.mktemp("photos")
    (d / "sub").mkdir()
    (d / "astronaut_exif6.jpg").write_bytes(_jpeg_with_orientation(data.astronaut()[:, :400], 6))
    Image.fromarray(data.coffee()).save(d / "coffee.png")
    Image.fromarray(data.chelsea()).convert("L").save(d / "chelsea_gray.png")
    rgba = np.dstack([data.rocket(), np.full(data.rocket().shape[:2], 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(d / "sub" / "rocket_rgba.png")
    Image.fromarray((data.camera().astype(np.uint16) * 257)).save(d / "camera16.png")
    big = np.asarray(Image.fromarray(data.coffee()).resize((4000, 2667)))
    Image.fromarray(big).save(d / "sub" / "coffee_big.jpg", quality=80)
    (d / "zero.jpg").write_bytes(b"")
    (d / "notes.jpg").write_text("this is a text file named .jpg\n")
    whole = (d / "coffee.jpg")
    Image.fromarray(data.coffee()).save(whole, quality=90)
    (d / "truncated.jpg").write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    whole.unlink()
    return d


BAD = {"zero.jpg", "notes.jpg", "truncated.jpg"}


@pytest.fixture(scope="module")
def photos_run(model, photos, tmp_path_factory):
    """(exit status, printed lines, output folder) of one local run over the photos folder
    (ONNX Runtime): the real-photos test checks it, the Ray test compares with it."""
    from contextlib import redirect_stdout

    _, _, onnx_path = model
    out = tmp_path_factory.mktemp("photos_run") / "out"
    printed = io.StringIO()
    with redirect_stdout(printed):
        rc = _run(onnx_path, [photos], out, "--runtime", "onnxruntime")
    return rc, printed.getvalue().strip().splitlines(), out


def _run(model_file, inputs, out, *extra):
    return predict_app.cli(["--config-file", CONFIG, "--input", *map(str, inputs), "--output", str(out), *extra]
                           + TINY + ["MODEL.WEIGHTS", model_file])


def _load(out):
    return (json.loads((out / "predictions.json").read_text()), json.loads((out / "images.json").read_text()),
            json.loads((out / "failures.json").read_text()))


def _by_name(results, images):
    per = {im["id"]: [] for im in images["images"]}
    for r in results:
        per[r["image_id"]].append(r)
    return {im["file_name"]: per[im["id"]] for im in images["images"]}


def _arrays(rows):
    """COCO result rows -> (boxes x0 y0 x1 y1, scores, class indices), as compare_detections takes them."""
    return (np.array([[r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]]
                      for r in rows], np.float32).reshape(-1, 4),
            np.array([r["score"] for r in rows], np.float32), np.array([r["category_id"] - 1 for r in rows]))


def test_inputs_files_folders_globs(tmp_path):
    for rel in ("a/x.jpg", "a/b/y.PNG", "a/b/z.txt", "c/x.jpg", "v.mp4"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    items = predict_app.collect_inputs([str(tmp_path / "a"), str(tmp_path / "c" / "x.jpg"), str(tmp_path / "*.mp4"),
                                        str(tmp_path / "a" / "x.jpg")])
    assert [(i.name, i.kind) for i in items] == [("a/b/y.PNG", "image"), ("a/x.jpg", "image"),
                                                 ("x.jpg", "image"), ("v.mp4", "video")]
    # the same output name twice gets a suffix
    twice = predict_app.collect_inputs([str(tmp_path / "a" / "x.jpg"), str(tmp_path / "c" / "x.jpg")])
    assert [i.name for i in twice] == ["x.jpg", "x.jpg.1"]
    with pytest.raises(predict_app.PredictError, match="nothere.jpg.*no such file"):
        predict_app.collect_inputs([str(tmp_path / "nothere.jpg")])
    with pytest.raises(predict_app.PredictError, match="matches no file"):
        predict_app.collect_inputs([str(tmp_path / "*.gif")])
    shards = predict_app.plan_shards(predict_app.collect_inputs([str(tmp_path)]), 2)
    assert [[i.name for i in s] for s in shards] == [[f"{tmp_path.name}/a/b/y.PNG", f"{tmp_path.name}/a/x.jpg"],
                                                     [f"{tmp_path.name}/c/x.jpg"], [f"{tmp_path.name}/v.mp4"]]


def test_real_photos_every_form_and_bad_files(model, photos, photos_run):
    """Each picture: read as detectron2's read_image reads it (EXIF orientation, gray, RGBA,
    16-bit, 4000 px), its detections those of DeployedPredictor on that array, drawn at its size;
    each bad file in failures.json with its reason; exit status 1; a summary line."""
    import cv2
    from detectron2.data.detection_utils import read_image

    from resnext_det.deploy import DeployedPredictor
    from resnext_det.deploy.parity import compare_detections

    _, _, onnx_path = model
    rc, printed, out = photos_run
    assert rc == 1
    results, images, failures = _load(out)
    assert sorted(os.path.basename(f["file_name"]) for f in failures) == sorted(BAD)
    reasons = {os.path.basename(f["file_name"]): f["reason"] for f in failures}
    assert "UnidentifiedImageError" in reasons["zero.jpg"] and "UnidentifiedImageError" in reasons["notes.jpg"]
    assert "truncated" in reasons["truncated.jpg"].lower()
    names = [im["file_name"] for im in images["images"]]
    assert names == sorted(names) and len(names) == 6 and names[0].startswith(photos.name + "/")
    assert [im["id"] for im in images["images"]] == list(range(1, 7))
    assert [c["name"] for c in images["categories"]] == ["class 0", "class 1", "class 2"]
    predictor = DeployedPredictor(onnx_path, runtime="onnxruntime")
    per_image = _by_name(results, images)
    for im in images["images"]:
        path = photos.parent / im["file_name"]
        ref_img = read_image(str(path), format="BGR")
        assert (im["height"], im["width"]) == ref_img.shape[:2], im
        ref = predictor(ref_img)["instances"]
        rows = per_image[im["file_name"]]
        got = _arrays(rows)
        cmp = compare_detections(ref, got, box_tol=0.01, score_tol=1e-5)
        assert cmp["ok"] and len(rows) > 0, f"{im['file_name']}: {cmp['why']}"
        drawn = cv2.imread(str(out / "pictures" / (os.path.splitext(im["file_name"])[0] + ".jpg")))
        assert drawn.shape[:2] == ref_img.shape[:2]
    # EXIF orientation 6: the 512x400 astronaut is stored sideways and read upright, 400 wide
    astro = next(im for im in images["images"] if "astronaut" in im["file_name"])
    assert (astro["height"], astro["width"]) == (400, 512)
    line = printed[-1]
    assert line.startswith("predict.py: 6 pictures, 0 video frames, 3 failed") and "runtime onnxruntime" in line


def test_killed_run_started_again_ends_with_the_same_predictions(model, photos, tmp_path):
    """SIGKILL once the first shard (2 pictures) is written; the second run skips it and ends
    with the uninterrupted run's predictions.json, each picture once. The killed run is
    tools/demo.py with detectron2 demo's flags (demo.py is predict.py); the second run, a fresh
    process without --ray, imports nothing of Ray (the optional extra)."""
    _, _, onnx_path = model
    inputs = [photos / "coffee.png", photos / "chelsea_gray.png", photos / "camera16.png",
              photos / "astronaut_exif6.jpg", photos / "sub" / "rocket_rgba.png"]
    whole = tmp_path / "whole"
    assert _run(onnx_path, inputs, whole, "--shard-size", "2", "--runtime", "onnxruntime") == 0
    killed = tmp_path / "killed"
    argv = ["--config-file", CONFIG, "--input", *map(str, inputs), "--output", str(killed), "--shard-size", "2",
            "--runtime", "onnxruntime"] + TINY + ["MODEL.WEIGHTS", onnx_path]
    with open(os.devnull, "w") as devnull:
        proc = zygote.start([os.path.join(ROOT, "tools", "demo.py"), "--confidence-threshold", "0.5", *argv],
                            stdout=devnull, stderr=devnull)
    first = killed / "shards" / "000000.json"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert first.exists() and not (killed / "predictions.json").exists()
    code = ("import sys; from resnext_det.apps import predict; "
            f"rc = predict.cli({argv!r}); "
            "print('RAY', any(m == 'ray' or m.startswith('ray.') for m in sys.modules), rc)")
    r = zygote.run(["-c", code], timeout=300)
    assert r.stdout.strip().splitlines()[-1] == "RAY False 0", r.stdout[-2000:] + r.stderr[-2000:]
    assert " of 3 shards already done" in r.stderr, r.stderr[-2000:]
    assert _load(killed) == _load(whole)
    assert len({im["file_name"] for im in _load(killed)[1]["images"]}) == 5


def test_video_frames_give_what_single_pictures_give(model, tmp_path):
    """A video whose frames alternate between objects and empty frames: frame by frame, the
    detections of the predictor on that frame alone (a fresh predictor per frame; they load
    OpenVINO's compiled model from a cache instead of compiling it again, as a later predictor
    with cache_dir does); the drawn video has every frame."""
    import cv2
    from conftest import rectangles_image

    from resnext_det.deploy import DeployedPredictor
    from resnext_det.deploy.parity import compare_detections

    _, _, onnx_path = model
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 5, (96, 64))
    for i in range(6):
        writer.write(rectangles_image(64, 96, i) if i % 2 == 0 else np.zeros((64, 96, 3), np.uint8))
    writer.release()
    out = tmp_path / "out"
    assert _run(onnx_path, [clip], out, "--runtime", "openvino") == 0
    results, images, _ = _load(out)
    assert [(im["video"], im["frame"]) for im in images["images"]] == [("clip.mp4", i) for i in range(6)]
    cap = cv2.VideoCapture(str(clip))
    frames = [cap.read()[1] for _ in range(6)]
    cap.release()
    cache = str(tmp_path / "ov_cache")
    single = DeployedPredictor(onnx_path, runtime="openvino", cache_dir=cache)
    for im, frame in zip(images["images"], frames):
        rows = [r for r in results if r["image_id"] == im["id"]]
        got = _arrays(rows)
        fresh = DeployedPredictor(onnx_path, runtime="openvino", cache_dir=cache)(frame)["instances"]
        for ref in (single(frame)["instances"], fresh):
            cmp = compare_detections(ref, got, box_tol=0.01, score_tol=1e-5)
            assert cmp["ok"], f"frame {im['frame']}: {cmp['why']}"
    drawn = cv2.VideoCapture(str(out / "videos" / "clip.mp4"))
    assert int(drawn.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    assert (int(drawn.get(cv2.CAP_PROP_FRAME_WIDTH)), int(drawn.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (96, 64)
    drawn.release()


def test_eager_checkpoint_and_clear_errors(model, photos, tmp_path, capsys):
    from detectron2.data.detection_utils import read_image
    from detectron2.engine import DefaultPredictor

    from resnext_det.config import load_config
    from resnext_det.deploy.parity import compare_detections

    _, pth, onnx_path = model
    out = tmp_path / "eager"
    assert _run(pth, [photos / "coffee.png"], out) == 0
    results, images, _ = _load(out)
    ref = DefaultPredictor(load_config(CONFIG, TINY + ["MODEL.WEIGHTS", pth]))(
        read_image(str(photos / "coffee.png"), format="BGR"))["instances"]
    got = _arrays(results)
    assert compare_detections(ref, got, box_tol=0.01, score_tol=1e-5)["ok"]
    assert "runtime eager" in capsys.readouterr().out

    def error(*argv):
        capsys.readouterr()
        assert predict_app.cli(list(argv)) == 2
        # (a logging handler an earlier test left on a closed capture stream may add noise here;
        # the command itself prints one line)
        err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("predict.py")]
        assert len(err) == 1 and err[0].startswith("predict.py: error: "), err
        return err[0]

    common = ["--config-file", CONFIG, "--input", str(photos / "coffee.png")]
    assert "python tools/train_net.py --demo" in error(*common, "--output", str(tmp_path / "x"), *TINY)
    assert "export it first" in error(*common, "--output", str(tmp_path / "x"), "--runtime", "onnxruntime",
                                      *TINY, "MODEL.WEIGHTS", pth)
    assert "nothere" in error("--config-file", CONFIG, "--input", str(tmp_path / "nothere"), "--output",
                              str(tmp_path / "x"), *TINY, "MODEL.WEIGHTS", pth)
    assert "--confidence-threshold 2.0" in error(*common, "--output", str(tmp_path / "x"), "--confidence-threshold",
                                                 "2", *TINY, "MODEL.WEIGHTS", pth)
    # a folder holding another model's results is refused, and left as it was
    before = (out / "predictions.json").read_bytes()
    assert "holds results of another run" in error(*common, "--output", str(out), *TINY, "MODEL.WEIGHTS", onnx_path)
    assert (out / "predictions.json").read_bytes() == before


def _actor_processes(root):
    """The PredictActor worker processes below pid ``root`` (Ray's raylet, a child of the
    command, starts them; their title names the class), read from /proc."""
    parent, title = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                parent[int(pid)] = int(f.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title[int(pid)] = f.read()
        except (OSError, IndexError, ValueError):
            pass

    def below(pid):
        while pid in parent and pid != root:
            pid = parent[pid]
        return pid == root

    return sorted(pid for pid, t in title.items() if b"PredictActor" in t and below(pid))


@pytest.mark.slow
def test_ray_actors_give_what_one_process_gives(model, photos, photos_run, tmp_path):
    """A local Ray instance, 2 actors x 1 CPU, shards of 2 pictures; every actor SIGKILLed once
    pictures are being drawn (so a batch in flight is lost, whichever actor holds it): Ray
    retries it and the run ends with the one-process predictions.json (the real-photos run,
    64-picture shards), each picture once."""
    pytest.importorskip("ray", reason="the ray extra (pip install -e .[ray]); tools/install.sh installs it")
    _, _, onnx_path = model
    _, _, local = photos_run
    out = tmp_path / "ray"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "predict.py"), "--config-file", CONFIG, "--input",
           str(photos), "--output", str(out), "--runtime", "onnxruntime", "--shard-size", "2", "--ray",
           "--ray-actors", "2", "--ray-cpus-per-actor", "1"] + TINY + ["MODEL.WEIGHTS", onnx_path]
    # Ray counts the cores the process may use: the whole machine's (tests/conftest.py pins workers)
    proc = zygote.start(cmd[1:], env=dict(os.environ, RAY_DEDUP_LOGS="0"), affinity=ALL_CPUS)
    killed = None
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and killed is None:
        ps = _actor_processes(proc.pid)
        if ps and (out / "pictures").exists():
            killed = ps  # every actor: whichever holds a batch, its batch must be retried
            for pid in ps:
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, output[-3000:]  # 1: the bad files
    assert killed is not None, output[-3000:]
    assert _load(out) == _load(local)
    assert "2 actors x 1 CPUs" in output
