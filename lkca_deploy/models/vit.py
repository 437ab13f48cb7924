"""The ViT backbone, parametrised by its token mixer (LKCA or MHSA) and its task head."""

from __future__ import annotations

import torch
from torch import nn

from lkca_deploy.models.heads import ClassificationHead, SegmentationHead
from lkca_deploy.models.lkca import LKCA, MHSA


class Block(nn.Module):
    """Pre-norm transformer block: x + mixer(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, mixer: nn.Module, dim: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding conv, optional absolute position embedding, pre-norm blocks, final norm, task head."""

    def __init__(
        self,
        *,
        mixer: str,
        task: str,
        img_size: tuple[int, int],
        in_chans: int,
        patch: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        num_classes: int,
        kernel_size: int | None = None,
        pos_embed: bool | None = None,
        view: str = "conv",
        progressive_head: bool = False,
    ):
        super().__init__()
        self.grid = (img_size[0] // patch, img_size[1] // patch)
        self.patch_embed = nn.Conv2d(in_chans, dim, patch, stride=patch)
        # LKCA's kernel is its position mechanism (weights shared by relative offset); MHSA needs one.
        use_pos = (mixer == "mhsa") if pos_embed is None else pos_embed
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], dim)) if use_pos else None
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

        def make_mixer() -> nn.Module:
            if mixer == "lkca":
                return LKCA(dim, self.grid, heads, kernel_size, view=view)
            if mixer == "mhsa":
                return MHSA(dim, heads)
            raise ValueError(f"unknown mixer {mixer!r}; valid: lkca, mhsa")

        self.blocks = nn.ModuleList(Block(make_mixer(), dim, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        if task == "classification":
            self.head = ClassificationHead(dim, num_classes)
        elif task == "segmentation":
            self.head = SegmentationHead(dim, num_classes, self.grid, img_size, progressive_head)
        else:
            raise ValueError(f"unknown task {task!r}; valid: classification, segmentation")
        self.apply(_init_weights)

    def set_view(self, view: str) -> ViT:
        """Switch every LKCA mixer to another exact view of the same weights (conv, attention, fft)."""
        for m in self.modules():
            if isinstance(m, LKCA):
                m.view = view
        return self

    def forward_blocks(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Token outputs of every block (B, N, C): the boundaries where parity localises a divergence."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.forward_blocks(x)[-1]))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
