"""Parameters and FLOPs of the ResNeXt presets as ImageNet classifiers, next to the paper's
(docs/FAST_PATH.md, "Complexity"). As in the paper's Table 1 and torchvision, parameters include
BN's affine ones and the 1000-class fc (2,049,000); FLOPs are fvcore's multiply-adds at 224x224,
batch 1 (it also counts BN and pooling: well under 1%).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import List, Optional, Sequence

import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

from ..config import PRESETS, ResNeXtConfigError
from ..io import atomic_write_json
from ..modeling import ResNeXtClassifier, build_backbone_from_preset
from .tool import run_tool

__all__ = ["PAPER", "ComplexityRow", "classifier_from_preset", "count", "complexity_table", "format_table"]

# name -> (params in millions, GFLOPs, "~" where the paper only says "about") (Table 1, Sec. 3/5.1)
PAPER = {
    "R-50": (25.5, 4.1, ""),
    "X-50-32x4d": (25.0, 4.2, ""),
    "R-101": (44.0, 7.8, "~"),
    "X-101-32x4d": (44.0, 7.8, "~"),
    "X-50-2x40d": (25.5, 4.1, "~"),
    "X-50-4x24d": (25.5, 4.1, "~"),
    "X-50-8x14d": (25.5, 4.1, "~"),
}

DEFAULT_MODELS = ("R-50", "R-101", "X-50-32x4d", "X-101-32x4d", "X-101-32x8d", "X-101-64x4d",
                  "X-50-2x40d", "X-50-4x24d", "X-50-8x14d")


def classifier_from_preset(preset: str, num_classes: int = 1000) -> nn.Module:
    """The preset's ImageNet classifier (BN with affine params, avgpool, fc), eval mode."""
    backbone = build_backbone_from_preset(preset, out_features=["res5"], norm="BN")
    return ResNeXtClassifier(backbone, num_classes).eval()


@dataclasses.dataclass
class ComplexityRow:
    name: str
    cardinality: int
    bottleneck_width: int
    params: int
    gflops: float
    paper_params_m: Optional[float]
    paper_gflops: Optional[float]
    paper_approx: str

    @property
    def params_diff_pct(self) -> Optional[float]:
        if self.paper_params_m is None:
            return None
        return 100.0 * (self.params / 1e6 - self.paper_params_m) / self.paper_params_m

    @property
    def gflops_diff_pct(self) -> Optional[float]:
        if self.paper_gflops is None:
            return None
        return 100.0 * (self.gflops - self.paper_gflops) / self.paper_gflops


def count(model: nn.Module, size: int = 224):
    """(parameters, fvcore GFLOPs at size x size, batch 1) of a classifier."""
    params = sum(p.numel() for p in model.parameters())
    flops = FlopCountAnalysis(model, torch.zeros(1, 3, size, size))
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    return params, flops.total() / 1e9


def complexity_table(names: Sequence[str] = DEFAULT_MODELS, size: int = 224) -> List[ComplexityRow]:
    """One :class:`ComplexityRow` per preset name; ResNeXtConfigError lists the known ones."""
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise ResNeXtConfigError(f"unknown preset(s) {unknown}; known presets: {', '.join(PRESETS)}")
    rows = []
    for name in names:
        _, card, width = PRESETS[name]
        params, gflops = count(classifier_from_preset(name), size)
        p_params, p_gflops, approx = PAPER.get(name, (None, None, ""))
        rows.append(ComplexityRow(name, card, width, params, gflops, p_params, p_gflops, approx))
    return rows


def format_table(rows: Sequence[ComplexityRow]) -> str:
    """A Markdown table of the rows, with the paper's figures and the differences."""
    def pct(v):
        return "" if v is None else f"{v:+.1f}%"

    lines = ["| model | C x d | params (M, incl. fc) | paper | diff | GFLOPs (224) | paper | diff |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pp = "" if r.paper_params_m is None else f"{r.paper_approx}{r.paper_params_m}"
        pg = "" if r.paper_gflops is None else f"{r.paper_approx}{r.paper_gflops}"
        lines.append(f"| {r.name} | {r.cardinality}x{r.bottleneck_width}d | {r.params / 1e6:.2f} | {pp} | "
                     f"{pct(r.params_diff_pct)} | {r.gflops:.2f} | {pg} | {pct(r.gflops_diff_pct)} |")
    return "\n".join(lines)


def main(argv=None):
    """The work of ``tools/complexity.py``: print params and FLOPs next to the paper's; returns the rows."""
    ap = argparse.ArgumentParser(description="Params and FLOPs of the presets next to the paper's figures.", formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="preset names")
    ap.add_argument("--size", type=int, default=224, help="input side (default 224)")
    ap.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    rows = complexity_table(args.models, args.size)
    print(format_table(rows))
    print("\nparams include the 1000-class fc; FLOPs = multiply-adds (fvcore), batch 1, "
          f"{args.size}x{args.size}; '~' = the paper gives an approximate figure")
    if args.json:
        atomic_write_json(args.json, [dict(dataclasses.asdict(r), params_diff_pct=r.params_diff_pct,
                                           gflops_diff_pct=r.gflops_diff_pct) for r in rows], indent=1)
    return rows


def cli(argv=None) -> int:
    """The command line of ``tools/complexity.py``: 0, or 2 after a one-line error."""
    return run_tool("complexity.py", main, argv)
