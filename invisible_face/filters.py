"""Gaussian filtering as matrix products, at the bottom of the package beside ``metrics``.

A separable blur of an image batch is ``M_h @ x @ M_w^T`` with banded matrices that hold the kernel
and the border (reflected, as kornia's default). On a CPU a depthwise convolution is slow for this
(one thin channel at a time), while a matrix product runs at BLAS speed (2 cores, 8 Dec 2026): on 16
faces of 200 px, kornia's filter took 81 ms against 16.6 ms for ``M_h @ x @ M_w^T``, the same figures
to 1e-6; on 16 faces of 160 x 150 px, the row-first product below took 5.1 ms against 8.7 ms. The
refinement blurs every step, and the perceptual budget's SSIM takes three blurs of each step's
change, so this is on the protector's hot path.
"""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=16)
def blur_matrix(n: int, sigma: float, size: int) -> torch.Tensor:
    """n x n matrix of a 1-D Gaussian of ``sigma`` px over ``size`` taps (odd), with the border
    reflected (``x[-1] = x[1]``): ``blur_matrix(n) @ v`` blurs a length-n signal v."""
    if size % 2 == 0 or size > 2 * n - 1:
        raise ValueError(f"kernel size must be odd and under twice the side {n}, got {size}")
    taps = torch.arange(size, dtype=torch.float64) - size // 2
    kernel = torch.exp(-taps**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    matrix = torch.zeros(n, n, dtype=torch.float64)
    rows = torch.arange(n)
    for tap, weight in zip(taps.long().tolist(), kernel.tolist()):
        cols = (rows + tap).abs()  # reflect at 0 ...
        cols = torch.where(cols > n - 1, 2 * (n - 1) - cols, cols)  # ... and at n - 1
        matrix.index_put_((rows, cols), torch.full((n,), weight, dtype=torch.float64), accumulate=True)
    return matrix.float()


def gaussian_blur(x: torch.Tensor, sigma: float, size: int) -> torch.Tensor:
    """Gaussian blur of ``sigma`` px with a ``size`` x ``size`` kernel (odd), borders reflected, as
    ``kornia.filters.gaussian_blur2d(x, (size, size), (sigma, sigma))``. ... x H x W -> same."""
    h, w = x.shape[-2:]
    rows = blur_matrix(h, float(sigma), size).to(x)
    cols = rows if w == h else blur_matrix(w, float(sigma), size).to(x)
    # along the rows as one (N * H) x W product, then down the columns: 1.7x faster than rows @ x @ cols.T
    along_rows = (x.reshape(-1, w) @ cols.T).view(-1, h, w)
    return (rows @ along_rows).view(x.shape)
