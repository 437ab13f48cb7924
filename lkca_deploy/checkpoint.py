"""Checkpoint directories: model.safetensors + config.json (+ optimizer.safetensors to resume).

Loading never unpickles: weights come from safetensors, or from ``torch.load(weights_only=True)`` for foreign .pt
state dicts. Directories are written beside the target and renamed into place, so a crash leaves no half checkpoint.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

from lkca_deploy import __version__
from lkca_deploy.models.bounds import check_bounds
from lkca_deploy.models.zoo import ModelConfig, build_model, config_from_dict
from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import atomic_dir, json_loads
from lkca_runtime.spec import PreprocessSpec

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"


@dataclass
class Checkpoint:
    path: Path
    config: ModelConfig
    spec: PreprocessSpec
    meta: dict = field(default_factory=dict)  # data set, epochs, metrics, toolkit version


def save_checkpoint(out: Path, model, config: ModelConfig, spec: PreprocessSpec, meta: dict,
                    optimizer=None, force: bool = False) -> Path:
    """Write the checkpoint folder whole; an existing one is replaced only with `force`, and never a folder that
    is not a checkpoint (fsutil.atomic_dir)."""
    from safetensors.torch import save_file


    with atomic_dir(Path(out), force=force, marker=CONFIG_FILE, what="checkpoint") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS_FILE))
        if optimizer is not None:
            _save_optimizer(optimizer, tmp / OPTIMIZER_FILE)
        doc = {"model": config.to_dict(), "preprocessing": spec.to_dict(), "toolkit_version": __version__, **meta}
        (tmp / CONFIG_FILE).write_text(json.dumps(doc, indent=2))
    return Path(out)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint's config, spec and metadata, without loading weights."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"checkpoint directory {path} does not exist")
    config_file = path / CONFIG_FILE
    if not config_file.is_file() or not (path / WEIGHTS_FILE).is_file():
        raise UserError(f"{path} is not a checkpoint: it needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        doc = json_loads(config_file.read_text())
        spec = PreprocessSpec.from_dict(doc["preprocessing"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{config_file} is corrupt: {e}") from None
    try:
        config = config_from_dict(doc.get("model"))
        check_bounds(config)  # before any tensor: absurd sizes end here, not in the allocator
        if spec.channels != config.in_chans:
            raise ValueError(f"in_chans {config.in_chans} differs from the preprocessing's {spec.channels} channels")
    except (ValueError, TypeError, UserError) as e:
        raise UserError(f"{config_file}: {e}") from None
    meta = {k: v for k, v in doc.items() if k not in ("model", "preprocessing")}
    return Checkpoint(path, config, spec, meta)


def load_checkpoint(path: str | Path, view: str | None = None):
    """(model in eval mode, Checkpoint) from a checkpoint directory."""
    ckpt = read_checkpoint(path)
    model = build_model(ckpt.config, view)
    load_weights_into(model, ckpt.path / WEIGHTS_FILE, ckpt.config.name)
    return model.eval(), ckpt


def load_state_dict_file(path: str | Path) -> dict:
    """A state dict from .safetensors, or a foreign .pt/.pth read with weights_only=True (never unpickles code)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"cannot read weights from {path}: it holds pickled Python objects besides tensors, and "
                        "lkca-deploy never unpickles code (torch.load weights_only=True)") from None
    except Exception as e:  # noqa: BLE001 - safetensors and torch raise many types for a damaged file
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot read weights from {path}: not a safetensors or PyTorch weights file ({detail})"
                        ) from None
    for key in ("state_dict", "model_state_dict"):  # training dicts: this toolkit's older ones, the paper's trainer
        if isinstance(state, dict) and key in state:
            state = state[key]
            break
    if not isinstance(state, dict):
        raise UserError(f"{path} holds no state dict")
    return state


def load_weights_into(model, path: Path, name: str) -> None:
    state = load_state_dict_file(path)
    expected = model.state_dict()
    mismatched = [k for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if mismatched or missing or unexpected:
        detail = (f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} of another shape"
                  f" (e.g. {next(iter(sorted(missing | unexpected) or mismatched))})")
        raise UserError(f"weights in {path} do not fit model {name}: {detail}")
    model.load_state_dict(state)


def _save_optimizer(optimizer, path: Path) -> None:
    """Optimizer state as safetensors (tensors) + JSON (the rest), so resuming never unpickles."""
    from safetensors.torch import save_file

    sd = optimizer.state_dict()
    tensors = {f"{i}.{k}": v.detach().cpu().contiguous() for i, s in sd["state"].items() for k, v in s.items()}
    save_file(tensors, str(path), metadata={"param_groups": json.dumps(sd["param_groups"])})


def load_optimizer(optimizer, path: Path) -> bool:
    """Restore optimizer state saved by _save_optimizer; False when the checkpoint has none."""
    if not path.is_file():
        return False
    from safetensors import safe_open

    state: dict = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            groups = json.loads(f.metadata()["param_groups"])
            for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                i, name = key.split(".", 1)
                state.setdefault(int(i), {})[name] = f.get_tensor(key)
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except Exception as e:  # noqa: BLE001 - safetensors, json and torch raise many types for a damaged file
        detail = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot resume from {path}: it is damaged ({detail}); delete it to resume without the "
                        "optimizer state") from None
    return True
