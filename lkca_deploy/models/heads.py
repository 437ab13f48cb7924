"""Task heads on top of the ViT's token grid: the only part of the network that differs between tasks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

POOLS = ("mean", "cls")


class ClassificationHead(nn.Module):
    """Pool the tokens, optionally LayerNorm the pooled vector, then a linear classifier: (B, N, C) -> (B, classes).

    ``pool``: "mean" over all tokens, or "cls", the first token (a class token the backbone prepended). ``norm``:
    LayerNorm after pooling, as the paper's code classifies (the zoo's ViT normalises every token before the mean
    instead; LayerNorm is per token, so for "cls" the two orders are the same function).
    """

    def __init__(self, dim: int, num_classes: int, pool: str = "mean", norm: bool = False):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; valid: {', '.join(POOLS)}")
        self.pool = pool
        self.norm = nn.LayerNorm(dim) if norm else None
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens[:, 0] if self.pool == "cls" else tokens.mean(dim=1)
        return self.fc(x if self.norm is None else self.norm(x))


class SegmentationHead(nn.Module):
    """SETR-naive: per-token LayerNorm and linear to class logits, on the grid, upsampled bilinearly to the input.

    (B, N, C) -> (B, classes, H, W). ``progressive`` upsamples by 2x steps with a 3x3 conv each (SETR-PUP) instead
    of one bilinear jump.
    """

    def __init__(self, dim: int, num_classes: int, grid: tuple[int, int], img_size: tuple[int, int],
                 progressive: bool = False):
        super().__init__()
        self.grid, self.img_size, self.num_classes = tuple(grid), tuple(img_size), num_classes
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)
        steps = max(0, (img_size[0] // grid[0]).bit_length() - 1) if progressive else 0
        self.up = nn.ModuleList(nn.Conv2d(num_classes, num_classes, 3, padding=1) for _ in range(steps))

    @property
    def logit_grid(self) -> tuple[int, int]:
        """(H, W) of the logits before the final bilinear resize: the token grid, doubled per progressive step."""
        return self.grid[0] << len(self.up), self.grid[1] << len(self.up)

    def forward(self, tokens: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """size: the logits' (H, W), reached by one bilinear resize from `logit_grid` (none when equal); None: the
        input size. An export that ends at logit_grid leaves that one resize to whoever needs the image's size."""
        (h, w), k = self.grid, self.num_classes
        x = self.fc(self.norm(tokens)).transpose(1, 2).reshape(-1, k, h, w)
        for conv in self.up:
            x = conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        size = self.img_size if size is None else tuple(size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x
