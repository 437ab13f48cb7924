"""Named model configs: every config says its task, input size, channels, grid and kernel.

Each LKCA config has an MHSA twin of the same dims (the paper's baseline). Configs are plain arguments of ViT.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..errors import UserError
from .lkca import default_kernel_size, default_view


@dataclass(frozen=True)
class ModelConfig:
    name: str
    mixer: str  # "lkca" | "mhsa"
    task: str  # "classification" | "segmentation"
    img_size: int
    in_chans: int
    patch: int
    dim: int
    depth: int
    heads: int
    mlp_ratio: float
    num_classes: int
    kernel_size: int | None = None  # None: 2 * grid - 1, every token sees every token
    pos_embed: bool | None = None  # None: on for MHSA, off for LKCA
    progressive_head: bool = False
    description: str = ""

    @property
    def grid(self) -> tuple[int, int]:
        g = self.img_size // self.patch
        return (g, g)

    @property
    def kernel(self) -> tuple[int, int] | None:
        if self.mixer != "lkca":
            return None
        return default_kernel_size(self.grid) if self.kernel_size is None else (self.kernel_size, self.kernel_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


_REGISTRY: dict[str, ModelConfig] = {}


def _register_pair(suffix: str, description: str, **kw) -> None:
    """lkca_<suffix> and its MHSA twin: vit_<size> for classification, vit_seg_<size> for segmentation."""
    twin = suffix if suffix.startswith("vit_") else f"vit_{suffix}"
    for mixer, name in (("lkca", f"lkca_{suffix}"), ("mhsa", twin)):
        _REGISTRY[name] = ModelConfig(name=name, mixer=mixer, description=description, **kw)


_CLS = {"task": "classification", "mlp_ratio": 2.0}
_register_pair("vit_nano", "digits and tests: 32 px, patch 4, 8x8 grid", img_size=32, in_chans=1, patch=4, dim=64,
               depth=4, heads=4, num_classes=10, **_CLS)
_register_pair("vit_tiny", "the paper's small-data setting (CIFAR/SVHN): 32 px, patch 4, 8x8 grid", img_size=32,
               in_chans=3, patch=4, dim=192, depth=9, heads=12, num_classes=10, **_CLS)
_register_pair("vit_small", "CIFAR/SVHN, wider: 32 px, patch 4, 8x8 grid", img_size=32, in_chans=3, patch=4,
               dim=384, depth=9, heads=12, num_classes=10, **_CLS)
_register_pair("vit_tiny_64", "Tiny-ImageNet: 64 px, patch 8, 8x8 grid", img_size=64, in_chans=3, patch=8,
               dim=192, depth=9, heads=12, num_classes=200, **_CLS)
_register_pair("vit_small_64", "Tiny-ImageNet, wider: 64 px, patch 8, 8x8 grid", img_size=64, in_chans=3, patch=8,
               dim=384, depth=9, heads=12, num_classes=200, **_CLS)
_SEG = {"task": "segmentation", "mlp_ratio": 2.0}
_register_pair("seg_nano", "digit-scenes: 64 px, patch 4, 16x16 grid, kernel 31", img_size=64, in_chans=1,
               patch=4, dim=64, depth=4, heads=4, num_classes=11, **_SEG)
_register_pair("seg_tiny", "ADE20K: 512 px, patch 16, 32x32 grid, kernel 63", img_size=512, in_chans=3,
               patch=16, dim=192, depth=9, heads=12, num_classes=150, **_SEG)


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_config(name: str, **overrides) -> ModelConfig:
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; valid: {', '.join(list_models())}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(overrides) - set(ModelConfig.__dataclass_fields__)
    if unknown:
        raise UserError(f"unknown model argument(s) {', '.join(sorted(unknown))} for {name}")
    return replace(_REGISTRY[name], **overrides)


def build_model(config: ModelConfig, view: str | None = None):
    """A ViT for this config; view None picks the faster training view for its grid."""
    from .vit import ViT

    return ViT(
        mixer=config.mixer,
        task=config.task,
        img_size=(config.img_size, config.img_size),
        in_chans=config.in_chans,
        patch=config.patch,
        dim=config.dim,
        depth=config.depth,
        heads=config.heads,
        mlp_ratio=config.mlp_ratio,
        num_classes=config.num_classes,
        kernel_size=config.kernel_size,
        pos_embed=config.pos_embed,
        view=view or default_view(config.grid),
        progressive_head=config.progressive_head,
    )


def create_model(name: str, view: str | None = None, num_classes: int | None = None, seed: int | None = None,
                 **overrides):
    """A model from the zoo by name. ``seed`` makes the random initialisation deterministic."""
    import torch

    config = get_config(name, num_classes=num_classes, **overrides)
    if seed is None:
        return build_model(config, view)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_model(config, view)


def model_summary(name: str) -> dict:
    """Name, params, GFLOPs (one image, conv view as exported), input size, grid and kernel."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    config = get_config(name)
    with torch.device("meta"):  # shapes only: counting FLOPs needs no arithmetic (seconds -> milliseconds)
        model = build_model(config, view="conv").eval()
        x = torch.zeros(1, config.in_chans, config.img_size, config.img_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return {
        "name": name,
        "task": config.task,
        "mixer": config.mixer,
        "params": sum(p.numel() for p in model.parameters()),
        "gflops": counter.get_total_flops() / 1e9,
        "input_size": [config.in_chans, config.img_size, config.img_size],
        "grid": list(config.grid),
        "kernel": list(config.kernel) if config.kernel else None,
        "classes": config.num_classes,
        "description": config.description,
    }
