"""Import checkpoints trained with the paper's own code, as ordinary checkpoint directories.

The LKCA authors' trainer (github.com/CatworldLee/LKCA-MiniViTsTrainer-Pytorch-CIFAR-TinyImageNet) saves two files:
a training dict ``{"model_state_dict", "epoch", "optimizer_state_dict", "scheduler"}`` each epoch, and the bare
``model.state_dict()`` at the end; both with DataParallel's ``module.`` prefix when trained that way. Both are read
with ``torch.load(weights_only=True)``: nothing is unpickled.

Their models are the zoo's ``official-<name>`` configurations (models/zoo.py); the keys map one to one, except

- ``to_patch_embedding.1`` (a Linear over each patch rearranged to (p1 p2 c)) becomes the patch embedding conv:
  the same linear map, its weight reshaped to (dim, p1, p2, c) and permuted to (dim, c, p1, p2);
- ``cls_token`` of the LKCA models is dropped: their forward never reads it.

Their data set fixes what the model was trained on (utils/dataloader.py and create_model.py there): input size,
patch (32 px: 4, 64 px: 8), classes and the normalisation constants, which go into the checkpoint's preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lkca_deploy.checkpoint import load_state_dict_file, save_checkpoint
from lkca_deploy.models.zoo import (
    OFFICIAL_LKCA,
    OFFICIAL_PREFIX,
    OFFICIAL_VIT,
    ModelConfig,
    build_model,
    get_config,
)
from lkca_runtime.errors import UserError
from lkca_runtime.spec import PreprocessSpec

SOURCE = "lkca-official"  # `lkca-deploy import --from`: the code base that trained the checkpoint


@dataclass(frozen=True)
class OfficialDataset:
    classes: int
    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    data: str  # the toolkit's name of the same data set (evaluate, pipeline --data)
    class_names: tuple[str, ...] = ()  # in the trainer's label order; empty: predictions name the class index

    @property
    def patch(self) -> int:
        return {32: 4, 64: 8}[self.img_size]  # create_model.py: 32 px -> patch 4, 64 px -> patch 8


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DATASETS = {
    "CIFAR10": OfficialDataset(10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "cifar10",
                               CIFAR10_CLASSES),
    "CIFAR100": OfficialDataset(100, 32, (0.5070, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "cifar100"),
    "SVHN": OfficialDataset(10, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "svhn",
                            tuple(str(d) for d in range(10))),
    "T-IMNET": OfficialDataset(200, 64, (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821), "tiny-imagenet"),
}
MODELS = (*OFFICIAL_LKCA, *OFFICIAL_VIT)


def official_config(model: str, dataset: str) -> ModelConfig:
    """The zoo configuration of the paper's `model` as its trainer builds it for `dataset`."""
    if model not in MODELS:
        raise UserError(f"unknown official model {model!r}; valid: {', '.join(MODELS)}")
    if dataset not in DATASETS:
        raise UserError(f"unknown official data set {dataset!r}; valid: {', '.join(DATASETS)}")
    ds = DATASETS[dataset]
    return get_config(OFFICIAL_PREFIX + model, img_size=ds.img_size, patch=ds.patch, num_classes=ds.classes)


# ------------------------------------------------------------------------------------------------- key mapping

# official key (after "transformer.layers.{i}.") -> toolkit key (after "blocks.{i}.")
_BLOCK_KEYS = {
    "0.norm.weight": "norm1.weight", "0.norm.bias": "norm1.bias",
    "0.fn.to_v.weight": "mixer.v.weight", "0.fn.dynamicqk": "mixer.kernel",  # LKCA
    "0.fn.to_qkv.weight": "mixer.qkv.weight",  # MHSA
    "0.fn.to_out.0.weight": "mixer.proj.weight", "0.fn.to_out.0.bias": "mixer.proj.bias",
    "1.norm.weight": "norm2.weight", "1.norm.bias": "norm2.bias",
    "1.fn.net.0.weight": "mlp.0.weight", "1.fn.net.0.bias": "mlp.0.bias",
    "1.fn.net.3.weight": "mlp.2.weight", "1.fn.net.3.bias": "mlp.2.bias",
}
_TOP_KEYS = {
    "to_patch_embedding.1.weight": "patch_embed.weight", "to_patch_embedding.1.bias": "patch_embed.bias",
    "pos_embedding": "pos_embed", "cls_token": "cls_token",
    "mlp_head.0.weight": "head.norm.weight", "mlp_head.0.bias": "head.norm.bias",
    "mlp_head.1.weight": "head.fc.weight", "mlp_head.1.bias": "head.fc.bias",
}


