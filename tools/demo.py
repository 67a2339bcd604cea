#!/usr/bin/env python3
"""detectron2's ``demo/demo.py`` here: ``python tools/demo.py`` == ``python tools/predict.py``
(a trained detector on pictures, folders, globs and videos; see that file). The synthetic
training demo is ``python tools/train_net.py --demo``.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from predict import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
