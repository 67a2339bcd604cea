#!/usr/bin/env python3
"""Params and FLOPs (fvcore, 224x224) of ResNet-50/101, the ResNeXt presets and the paper's
Table 2 equal-complexity family, printed next to the paper's figures with the difference.

Params include the 1000-class fc classifier (2,049,000), as the paper and torchvision count.
FLOPs: fvcore, one multiply-add = one FLOP (the paper's convention).

    python tools/complexity.py                       # all default models
    python tools/complexity.py --models X-50-32x4d R-50 --json out.json
"""
import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnext_det.engine.complexity import DEFAULT_MODELS, complexity_table, format_table  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="preset names")
    ap.add_argument("--size", type=int, default=224, help="input side (default 224)")
    ap.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    rows = complexity_table(args.models, args.size)
    print(format_table(rows))
    print("\nparams include the 1000-class fc; FLOPs = multiply-adds (fvcore), batch 1, "
          f"{args.size}x{args.size}; '~' = the paper gives an approximate figure")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dict(dataclasses.asdict(r), params_diff_pct=r.params_diff_pct,
                            gflops_diff_pct=r.gflops_diff_pct) for r in rows], f, indent=1)
    return rows


if __name__ == "__main__":
    main()
