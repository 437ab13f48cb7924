"""Bounds on a model config, checked before any tensor is made.

A config.json with dim 1e9, depth 100000 or img_size 4e6 passes every type check and then allocates until the
allocator fails. The model's size follows from its config by arithmetic (the layers of vit.py, lkca.py and
heads.py), so it is bounded before `build_model`: at most MAX_PARAMETERS parameters, and the float32 weights plus
the activations of one image in evaluation must fit in the memory available here (limits.check_fits).
LKCA_DEPLOY_ALLOW_LARGE=1 lifts both, for people who mean it.
"""

from __future__ import annotations

import math

from lkca_runtime.errors import UserError
from lkca_runtime.limits import ALLOW_LARGE, check_fits, large_allowed

# The zoo's largest model (lkca_vit_small_64) has 11 M parameters, ViT-L 304 M: a billion is no LKCA model.
MAX_PARAMETERS = 10**9
_FLOAT = 4


def parameter_count(config) -> float:
    """Parameters `build_model(config)` makes, counted from the config (float: absurd configs overflow int)."""
    dim, depth, ratio = float(config.dim), float(config.depth), float(config.mlp_ratio)
    hidden = math.floor(dim * ratio) if math.isfinite(dim * ratio) else math.inf
    grid = (config.img_size // config.patch) ** 2
    bias = 1.0 if config.qkv_bias else 0.0  # on the value (LKCA) or query-key-value (MHSA) projection
    if config.mixer == "lkca":
        kh, kw = config.kernel or (1, 1)
        mixer = dim * dim + bias * dim + dim * dim + dim + config.heads * kh * kw
    else:
        mixer = 3 * dim * dim + 3 * bias * dim + dim * dim + dim
    block = 4 * dim + mixer + 2 * dim * hidden + hidden + dim
    patch = config.in_chans * config.patch**2 * dim + dim
    head = dim * config.num_classes + config.num_classes + 2 * dim
    if config.task == "segmentation":  # progressive head: 3x3 convs between the classes
        head += 2 * dim + 9 * config.num_classes**2 * max(1, int(math.log2(config.patch)))
    cls = 1 if config.classifier == "cls_norm" else 0  # a class token, and its position
    positions = (grid + cls) * dim if (config.mixer == "mhsa" if config.pos_embed is None else config.pos_embed) else 0
    return patch + cls * dim + positions + depth * block + head


def activation_bytes(config) -> float:
    """Float32 bytes the largest activations of one image take in evaluation: the tokens' MLP hidden layer, the
    mixer's (heads x grid x grid for attention, the padded grid for a large kernel) and the segmentation logits
    at input size."""
    tokens = (config.img_size // config.patch) ** 2
    hidden = tokens * float(config.dim) * max(float(config.mlp_ratio), 1.0)
    mixer = config.heads * float(tokens) ** 2 if config.mixer == "mhsa" else 4.0 * tokens * config.dim
    logits = float(config.num_classes) * config.img_size**2 if config.task == "segmentation" else 0.0
    return _FLOAT * 3 * (hidden + mixer + logits + float(config.in_chans) * config.img_size**2)


def check_bounds(config) -> None:
    """UserError when `config` would make more than MAX_PARAMETERS parameters or more weights and activations
    than this machine's available memory; nothing is allocated to find out."""
    if large_allowed():
        return
    params = parameter_count(config)
    if not params <= MAX_PARAMETERS:
        raise UserError(f"{config.name} with these sizes would have {params:.3g} parameters, more than "
                        f"the {MAX_PARAMETERS:.0e} any LKCA model has (dim {config.dim}, depth {config.depth}, "
                        f"img_size {config.img_size}, num_classes {config.num_classes}); set {ALLOW_LARGE}=1 if "
                        "you mean it")
    check_fits(params * _FLOAT + activation_bytes(config), f"{config.name} with these sizes")
