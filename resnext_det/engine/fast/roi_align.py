"""RoIAlign for CPU training as a sparse matrix product (``MODEL.RESNEXT.FAST.MATRIX_ROI_ALIGN_TRAIN``;
why: docs/FAST_PATH.md): ``out = A @ x``, ``x`` the feature map as ``(N*H*W, C)`` rows, ``A`` a sparse
``(R*ph*pw, N*H*W)`` matrix of the sampling points' bilinear weights (divided by the bin's sample count).
:func:`roi_align_matrix` follows torchvision's CPU kernel (``roi_align_kernel.cpp``: scaling, ``aligned``
offset, adaptive grid, ``bilinear_interpolate``'s boundary rules): results equal it up to summation order.
"""
from __future__ import annotations

from typing import Tuple

import torch
from detectron2.layers import ROIAlign
from torch import nn

from ._swap import memory_format_of, replace_submodules

__all__ = ["roi_align_matrix", "MatrixROIAlign", "use_matrix_roi_align"]


def _axis_samples(start: torch.Tensor, bin_size: torch.Tensor, grid: torch.Tensor, n_bins: int,
                  g_max: int, size: int):
    """One axis of every box's sampling points over (roi, bin, sample), padded to ``g_max``:
    (use: the point exists and is inside the margin, low, high cells, their weights)."""
    dtype = start.dtype
    k = torch.arange(g_max, dtype=dtype)
    v = (start[:, None, None] + torch.arange(n_bins, dtype=dtype)[None, :, None] * bin_size[:, None, None]
         + (k[None, None, :] + 0.5) * bin_size[:, None, None] / grid.clamp(min=1)[:, None, None].to(dtype))
    use = (k[None, None, :] < grid[:, None, None]) & (v >= -1.0) & (v <= size)
    v = v.clamp(min=0)
    low = v.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    v = torch.where(at_edge, low.to(dtype), v)
    frac = v - low.to(dtype)
    return use, low, high, 1 - frac, frac


def roi_align_matrix(rois: torch.Tensor, spatial_scale: float, output_size: Tuple[int, int],
                     sampling_ratio: int, aligned: bool, input_shape: Tuple[int, int, int, int]
                     ) -> torch.Tensor:
    """The coalesced sparse ``A`` with ``roi_align(x, rois) = A @ x_rows`` (arguments as torchvision's
    ``roi_align``; ``input_shape`` ``(N, C, H, W)``): rows in ``(roi, ph, pw)`` order, columns in
    ``(n, y, x)`` order, dtype of ``rois``."""
    n_img, _, height, width = input_shape
    ph, pw = output_size
    r = rois.shape[0]
    dtype = rois.dtype
    offset = 0.5 if aligned else 0.0
    batch = rois[:, 0].long()
    start_w = rois[:, 1] * spatial_scale - offset
    start_h = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - start_w
    roi_h = rois[:, 4] * spatial_scale - offset - start_h
    if not aligned:  # the legacy RoIAlign forces boxes of at least one cell
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / ph, roi_w / pw
    if sampling_ratio > 0:
        grid_h = torch.full((r,), sampling_ratio, dtype=torch.long)
        grid_w = grid_h.clone()
    else:  # adaptive: about one sample per input cell
        grid_h, grid_w = torch.ceil(bin_h).long(), torch.ceil(bin_w).long()
    count = (grid_h * grid_w).clamp(min=1).to(dtype)
    gh_max, gw_max = max(int(grid_h.max()), 1), max(int(grid_w.max()), 1)
    use_y, y_low, y_high, wy_low, wy_high = _axis_samples(start_h, bin_h, grid_h, ph, gh_max, height)  # (r, ph, gh)
    use_x, x_low, x_high, wx_low, wx_high = _axis_samples(start_w, bin_w, grid_w, pw, gw_max, width)  # (r, pw, gw)
    # everything below is over (roi, ph, iy, pw, ix)
    used = use_y[:, :, :, None, None] & use_x[:, None, None, :, :]
    rows = ((torch.arange(r) * (ph * pw))[:, None, None, None, None]
            + (torch.arange(ph) * pw)[None, :, None, None, None]
            + torch.arange(pw)[None, None, None, :, None]).expand(used.shape)[used]
    base = (batch * (height * width))[:, None, None, None, None]
    scale = 1.0 / count[:, None, None, None, None]
    cols, vals = [], []
    for ya, wy in ((y_low, wy_low), (y_high, wy_high)):
        for xa, wx in ((x_low, wx_low), (x_high, wx_high)):
            col = base + ya[:, :, :, None, None] * width + xa[:, None, None, :, :]
            val = wy[:, :, :, None, None] * wx[:, None, None, :, :] * scale
            cols.append(col.expand(used.shape)[used])
            vals.append(val.expand(used.shape)[used])
    indices = torch.stack([rows.repeat(4), torch.cat(cols)])
    a = torch.sparse_coo_tensor(indices, torch.cat(vals), (r * ph * pw, n_img * height * width),
                                check_invariants=False)  # built in range by construction
    return a.coalesce()


class _MatrixROIAlignFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rois, spatial_scale, output_size, sampling_ratio, aligned):
        n, c, h, w = x.shape
        ph, pw = output_size
        r = rois.shape[0]
        fmt = memory_format_of(x)
        a = roi_align_matrix(rois.detach(), spatial_scale, output_size, sampling_ratio, aligned, (n, c, h, w))
        ctx.a, ctx.shape, ctx.fmt = a, (n, c, h, w), fmt
        rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view for a channels_last x
        out = torch.sparse.mm(a, rows).reshape(r, ph, pw, c).permute(0, 3, 1, 2)
        return out.contiguous(memory_format=fmt)

    @staticmethod
    def backward(ctx, grad_out):
        n, c, h, w = ctx.shape
        grad_rows = grad_out.permute(0, 2, 3, 1).reshape(-1, c)
        grad_in = torch.sparse.mm(ctx.a.t(), grad_rows).reshape(n, h, w, c).permute(0, 3, 1, 2)
        return grad_in.contiguous(memory_format=ctx.fmt), None, None, None, None, None


class MatrixROIAlign(ROIAlign):
    """detectron2's ``ROIAlign``, as a sparse matrix product for CPU calls that need a gradient."""

    def forward(self, input, rois):
        if not (torch.is_grad_enabled() and input.requires_grad and input.device.type == "cpu"
                and input.dtype in (torch.float32, torch.float64) and rois.numel()):
            return super().forward(input, rois)
        assert rois.dim() == 2 and rois.size(1) == 5
        size = self.output_size if isinstance(self.output_size, (tuple, list)) else (self.output_size,) * 2
        return _MatrixROIAlignFunction.apply(input, rois.to(dtype=input.dtype), float(self.spatial_scale),
                                             tuple(int(s) for s in size), int(self.sampling_ratio),
                                             bool(self.aligned))


def use_matrix_roi_align(model: nn.Module) -> int:
    """Swap every detectron2 ``ROIAlign`` in ``model`` for a :class:`MatrixROIAlign`, in place;
    returns how many."""
    def make(m):
        if type(m) is ROIAlign:
            return MatrixROIAlign(m.output_size, m.spatial_scale, m.sampling_ratio, m.aligned)
        return None

    return replace_submodules(model, make)
