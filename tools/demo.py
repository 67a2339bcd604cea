#!/usr/bin/env python3
"""The embedded demo: ``python tools/demo.py`` == ``python tools/train_net.py --demo``.

Any train_net.py flags pass through (e.g. ``--demo two_stage``, ``OUTPUT_DIR out/x``).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_net import cli  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a == "--demo" or a.startswith("--demo=") for a in argv):
        argv = ["--demo"] + argv
    sys.exit(cli(argv))