def official_layout(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the state dict the paper's code saves for this configuration, in its order."""
    dim, grid, p, c = config.dim, config.grid, config.patch, config.in_chans
    n = grid[0] * grid[1]
    lkca = config.mixer == "lkca"
    layout: dict[str, tuple[int, ...]] = {"pos_embedding": (1, n if lkca else n + 1, dim), "cls_token": (1, 1, dim)}
    layout.update({"to_patch_embedding.1.weight": (dim, p * p * c), "to_patch_embedding.1.bias": (dim,)})
    hidden, k = int(dim * config.mlp_ratio), 2 * grid[0] - 1
    for i in range(config.depth):
        pre = f"transformer.layers.{i}."
        layout[pre + "0.norm.weight"] = layout[pre + "0.norm.bias"] = (dim,)
        if lkca:
            layout[pre + "0.fn.to_v.weight"] = (dim, dim)
        else:
            layout[pre + "0.fn.to_qkv.weight"] = (3 * dim, dim)
        layout[pre + "0.fn.to_out.0.weight"], layout[pre + "0.fn.to_out.0.bias"] = (dim, dim), (dim,)
        if lkca:
            layout[pre + "0.fn.dynamicqk"] = (1, 1, k, k)
        layout[pre + "1.norm.weight"] = layout[pre + "1.norm.bias"] = (dim,)
        layout[pre + "1.fn.net.0.weight"], layout[pre + "1.fn.net.0.bias"] = (hidden, dim), (hidden,)
        layout[pre + "1.fn.net.3.weight"], layout[pre + "1.fn.net.3.bias"] = (dim, hidden), (dim,)
    layout.update({"mlp_head.0.weight": (dim,), "mlp_head.0.bias": (dim,),
                   "mlp_head.1.weight": (config.num_classes, dim), "mlp_head.1.bias": (config.num_classes,)})
    return layout


def to_toolkit_state(state: Mapping, config: ModelConfig) -> dict:
    """The paper's state dict (already checked against official_layout) as the zoo model's state dict."""
    out = {}
    for key, value in state.items():
        if key.startswith("transformer.layers."):
            index, rest = key[len("transformer.layers."):].split(".", 1)
            out[f"blocks.{index}.{_BLOCK_KEYS[rest]}"] = value
        elif key == "to_patch_embedding.1.weight":
            p, c = config.patch, config.in_chans
            out["patch_embed.weight"] = value.reshape(config.dim, p, p, c).permute(0, 3, 1, 2).contiguous()
        elif key != "cls_token" or config.mixer == "mhsa":
            out[_TOP_KEYS[key]] = value
    return out


# ------------------------------------------------------------------------------------------------- reading


def read_official_state(path: str | Path) -> dict:
    """The model's state dict from either file the paper's trainer writes, without DataParallel's prefixes.

    UserError for anything else: no file, no checkpoint, pickled objects, non-tensor entries."""
    import torch


    state = load_state_dict_file(path)  # weights_only: never unpickles; unwraps model_state_dict
    if not state or not all(isinstance(k, str) for k in state):
        raise UserError(f"{path} holds no state dict")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{path}: {key} is a {type(value).__name__}, not a tensor: not a model state dict")
        if not value.is_floating_point():
            raise UserError(f"{path}: {key} holds {value.dtype} values, not floating point weights")
    return {k: v.float() for k, v in state.items()}


def first_difference(state: Mapping, layout: Mapping[str, tuple[int, ...]]) -> str | None:
    """How `state` first differs from `layout` (the layout's order: missing key or shape; then extra keys)."""
    for key, shape in layout.items():
        if key not in state:
            return f"{key} is missing"
        if tuple(state[key].shape) != tuple(shape):
            return f"{key} has shape {_shape(state[key].shape)}, not {_shape(shape)}"
    extra = [k for k in state if k not in layout]
    return f"{extra[0]} is not one of its keys" if extra else None


def matching_models(state: Mapping) -> list[str]:
    """The official models (and data sets) whose state dict has exactly these keys and shapes."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    matches: dict[str, list[str]] = {}
    for model in MODELS:
        for dataset in DATASETS:
            if official_layout(official_config(model, dataset)) == shapes:
                matches.setdefault(model, []).append(dataset)
    return [f"{m} on {' or '.join(ds)}" for m, ds in matches.items()]


# ------------------------------------------------------------------------------------------------- import


def import_checkpoint(ckpt: str | Path, source: str, model: str, dataset: str, out: str | Path, *,
                      force: bool = False, echo: Callable[[str], None] | None = None) -> Path:
    """`lkca-deploy import`: a checkpoint trained by `source`'s code as a checkpoint directory at `out`."""
    if source != SOURCE:
        raise UserError(f"unknown --from {source!r}; valid: {SOURCE}")
    return import_official(ckpt, model, dataset, out, force=force, echo=echo)


def import_official(ckpt: str | Path, model: str, dataset: str, out: str | Path, *, force: bool = False,
                    echo: Callable[[str], None] | None = None) -> Path:
    """Write `ckpt`, the paper's `model` trained on `dataset`, as a checkpoint directory at `out`."""
    import torch


    config = official_config(model, dataset)
    state = read_official_state(ckpt)
    problem = first_difference(state, official_layout(config))
    if problem:
        matches = matching_models(state)
        hint = f"; its shapes are those of {', '.join(matches)}" if matches else ""
        raise UserError(f"{ckpt} is not the paper's {model} for {dataset}: {problem}{hint}")
    with torch.device("meta"):  # no random initialisation to throw away: the weights are all in `state`
        net = build_model(config, view="conv")
    net.load_state_dict(to_toolkit_state(state, config), assign=True)
    ds = DATASETS[dataset]
    spec = PreprocessSpec(input_size=(ds.img_size, ds.img_size), channels=3, mean=ds.mean, std=ds.std,
                          class_names=ds.class_names)
    meta = {"data": ds.data, "imported": {"from": SOURCE, "model": model, "dataset": dataset, "file": str(ckpt)}}
    path = save_checkpoint(Path(out), net, config, spec, meta, force=force)
    if echo:
        echo(f"imported the paper's {model} ({dataset}, {config.img_size} px) as {config.name} into {path}")
    return path


def _shape(shape) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"
