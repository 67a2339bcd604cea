"""resnext-det: ResNeXt backbones (FPN and C4) for Detectron2 Faster R-CNN.

Dependencies are all declared here, so ``pip install -e .[test,deploy]`` tells the truth.
detectron2 itself is not on PyPI: ``tools/install.sh`` installs it (the official source
install, or the PyPI redistribution sal-detectron2 when no git host can be reached) and
then this project with its extras.
"""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(HERE, "README.md")

INSTALL_REQUIRES = [
    "torch",
    "torchvision",
    # detectron2's runtime dependencies (its PyPI redistribution is installed without them)
    "fvcore",
    "iopath",
    "pycocotools",
    "omegaconf",
    "hydra-core",
    "yacs",
    "termcolor",
    "tabulate",
    "cloudpickle",
    "tqdm",
    "tensorboard",
    "matplotlib",
    "Pillow",
    # the same cv2 API as opencv-python, without GUI libraries (servers, CI)
    "opencv-python-headless",
    # detectron2.model_zoo imports pkg_resources, which setuptools 81 removed
    "setuptools<81",
    # weight sources: timm .safetensors, the paper authors' Torch7 .t7 files
    "safetensors",
    "torchfile",
]
EXTRAS = {
    # pytest-xdist: the suite runs on every core (tools/install.sh --test passes -n auto);
    # import-linter: the layer contract in .importlinter (tests/test_layers.py).
    # mutmut: mutation testing of the core modules (tools/mutation.py, docs/TESTING.md), not run by the suite
    # pytest < 9.2: pytest 9.2 keeps node ids in Node._id, and pytest-xdist 3.8's --dist
    # loadgroup still renames item._nodeid, so the xdist_group marks are silently ignored there
    # (measured: a fresh venv with pytest 9.2.0 built the deploy-parity fixture on both workers)
    # scikit-image: real photographs (its bundled legacy set) for tools/predict.py's tests
    # jsonschema: every record in benchmarks/ against benchmarks/schema.json (benchmarks/tests)
    "test": ["pytest>=8,<9.2", "pytest-timeout", "pytest-xdist", "hypothesis", "import-linter",
             "mutmut>=3.8,<4", "scikit-image", "jsonschema"],
    # ONNX export and the CPU inference runtimes (resnext_det.deploy, tools/export.py);
    # nncf: int8 the way OpenVINO recommends (tools/export.py --int8)
    "deploy": ["onnx", "onnxruntime", "openvino", "nncf"],
    # tools/predict.py --ray: batch inference over Ray actors (Ray Data), past one machine
    "ray": ["ray[data]"],
}

setup(
    name="resnext-det",
    version="0.1.0",
    description="ResNeXt (Xie et al., CVPR 2017) as a Detectron2 backbone plugin",
    long_description=open(README).read() if os.path.exists(README) else "",
    long_description_content_type="text/markdown",
    # resnext_det* only: benchmarks/ (records, renderer, campaigns) is the checkout's, never installed.
    # configs/ ships inside the package as resnext_det.model_configs, so
    # resnext_det.get_config_file() and relative _BASE_ paths work when installed too.
    packages=find_packages(include=["resnext_det", "resnext_det.*"]) + ["resnext_det.model_configs"],
    package_dir={"resnext_det.model_configs": "configs"},
    # measured tables ship with the code: the training `auto` table (rendered from
    # benchmarks/<kind>/train-layouts.json) and the deploy defaults per CPU kind
    package_data={"resnext_det.model_configs": ["*.yaml"], "resnext_det.engine.fast": ["measured_layouts.json"],
                  "resnext_det.deploy": ["*.json"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
