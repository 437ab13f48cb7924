"""Named model configs: every config says its task, input size, channels, grid and kernel.

Each LKCA config has an MHSA twin of the same dims (the paper's baseline). Configs are plain arguments of ViT.
The official-* configs are the paper's own models as its trainer builds them (lkca_deploy.official imports them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from lkca_deploy.models.lkca import default_kernel_size, default_view
from lkca_deploy.models.vit import ViT
from lkca_deploy.ranges import POSITIVE, POSITIVE_INT, Range
from lkca_runtime.errors import UserError


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
    qkv_bias: bool = True  # a bias on the value (LKCA) or query-key-value (MHSA) projection
    classifier: str = "norm_mean"  # models/vit.py CLASSIFIERS: where the head normalises, class token or mean
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


# The paper's own models, as its trainer builds them (CatworldLee/LKCA-MiniViTsTrainer-Pytorch-CIFAR-TinyImageNet,
# models/create_model.py), registered as official-<its name> at its CIFAR-10 setting (32 px, patch 4, 10 classes);
# lkca_deploy.official sets size, patch and classes per data set on import. All LKCA ones share one kernel across
# every channel (heads 1 here; their heads only split a width nothing else reads), learn a position embedding, have
# no value bias and classify by mean, LayerNorm, Linear; their ViT classifies from a class token.
# name: (dim, depth, heads, mlp ratio)
OFFICIAL_LKCA = {
    "vit-lkca": (210, 10, 10, 2), "vit-05m-lkca": (100, 8, 4, 2), "vit-1m-lkca": (136, 9, 8, 2),
    "vit-2m-lkca": (192, 9, 12, 2), "vit-4m-lkca": (246, 11, 6, 2), "vit-8m-lkca": (306, 14, 6, 2),
    "vit-12m-lkca": (360, 12, 8, 3), "largevit-cnn": (192, 9, 12, 2), "largevit-vit": (192, 9, 12, 2),
}
OFFICIAL_VIT = {
    "vit": (192, 9, 12, 2), "vit-05m": (120, 4, 4, 2), "vit-1m": (136, 7, 8, 2), "vit-2m": (200, 6, 8, 2),
    "vit-4m": (264, 7, 8, 2), "vit-8m": (312, 10, 8, 2),
}
OFFICIAL_PREFIX = "official-"


def _register_official() -> None:
    common = {"task": "classification", "img_size": 32, "in_chans": 3, "patch": 4, "num_classes": 10,
              "pos_embed": True, "qkv_bias": False}
    for name, (dim, depth, heads, ratio) in OFFICIAL_LKCA.items():
        _REGISTRY[OFFICIAL_PREFIX + name] = ModelConfig(
            name=OFFICIAL_PREFIX + name, mixer="lkca", dim=dim, depth=depth, heads=1, mlp_ratio=float(ratio),
            classifier="mean_norm", description=f"the paper's {name}: one shared kernel ({heads} heads there)",
            **common)
    for name, (dim, depth, heads, ratio) in OFFICIAL_VIT.items():
        _REGISTRY[OFFICIAL_PREFIX + name] = ModelConfig(
            name=OFFICIAL_PREFIX + name, mixer="mhsa", dim=dim, depth=depth, heads=heads, mlp_ratio=float(ratio),
            classifier="cls_norm", description=f"the paper's MHSA baseline {name}: class token", **common)


_register_official()


_POSITIVE_FIELDS = ("img_size", "patch", "dim", "depth", "heads", "num_classes")


def config_from_dict(d) -> ModelConfig:
    """A checkpoint's model config, validated against the zoo before any model is built: the name must be a zoo
    model, mixer and task the zoo's for it, sizes positive integers that split evenly (image into patches, width
    into heads), channels 1 or 3. Fields the dict lacks come from the zoo. ValueError (TypeError for no dict at
    all) says which field is wrong."""
    if not isinstance(d, dict):
        raise TypeError(f"'model' must be an object naming a zoo model, not {d!r}")
    name = d.get("name")
    if name not in _REGISTRY:
        raise ValueError(f"model name {name!r} is not in the zoo; valid: {', '.join(list_models())}")
    zoo = _REGISTRY[name]
    fields = {k: v for k, v in d.items() if k in ModelConfig.__dataclass_fields__}
    config = replace(zoo, **fields)
    for field in ("mixer", "task"):
        if getattr(config, field) != getattr(zoo, field):
            raise ValueError(f"{field} {getattr(config, field)!r} is not {name}'s ({getattr(zoo, field)!r})")
    for field in _POSITIVE_FIELDS:
        problem = POSITIVE_INT.problem(getattr(config, field))
        if problem:
            raise ValueError(f"{field}: {problem}")
    if config.in_chans not in (1, 3):
        raise ValueError(f"in_chans: {config.in_chans!r} is not 1 (grayscale) or 3 (RGB)")
    if POSITIVE.problem(config.mlp_ratio):
        raise ValueError(f"mlp_ratio: {POSITIVE.problem(config.mlp_ratio)}")
    if config.kernel_size is not None and Range(1, integer=True).problem(config.kernel_size):
        raise ValueError(f"kernel_size: {Range(1, integer=True).problem(config.kernel_size)} (or null)")
    if config.img_size % config.patch:
        raise ValueError(f"patch {config.patch} does not divide img_size {config.img_size}")
    if config.dim % config.heads:
        raise ValueError(f"dim {config.dim} does not split into {config.heads} heads")
    for field in ("pos_embed", "progressive_head"):
        if not isinstance(getattr(config, field), bool) and getattr(config, field) is not None:
            raise ValueError(f"{field}: {getattr(config, field)!r} is not true, false or null")
    if not isinstance(config.qkv_bias, bool):
        raise TypeError(f"qkv_bias: {config.qkv_bias!r} is not true or false")
    if config.classifier != zoo.classifier:
        raise ValueError(f"classifier {config.classifier!r} is not {name}'s ({zoo.classifier!r})")
    return config


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
        qkv_bias=config.qkv_bias,
        classifier=config.classifier,
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
