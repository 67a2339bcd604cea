#!/usr/bin/env python3
"""The two-stage plan at COCO size, by simulation: COCO-shaped data without pixels at a fraction
of trainval35k, the project's real annotation, stage-1b and stage-2 code paths in 2 GLOO worker
processes, wall time and peak RSS per process and step, and an extrapolation to full COCO on
8 workers. One record per fraction: benchmarks/<cpu kind>/scale-<a>-<b>.json. See
resnext_det/apps/scale.py and docs/SCALE.md.

    python tools/scale.py --fraction 1/64
    python tools/scale.py --fraction 1/64 --fraction 1/16 --fraction 1/4
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnext_det.apps.scale import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
