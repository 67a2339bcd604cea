"""resnext-det: ResNeXt backbones (FPN and C4) for Detectron2 Faster R-CNN."""
from setuptools import find_packages, setup

setup(
    name="resnext-det",
    version="0.1.0",
    description="ResNeXt (Xie et al., CVPR 2017) as a Detectron2 backbone plugin",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    # configs/ ships inside the package as resnext_det.model_configs, so
    # resnext_det.get_config_file() and relative _BASE_ paths work when installed too.
    packages=find_packages(include=["resnext_det", "resnext_det.*"]) + ["resnext_det.model_configs"],
    package_dir={"resnext_det.model_configs": "configs"},
    package_data={"resnext_det.model_configs": ["*.yaml"]},
    python_requires=">=3.10",
    # detectron2 is not on PyPI: tools/install.sh installs it (official source
    # install, or the PyPI redistribution sal-detectron2 when no git host is reachable).
    install_requires=[
        "torch",
        "torchvision",
        "fvcore",
        "pycocotools",
        "opencv-python-headless",
        "safetensors",
        "torchfile",
    ],
    extras_require={"test": ["pytest", "pytest-timeout", "hypothesis"]},
)
