"""LKCA: attention as one large-kernel convolution over the token grid.

The same parameters run as three exact programs ("views"):
- ``conv``: a grouped depthwise convolution, the form every export starts from;
- ``attention``: a Toeplitz attention matrix per head built from the kernel, applied as A @ V (fast on CPU at small
  grids, and the form the ``matmul`` lowering produces);
- ``fft``: the convolution as a product of spectra of the zero-padded grid (fast for training at large grids; never
  exported, since no deployment target runs DFT well).
The view is only a performance choice: one state_dict loads into any of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VIEWS = ("conv", "attention", "fft")


def default_kernel_size(grid: tuple[int, int]) -> tuple[int, int]:
    """The smallest kernel through which every token sees every token."""
    k = 2 * max(grid) - 1
    return (k, k)


def default_view(grid: tuple[int, int]) -> str:
    """The faster training view for a grid: the dense Toeplitz wins while N^2 stays small, the FFT after that.

    Measured on 2 CPU cores: nano on digits (8x8) trains 3.5x faster with attention than conv; at 32x32/K63 the FFT
    is about 3x faster than the conv and the Toeplitz is heads x 1024 x 1024 per layer.
    """
    return "attention" if grid[0] * grid[1] <= 256 else "fft"


def toeplitz_index(grid: tuple[int, int], kernel: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """For output token p and input token q: the flat kernel tap that links them, and whether that tap exists.

    Cross-correlation with padding k//2: out[p] = sum_q w[q - p + k//2] x[q].
    """
    (h, w), (kh, kw) = grid, kernel
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    ky = ys[None, :] - ys[:, None] + kh // 2
    kx = xs[None, :] - xs[:, None] + kw // 2
    valid = (ky >= 0) & (ky < kh) & (kx >= 0) & (kx < kw)
    index = (ky.clamp(0, kh - 1) * kw + kx.clamp(0, kw - 1)).to(torch.long)
    return index, valid


def toeplitz(kernel: torch.Tensor, grid: tuple[int, int], index: tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> torch.Tensor:
    """(heads, 1, kh, kw) kernel -> (heads, N, N) attention matrix of the same linear map."""
    heads, _, kh, kw = kernel.shape
    index, valid = index if index is not None else toeplitz_index(grid, (kh, kw))
    flat = kernel.reshape(heads, kh * kw)
    return flat[:, index.to(kernel.device)] * valid.to(kernel.device, kernel.dtype)


class LKCA(nn.Module):
    """Token mixer: value projection, one large-kernel conv per head over the H x W grid, output projection.

    Each head's kernel is shared by that head's dim/heads channels, the way one attention matrix is shared by a
    head's channels; heads == dim is a plain depthwise conv, heads == 1 one kernel for every channel (the paper's
    own models). ``value_bias`` False: a value projection without bias (the paper's too).
    """

    def __init__(
        self,
        dim: int,
        grid: tuple[int, int],
        heads: int,
        kernel_size: int | tuple[int, int] | None = None,
        view: str = "conv",
        value_bias: bool = True,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        kernel = default_kernel_size(grid) if kernel_size is None else _pair(kernel_size)
        if kernel[0] % 2 == 0 or kernel[1] % 2 == 0:
            raise ValueError(f"kernel size {kernel} must be odd: the grid keeps its size with padding k//2")
        self.dim, self.grid, self.heads, self.kernel_size = dim, tuple(grid), heads, kernel
        self.v = nn.Linear(dim, dim, bias=value_bias)
        self.kernel = nn.Parameter(torch.empty(heads, 1, *kernel))
        self.proj = nn.Linear(dim, dim)
        # Scale like uniform attention over N tokens: a kernel this size mixes from the first step. Measured on
        # digits (nano, 30 epochs, batch 16): 98.3% test top-1 against 97.2% with ViT's usual std 0.02.
        nn.init.trunc_normal_(self.kernel, std=(grid[0] * grid[1]) ** -0.5)
        self.view = view  # validated by the setter

    @property
    def view(self) -> str:
        return self._view

    @view.setter
    def view(self, view: str) -> None:
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; valid: {', '.join(VIEWS)}")
        self._view = view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.v(x)
        mix = {"conv": self._conv, "attention": self._attention, "fft": self._fft}[self._view]
        return self.proj(mix(x))

    def _to_grid(self, x: torch.Tensor) -> torch.Tensor:
        # Static C, H, W: a reshape that reads them from the runtime shape breaks ONNX export on a dynamic batch.
        (h, w), c = self.grid, self.dim
        return x.transpose(1, 2).reshape(-1, c, h, w)

    def _from_grid(self, y: torch.Tensor) -> torch.Tensor:
        return y.reshape(-1, self.dim, self.grid[0] * self.grid[1]).transpose(1, 2)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.kernel.repeat_interleave(self.dim // self.heads, dim=0)
        kh, kw = self.kernel_size
        y = F.conv2d(self._to_grid(x), weight, padding=(kh // 2, kw // 2), groups=self.dim)
        return self._from_grid(y)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        d = c // self.heads
        v = x.reshape(b, n, self.heads, d).transpose(1, 2)  # (B, heads, N, d)
        out = toeplitz(self.kernel, self.grid, self._index()) @ v
        return out.transpose(1, 2).reshape(b, n, c)

    def _index(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Built once per device: rebuilding the N x N index every step costs more than the matmul at small grids.
        cache = self.__dict__.setdefault("_index_cache", {})
        key = self.kernel.device
        if key not in cache:
            cache[key] = tuple(t.to(key) for t in toeplitz_index(self.grid, self.kernel_size))
        return cache[key]

    def _fft(self, x: torch.Tensor) -> torch.Tensor:
        (h, w), (kh, kw) = self.grid, self.kernel_size
        b, _, c = x.shape
        d = c // self.heads
        # Pad to at least grid + kernel - 1 so the circular convolution has no wrap-around: it equals the linear one.
        size = (h + kh - 1, w + kw - 1)
        grid = self._to_grid(x).reshape(b, self.heads, d, h, w)
        spectrum = torch.fft.rfft2(grid.float(), s=size)
        kernel = torch.fft.rfft2(self.kernel.float().flip(-2, -1)[:, 0], s=size)  # flip: correlation as convolution
        full = torch.fft.irfft2(spectrum * kernel[None, :, None], s=size)
        oy, ox = kh - 1 - kh // 2, kw - 1 - kw // 2
        y = full[..., oy : oy + h, ox : ox + w].to(x.dtype)
        return self._from_grid(y.reshape(b, c, h, w))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, grid={self.grid}, heads={self.heads}, kernel={self.kernel_size}, view={self._view}"


class MHSA(nn.Module):
    """Standard multi-head self-attention with the same dims: the baseline the paper compares LKCA against."""

    def __init__(self, dim: int, heads: int, bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


def _pair(k: int | tuple[int, int]) -> tuple[int, int]:
    return (k, k) if isinstance(k, int) else (int(k[0]), int(k[1]))
