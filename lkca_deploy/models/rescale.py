"""A function-preserving rescale that plants an activation outlier: the model every quantizer must survive.

One output channel of a block's value projection is multiplied by `factor`, and the matching input column of the
mixer's output projection divided by it. In between the channel passes only through linear maps of that channel
alone (LKCA: a depthwise conv, no bias; MHSA: attention weights times V), so the FP32 logits do not change, while
the tensors in between now hold one channel `factor` times larger than the rest: a per-tensor INT8 range is then
spent on that channel, and a large enough factor pushes it past FP16's 65504. Trained transformers grow such
channels by themselves (docs/reduced-precision.md); this builds one from any checkpoint, without new data.
"""

from __future__ import annotations

from pathlib import Path

from lkca_deploy.checkpoint import load_checkpoint, save_checkpoint
from lkca_deploy.models.lkca import LKCA, MHSA
from lkca_runtime.errors import UserError


def plant_value_outlier(model, block: int, channel: int, factor: float) -> None:
    """Rescale `channel` of block `block`'s value projection by `factor` in place (and its reader by 1/factor)."""
    import torch


    if not 0 <= block < len(model.blocks):
        raise UserError(f"block {block} does not exist; the model has {len(model.blocks)}")
    mixer = model.blocks[block].mixer
    if isinstance(mixer, LKCA):
        value, offset, dim = mixer.v, 0, mixer.dim
    elif isinstance(mixer, MHSA):
        dim = mixer.proj.in_features
        value, offset = mixer.qkv, 2 * dim  # qkv rows: q, k, v
    else:
        raise UserError(f"block {block}'s mixer is a {type(mixer).__name__}, neither LKCA nor MHSA")
    if not 0 <= channel < dim:
        raise UserError(f"channel {channel} does not exist; the mixer has {dim}")
    if not factor > 0:
        raise UserError(f"the rescale factor must be positive, got {factor}")
    with torch.no_grad():
        value.weight[offset + channel] *= factor
        if value.bias is not None:
            value.bias[offset + channel] *= factor
        mixer.proj.weight[:, channel] /= factor


def outlier_checkpoint(ckpt_dir: str | Path, out: str | Path, *, block: int, channel: int, factor: float) -> Path:
    """A copy of a checkpoint with `plant_value_outlier` applied; the rescale is recorded in its metadata."""
    model, ckpt = load_checkpoint(ckpt_dir)
    plant_value_outlier(model, block, channel, factor)
    meta = {**ckpt.meta, "rescaled": {"block": block, "channel": channel, "factor": factor}}
    return save_checkpoint(Path(out), model, ckpt.config, ckpt.spec, meta)
