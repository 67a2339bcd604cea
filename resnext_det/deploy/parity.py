"""Detections of two runs of one detector compared one to one (same count, boxes and scores
within tolerances), independent of the order of near-equal scores."""
from __future__ import annotations

from typing import Dict

import numpy as np

__all__ = ["compare_detections", "BOX_TOL_PX", "SCORE_TOL"]

# The parity the project promises between eager and every runtime (fp32).
BOX_TOL_PX = 0.01
SCORE_TOL = 1e-4


def _arrays(d):
    """(boxes Nx4, scores N, classes N) from Instances or a (boxes, scores, classes) tuple."""
    if hasattr(d, "pred_boxes"):
        return (d.pred_boxes.tensor.detach().cpu().numpy(), d.scores.detach().cpu().numpy(),
                d.pred_classes.detach().cpu().numpy())
    return tuple(np.asarray(getattr(a, "numpy", lambda: a)()) for a in d)


def compare_detections(ref, got, box_tol: float = BOX_TOL_PX, score_tol: float = SCORE_TOL) -> Dict:
    """Match each detection of ``ref`` to one of ``got`` (``Instances`` or ``(boxes, scores,
    classes)``): same class, box within ``box_tol`` px in every coordinate, score within
    ``score_tol``. Returns ``ok``, ``count_ref``, ``count_got``, ``max_box_diff``,
    ``max_score_diff`` (over matched pairs; inf when one has no match) and ``why``."""
    rb, rs, rc = _arrays(ref)
    gb, gs, gc = _arrays(got)
    out = {"count_ref": int(len(rb)), "count_got": int(len(gb)), "max_box_diff": 0.0,
           "max_score_diff": 0.0}
    fail = {**out, "ok": False, "max_box_diff": float("inf"), "max_score_diff": float("inf")}
    if len(rb) != len(gb):
        return {**fail, "why": f"{len(gb)} detections instead of {len(rb)}"}
    if len(rb) == 0:
        return {**out, "ok": True, "why": ""}
    box_d = np.abs(gb[None, :, :].astype(np.float64) - rb[:, None, :]).max(axis=2)  # ref x got
    score_d = np.abs(gs[None, :].astype(np.float64) - rs[:, None])
    same = (rc[:, None] == gc[None, :]) & (box_d <= box_tol) & (score_d <= score_tol)
    used = np.zeros(len(gb), dtype=bool)
    worst_box = worst_score = 0.0
    for i in np.argsort(-rs, kind="stable"):
        cand = np.where(same[i] & ~used)[0]
        if len(cand) == 0:
            # report the nearest same-class detection, to say by how much it missed
            near = np.where(rc[i] == gc)[0]
            j = near[np.argmin(box_d[i, near])] if len(near) else None
            detail = (f"nearest same-class box differs by {box_d[i, j]:.3g} px, score by "
                      f"{score_d[i, j]:.3g}" if j is not None else "no detection of that class")
            return {**fail, "why": f"detection {i} (class {rc[i]}, score {rs[i]:.4f}) has no match within "
                                   f"{box_tol} px / {score_tol}: {detail}"}
        j = cand[np.argmin(box_d[i, cand])]
        used[j] = True
        worst_box, worst_score = max(worst_box, box_d[i, j]), max(worst_score, score_d[i, j])
    return {**out, "ok": True, "max_box_diff": float(worst_box), "max_score_diff": float(worst_score),
            "why": ""}
