"""The paper's own models, for tests: state dicts in their trainer's layout and their forward in plain torch ops.

Written from how the authors' code computes (CatworldLee/LKCA-MiniViTsTrainer-Pytorch-CIFAR-TinyImageNet:
models/create_model.py, largevit_cnn.py, largevit_vit.py, vit.py), independently of lkca_deploy's model code and
of lkca_deploy.official's key mapping, so a wrong mapping or a wrong model option shows as a logits mismatch.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F

# name: (kind, dim, depth, heads, mlp ratio), as create_model.py builds them
LKCA_MODELS = {
    "vit-lkca": ("cnn", 210, 10, 10, 2), "vit-05m-lkca": ("cnn", 100, 8, 4, 2), "vit-1m-lkca": ("cnn", 136, 9, 8, 2),
    "vit-2m-lkca": ("cnn", 192, 9, 12, 2), "vit-4m-lkca": ("cnn", 246, 11, 6, 2),
    "vit-8m-lkca": ("cnn", 306, 14, 6, 2), "vit-12m-lkca": ("cnn", 360, 12, 8, 3),
    "largevit-cnn": ("cnn", 192, 9, 12, 2), "largevit-vit": ("window", 192, 9, 12, 2),
}
VIT_MODELS = {"vit": ("mhsa", 192, 9, 12, 2), "vit-05m": ("mhsa", 120, 4, 4, 2)}
MODELS = {**LKCA_MODELS, **VIT_MODELS}
DATASETS = {"CIFAR10": (32, 10), "CIFAR100": (32, 100), "SVHN": (32, 10), "T-IMNET": (64, 200)}


def official_state(name: str, img_size: int, classes: int, seed: int = 0) -> OrderedDict:
    """Random weights in the trainer's key names and shapes, scaled for O(1) activations (a mixer that matters)."""
    kind, dim, depth, _, ratio = MODELS[name]
    patch = {32: 4, 64: 8}[img_size]
    grid = img_size // patch
    n, k, hidden = grid * grid, 2 * grid - 1, dim * ratio
    gen = torch.Generator().manual_seed(seed)

    def linear(out_f, in_f):
        return torch.randn(out_f, in_f, generator=gen) / math.sqrt(in_f)

    def vec(size, center=0.0):
        return center + 0.1 * torch.randn(size, generator=gen)

    sd = OrderedDict()
    sd["pos_embedding"] = torch.randn(1, n + (kind == "mhsa"), dim, generator=gen)
    sd["cls_token"] = torch.randn(1, 1, dim, generator=gen)
    sd["to_patch_embedding.1.weight"] = linear(dim, patch * patch * 3)
    sd["to_patch_embedding.1.bias"] = vec(dim)
    for i in range(depth):
        pre = f"transformer.layers.{i}."
        sd[pre + "0.norm.weight"], sd[pre + "0.norm.bias"] = vec(dim, 1.0), vec(dim)
        if kind == "mhsa":
            sd[pre + "0.fn.to_qkv.weight"] = linear(3 * dim, dim)
        else:
            sd[pre + "0.fn.to_v.weight"] = linear(dim, dim)
        sd[pre + "0.fn.to_out.0.weight"], sd[pre + "0.fn.to_out.0.bias"] = linear(dim, dim), vec(dim)
        if kind != "mhsa":
            sd[pre + "0.fn.dynamicqk"] = torch.randn(1, 1, k, k, generator=gen) / grid
        sd[pre + "1.norm.weight"], sd[pre + "1.norm.bias"] = vec(dim, 1.0), vec(dim)
        sd[pre + "1.fn.net.0.weight"], sd[pre + "1.fn.net.0.bias"] = linear(hidden, dim), vec(hidden)
        sd[pre + "1.fn.net.3.weight"], sd[pre + "1.fn.net.3.bias"] = linear(dim, hidden), vec(dim)
    sd["mlp_head.0.weight"], sd["mlp_head.0.bias"] = vec(dim, 1.0), vec(dim)
    sd["mlp_head.1.weight"], sd["mlp_head.1.bias"] = linear(classes, dim), vec(classes)
    return sd


def official_forward(name: str, sd: dict, img: torch.Tensor) -> torch.Tensor:
    """The trainer's model(img) in eval mode (dropout and stochastic depth off), in float32 as it runs."""
    kind, dim, depth, heads, _ = MODELS[name]
    b, c, h_px, _ = img.shape
    patch = {32: 4, 64: 8}[h_px]
    g = h_px // patch
    # Rearrange('b c (h p1) (w p2) -> b (h w) (p1 p2 c)') + Linear
    x = img.reshape(b, c, g, patch, g, patch).permute(0, 2, 4, 3, 5, 1).reshape(b, g * g, patch * patch * c)
    x = x @ sd["to_patch_embedding.1.weight"].T + sd["to_patch_embedding.1.bias"]
    if kind == "mhsa":
        x = torch.cat([sd["cls_token"].expand(b, 1, dim), x], dim=1)
    x = x + sd["pos_embedding"][:, : x.shape[1]]

    def ln(t, key):
        return F.layer_norm(t, (dim,), sd[key + ".weight"], sd[key + ".bias"])

    for i in range(depth):
        pre = f"transformer.layers.{i}."
        y = ln(x, pre + "0.norm")
        if kind == "mhsa":
            q, k, v = (y @ sd[pre + "0.fn.to_qkv.weight"].T).chunk(3, dim=-1)
            q, k, v = (t.reshape(b, -1, heads, dim // heads).transpose(1, 2) for t in (q, k, v))
            attn = torch.softmax(q @ k.transpose(-1, -2) * (dim // heads) ** -0.5, dim=-1)
            mixed = (attn @ v).transpose(1, 2).reshape(b, -1, dim)
        elif kind == "cnn":  # every channel through one conv with the shared kernel
            v = y @ sd[pre + "0.fn.to_v.weight"].T
            grid = v.permute(0, 2, 1).reshape(b * dim, 1, g, g)
            mixed = F.conv2d(grid, sd[pre + "0.fn.dynamicqk"], padding=g - 1).reshape(b, dim, g * g).permute(0, 2, 1)
        else:  # largevit-vit: the kernel unfolded into an N x N matrix by windows, then attend @ v
            v = y @ sd[pre + "0.fn.to_v.weight"].T
            kernel = sd[pre + "0.fn.dynamicqk"][0, 0]
            rows = [kernel[g - 1 - i2 : 2 * g - 1 - i2, g - 1 - j2 : 2 * g - 1 - j2].reshape(-1)
                    for i2 in range(g) for j2 in range(g)]
            mixed = torch.stack(rows) @ v
        x = x + mixed @ sd[pre + "0.fn.to_out.0.weight"].T + sd[pre + "0.fn.to_out.0.bias"]
        y = ln(x, pre + "1.norm")
        y = F.gelu(y @ sd[pre + "1.fn.net.0.weight"].T + sd[pre + "1.fn.net.0.bias"])
        x = x + y @ sd[pre + "1.fn.net.3.weight"].T + sd[pre + "1.fn.net.3.bias"]
    pooled = x[:, 0] if kind == "mhsa" else x.mean(dim=1)
    return ln(pooled, "mlp_head.0") @ sd["mlp_head.1.weight"].T + sd["mlp_head.1.bias"]


def max_relative_error(got, ref) -> float:
    """max |got - ref| over the reference's largest magnitude."""
    got, ref = torch.as_tensor(got).double(), torch.as_tensor(ref).double()
    return float((got - ref).abs().max() / ref.abs().max())
