"""Task heads on top of the ViT's token grid: the only part of the network that differs between tasks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClassificationHead(nn.Module):
    """Global average pooling over tokens, then a linear classifier: (B, N, C) -> (B, classes)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(tokens.mean(dim=1))


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
