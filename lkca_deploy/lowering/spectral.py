"""The constants of the `spectral` lowering: a depthwise conv as DFT matrices and a kernel spectrum.

A stride-1 conv over an H x W grid is a Toeplitz operator: output (i, j) reads input (i + dr, j + dc) for the
kernel's offsets. Embedded in a circulant of period P >= H + Ho - 1 per axis, no two offsets that can meet the
grid share a residue, so the circular convolution equals the conv exactly (taps that never touch the grid are
dropped first). The 2-D DFT diagonalises a circulant, and a DFT of length P is a P x N matrix: four small
constant MatMuls (real DFT along W, complex along H, and back) around a pointwise complex product. No DFT op is
involved, which TensorRT's parser lacks and ONNX Runtime runs slowly; only MatMul, Reshape, Transpose, Gather,
Mul and Add. Complex values travel as [real | imaginary] halves of the last axis; a complex matrix M = Mr + iMi
acting from the right on such a row is the real block matrix [[Mr, Mi], [-Mi, Mr]].

At 32x32 / K63 this needs ~0.5 MiB of constants per layer where the Toeplitz matmul needs 48 MiB, and about
124 M multiply-adds per 192-channel layer where the Toeplitz needs 201 M and the direct conv 780 M.
"""

from __future__ import annotations

import numpy as np


def periods(grid: tuple[int, int], out_grid: tuple[int, int]) -> tuple[int, int]:
    """The smallest circulant periods per axis with no wrap-around between offsets that meet the grid."""
    return grid[0] + out_grid[0] - 1, grid[1] + out_grid[1] - 1


def _complex_block(m: np.ndarray) -> np.ndarray:
    """Right-multiplication by complex `m` on [re | im] rows, as one real matrix."""
    return np.block([[m.real, m.imag], [-m.imag, m.real]])


def forward_w(w: int, pw: int) -> np.ndarray:
    """(W, 2F): a real row of W samples -> [re | im] of its first F = pw//2 + 1 DFT bins (period pw)."""
    nu = np.arange(pw // 2 + 1)
    m = np.exp(-2j * np.pi * np.outer(np.arange(w), nu) / pw)
    return np.concatenate([m.real, m.imag], axis=1)


def forward_h(h: int, ph: int) -> np.ndarray:
    """(2H, 2Ph): [re | im] of H complex samples -> [re | im] of all Ph DFT bins."""
    return _complex_block(np.exp(-2j * np.pi * np.outer(np.arange(h), np.arange(ph)) / ph))


def inverse_h(ph: int, ho: int) -> np.ndarray:
    """(2Ph, 2Ho): [re | im] of Ph bins -> [re | im] of the first Ho samples of the inverse DFT."""
    return _complex_block(np.exp(2j * np.pi * np.outer(np.arange(ph), np.arange(ho)) / ph) / ph)


def inverse_w(pw: int, wo: int) -> np.ndarray:
    """(2F, Wo): [re | im] of the first F bins of a Hermitian spectrum -> the first Wo real samples."""
    nu = np.arange(pw // 2 + 1)
    weight = np.where((nu == 0) | (2 * nu == pw), 1.0, 2.0)[:, None] / pw  # each bin stands for itself and its mirror
    angle = 2 * np.pi * np.outer(nu, np.arange(wo)) / pw
    return np.concatenate([weight * np.cos(angle), -weight * np.sin(angle)], axis=0)


def _offsets(kernel_size, grid, out_grid, pads, dilations):
    """(rows, cols, keep_r, keep_c): each tap's offset from the output position per axis, and which offsets can
    meet the grid at all (the others are dropped before the circulant is built)."""
    (h, w), (ho, wo) = grid, out_grid
    rows = np.arange(kernel_size[0]) * dilations[0] - pads[0]
    cols = np.arange(kernel_size[1]) * dilations[1] - pads[1]
    return rows, cols, (rows > -ho) & (rows < h), (cols > -wo) & (cols < w)


def kernel_spectrum(
    kernel: np.ndarray,
    grid: tuple[int, int],
    out_grid: tuple[int, int],
    pads: tuple[int, int],
    dilations: tuple[int, int],
) -> np.ndarray:
    """(..., Ph, F) complex: what multiplies the input's spectrum, for kernels (..., Kh, Kw).

    Output (i, j) reads input (i + u*dh - top, j + v*dw - left) through tap (u, v); the tap goes to the
    circulant at that offset modulo the period, unless the offset can never meet the grid.
    """
    ph, pw = periods(grid, out_grid)
    rows, cols, keep_r, keep_c = _offsets(kernel.shape[-2:], grid, out_grid, pads, dilations)
    circulant = np.zeros((*kernel.shape[:-2], ph, pw))
    taps = kernel[..., keep_r, :][..., keep_c].astype(np.float64)
    index = np.ix_(rows[keep_r] % ph, cols[keep_c] % pw)
    circulant[(..., *index)] = taps  # offsets that meet the grid are distinct modulo the period
    # Y[i] = sum_j c[j - i] X[j] is a correlation: its multiplier is sum_m c[m] e^{+2 pi i m nu / P}.
    return np.conj(np.fft.fft2(circulant))[..., : pw // 2 + 1]


def w_toeplitz(
    kernel: np.ndarray,
    grid: tuple[int, int],
    out_grid: tuple[int, int],
    pads: tuple[int, int],
    dilations: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """(table, index): the conv as, per bin f of a real DFT along H (period Ph), a complex Toeplitz matrix along W,
    for kernels (heads, Kh, Kw).

    In that domain output row j of bin f reads input column j + c through M[f, c] = sum_r k[r, c] e^{+2 pi i f r/Ph}
    (the H-axis multiplier of `kernel_spectrum`, one per column offset c). Each (2Wo, 2W) block [[Re, -Im], [Im, Re]]
    acts on rows (re|im, w); table (heads, F, 3n + 1) holds Re M, -Im M, Im M of the n offsets that meet the grid and
    a zero, and index (2Wo, 2W) picks the blocks' entries from it: table[..., index] is (heads, F, 2Wo, 2W).
    """
    (_, w), (_, wo) = grid, out_grid
    ph = periods(grid, out_grid)[0]
    rows, cols, keep_r, keep_c = _offsets(kernel.shape[-2:], grid, out_grid, pads, dilations)
    circulant = np.zeros((*kernel.shape[:-2], ph, int(keep_c.sum())))
    circulant[..., rows[keep_r] % ph, :] = kernel[..., keep_r, :][..., keep_c].astype(np.float64)
    multiplier = np.conj(np.fft.fft(circulant, axis=-2))[..., : ph // 2 + 1, :]  # (heads, F, n): conj: a correlation
    n = multiplier.shape[-1]
    zero = np.zeros((*multiplier.shape[:-1], 1))
    table = np.concatenate([multiplier.real, -multiplier.imag, multiplier.imag, zero], axis=-1)
    column = {int(c): i for i, c in enumerate(cols[keep_c])}
    offset = np.array([[column.get(x - j, -1) for x in range(w)] for j in range(wo)])  # (Wo, W); -1: no tap
    part = np.array([[0, 1], [2, 0]])  # [[Re, -Im], [Im, Re]]
    index = np.where(offset[None, :, None, :] < 0, 3 * n, part[:, None, :, None] * n + offset[None, :, None, :])
    return table, index.reshape(2 * wo, 2 * w)
