"""The ViT backbone, parametrised by its token mixer (LKCA or MHSA) and its task head."""

from __future__ import annotations

import torch
from torch import nn

from lkca_deploy.models.heads import ClassificationHead, SegmentationHead
from lkca_deploy.models.lkca import LKCA, MHSA

# How a classifier reads the last block's tokens:
#   norm_mean  LayerNorm every token, mean over tokens, Linear (the zoo's)
#   mean_norm  mean over tokens, LayerNorm, Linear (the paper's LKCA models)
#   cls_norm   prepend a learned class token (its position embedding too), LayerNorm it, Linear (the paper's ViT)
CLASSIFIERS = ("norm_mean", "mean_norm", "cls_norm")


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
    """Patch embedding conv, optional class token and absolute position embedding, pre-norm blocks, final norm
    (or a norm after pooling, per `classifier`), task head."""

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
        qkv_bias: bool = True,
        classifier: str = "norm_mean",
    ):
        super().__init__()
        if classifier not in CLASSIFIERS:
            raise ValueError(f"unknown classifier {classifier!r}; valid: {', '.join(CLASSIFIERS)}")
        if classifier != "norm_mean" and task != "classification":
            raise ValueError(f"classifier {classifier!r} is for classification, not {task}")
        if classifier == "cls_norm" and mixer != "mhsa":
            raise ValueError("a class token needs the mhsa mixer: LKCA mixes the token grid alone")
        self.grid = (img_size[0] // patch, img_size[1] // patch)
        self.patch_embed = nn.Conv2d(in_chans, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if classifier == "cls_norm" else None
        # LKCA's kernel is its position mechanism (weights shared by relative offset); MHSA needs one.
        use_pos = (mixer == "mhsa") if pos_embed is None else pos_embed
        tokens = self.grid[0] * self.grid[1] + (self.cls_token is not None)
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim)) if use_pos else None
        for param in (self.pos_embed, self.cls_token):
            if param is not None:
                nn.init.trunc_normal_(param, std=0.02)

        def make_mixer() -> nn.Module:
            if mixer == "lkca":
                return LKCA(dim, self.grid, heads, kernel_size, view=view, value_bias=qkv_bias)
            if mixer == "mhsa":
                return MHSA(dim, heads, bias=qkv_bias)
            raise ValueError(f"unknown mixer {mixer!r}; valid: lkca, mhsa")

        self.blocks = nn.ModuleList(Block(make_mixer(), dim, mlp_ratio) for _ in range(depth))
        # The head's own norm (after pooling) replaces the per-token one: Identity keeps `head(norm(tokens))` true.
        self.norm = nn.LayerNorm(dim) if classifier == "norm_mean" else nn.Identity()
        if task == "classification":
            pool = "cls" if classifier == "cls_norm" else "mean"
            self.head = ClassificationHead(dim, num_classes, pool, norm=classifier != "norm_mean")
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
        """Token outputs of every block (B, N, C; N + 1 with a class token, first): the boundaries where parity
        localises a divergence."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
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
