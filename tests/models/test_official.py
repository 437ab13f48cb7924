"""Checkpoints of the paper's own trainer, imported: the same logits as the paper's forward, in every view and
through ONNX, from both files the trainer writes; every wrong file a clear user error."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch
from official_reference import (
    DATASETS,
    LKCA_MODELS,
    MODELS,
    max_relative_error,
    official_forward,
    official_state,
)

from lkca_deploy.checkpoint import load_checkpoint, read_checkpoint
from lkca_deploy.models.zoo import build_model
from lkca_deploy.official import (
    first_difference,
    import_official,
    official_config,
    official_layout,
    to_toolkit_state,
)
from lkca_runtime.errors import UserError

TOL = 1e-5  # of the logits' largest magnitude, float32
ONNX_TOL = 1e-4
# `auto` (the Toeplitz MatMul at this grid on the CPU targets) runs in the pipeline test
LOWERINGS = [("conv", None), ("crop", None), ("matmul", None), ("tiled", 8), ("spectral", None),
             ("token_spectral", None)]


def trainer_file(path, state, layout: str):
    """Write `state` as the trainer does: "training" (the per-epoch dict) or "bare" (the final state_dict), each
    optionally as DataParallel saves it ("+module")."""
    if layout.endswith("+module"):
        state = collections.OrderedDict((f"module.{k}", v) for k, v in state.items())
    if layout.startswith("training"):
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3).state_dict()
        scheduler = {"first_cycle_steps": 100, "max_lr": 1e-3, "min_lr": 1e-6, "base_lrs": [1e-6], "last_epoch": 3,
                     "_last_lr": [1e-4], "cycle": 0, "step_in_cycle": 3}
        state = {"model_state_dict": state, "epoch": 3, "optimizer_state_dict": optimizer, "scheduler": scheduler}
    torch.save(state, path)
    return path


def images(img_size: int, n: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, img_size, img_size, generator=torch.Generator().manual_seed(1))


def test_largevit_cnn_is_vit_2m_lkca_by_another_name():
    # create_model.py builds both with the same class and arguments: one configuration, tested below once
    for dataset in DATASETS:
        config = official_config("largevit-cnn", dataset)
        assert config == dataclasses.replace(official_config("vit-2m-lkca", dataset), name=config.name,
                                             description=config.description)


def test_config_bounds_count_the_official_models_exactly():
    from lkca_deploy.models.bounds import parameter_count

    for name in MODELS:
        for dataset in ("CIFAR10", "T-IMNET"):
            config = official_config(name, dataset)
            with torch.device("meta"):
                built = sum(p.numel() for p in build_model(config).parameters())
            assert parameter_count(config) == built, (name, dataset)


@pytest.mark.parametrize("dataset", ["CIFAR10", "T-IMNET"])
@pytest.mark.parametrize("name", [m for m in MODELS if m != "largevit-cnn"])
def test_every_official_configuration_computes_the_papers_logits(name, dataset):
    # The model level, for every configuration at 32 and 64 px: the key mapping and the model options. The files
    # around it are the same for every configuration (next test).
    img_size, classes = DATASETS[dataset]
    state = official_state(name, img_size, classes)
    config = official_config(name, dataset)
    assert first_difference(state, official_layout(config)) is None
    with torch.device("meta"):  # no random initialisation: every weight comes from `state`
        model = build_model(config, view="conv")
    model.load_state_dict(to_toolkit_state(state, config), assign=True)
    x = images(img_size)
    with torch.no_grad():
        assert max_relative_error(model.eval()(x), official_forward(name, state, x)) <= TOL


# Both files the trainer writes, and DataParallel's prefixes, at both sizes, for an LKCA model (all three views)
# and the class-token ViT, through the whole import and the toolkit's own checkpoint loading.
FILES = [("vit-05m-lkca", "CIFAR10", "training"), ("vit-05m-lkca", "T-IMNET", "bare+module"),
         ("vit-05m", "SVHN", "training+module"), ("vit-05m", "CIFAR100", "bare")]


@pytest.mark.parametrize(("name", "dataset", "layout"), FILES, ids=[f"{n}-{d}-{f}" for n, d, f in FILES])
def test_imported_checkpoint_computes_the_papers_logits(tmp_path, name, dataset, layout):
    img_size, classes = DATASETS[dataset]
    state = official_state(name, img_size, classes)
    src = trainer_file(tmp_path / "checkpoint.pth", state, layout)
    out = import_official(src, name, dataset, tmp_path / "imported")
    x = images(img_size)
    with torch.no_grad():
        ref = official_forward(name, state, x)
        model, ckpt = load_checkpoint(out)
        for view in ("conv", "attention", "fft") if name in LKCA_MODELS else ("conv",):
            err = max_relative_error(model.set_view(view)(x), ref)
            assert err <= TOL, (view, err)
    assert ckpt.config.name == f"official-{name}" and ckpt.spec.input_size == (img_size, img_size)
    assert ckpt.meta["imported"] == {"from": "lkca-official", "model": name, "dataset": dataset, "file": str(src)}


def test_preprocessing_is_the_trainers(tmp_path):
    state = official_state("vit-05m-lkca", 32, 100)
    out = import_official(trainer_file(tmp_path / "best.pth", state, "bare"), "vit-05m-lkca", "CIFAR100",
                          tmp_path / "imported")
    ckpt = read_checkpoint(out)
    # utils/dataloader.py's CIFAR-100 constants (not the toolkit's own cifar100 ones, which differ in the 4th digit)
    assert ckpt.spec.mean == (0.5070, 0.4865, 0.4409) and ckpt.spec.std == (0.2673, 0.2564, 0.2762)
    assert ckpt.meta["data"] == "cifar100" and ckpt.config.num_classes == 100 and ckpt.config.patch == 4


def _onnx_logits(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def test_onnx_export_computes_the_papers_logits_in_every_lowering(tmp_path):
    # 64 px here; the pipeline test proves a 32 px export through every CPU engine. The shared kernel is one
    # block of channels for every pass (lowering.passes.kernel_blocks finds 1).
    from lkca_deploy.export import export_model

    name, dataset = "vit-05m-lkca", "T-IMNET"
    state = official_state(name, *DATASETS[dataset])
    ckpt = import_official(trainer_file(tmp_path / "c.pth", state, "bare"), name, dataset, tmp_path / "ckpt")
    x = images(64, 3)
    ref = official_forward(name, state, x)
    for lowering, max_kernel in LOWERINGS:
        out = export_model(ckpt, tmp_path / f"{lowering}.onnx", lowering=lowering, max_kernel=max_kernel,
                           check_samples=4)
        changes = {change.strategy for change in out.lowering.changes if change.action == "lowered"}
        if lowering not in ("conv", "crop"):  # crop: at grid 8 every tap of K15 is used, nothing to crop
            assert changes == {lowering}, (lowering, changes)
        assert max_relative_error(_onnx_logits(out.path, x), ref) <= ONNX_TOL, lowering


def test_onnx_export_of_the_class_token_vit(tmp_path):
    from lkca_deploy.export import export_model

    name, dataset = "vit-05m", "CIFAR100"
    state = official_state(name, *DATASETS[dataset])
    ckpt = import_official(trainer_file(tmp_path / "c.pth", state, "bare"), name, dataset, tmp_path / "ckpt")
    x = images(32, 3)
    got = _onnx_logits(export_model(ckpt, tmp_path / "m.onnx", check_samples=4).path, x)
    assert max_relative_error(got, official_forward(name, state, x)) <= ONNX_TOL


# ---------------------------------------------------------------------------------------------- bad input


def _import(tmp_path, state_or_path, model="vit-05m-lkca", dataset="CIFAR10"):
    src = state_or_path if not isinstance(state_or_path, dict) else trainer_file(tmp_path / "c.pth", state_or_path,
                                                                                "training")
    return import_official(src, model, dataset, tmp_path / "out")


def test_a_checkpoint_of_another_official_model_names_it(tmp_path):
    state = official_state("vit-1m-lkca", 32, 10)
    with pytest.raises(UserError, match=r"is not the paper's vit-05m-lkca for CIFAR10: pos_embedding has shape "
                                        r"\(1, 64, 136\), not \(1, 64, 100\); its shapes are those of vit-1m-lkca "
                                        r"on CIFAR10 or SVHN$"):
        _import(tmp_path, state)
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_of_another_data_set_names_it(tmp_path):
    state = official_state("vit-05m-lkca", 64, 200)
    with pytest.raises(UserError, match=r"to_patch_embedding.1.weight has shape \(100, 192\), not \(100, 48\); "
                                        r"its shapes are those of vit-05m-lkca on T-IMNET$"):
        _import(tmp_path, state)


def test_missing_extra_and_misshapen_keys_are_named(tmp_path):
    state = official_state("vit-05m-lkca", 32, 10)
    missing = collections.OrderedDict((k, v) for k, v in state.items() if k != "transformer.layers.3.0.fn.dynamicqk")
    with pytest.raises(UserError, match=r"transformer.layers.3.0.fn.dynamicqk is missing$"):
        _import(tmp_path, missing)
    extra = collections.OrderedDict(state, **{"transformer.layers.0.0.fn.to_qkv.weight": torch.zeros(300, 100)})
    with pytest.raises(UserError, match=r"transformer.layers.0.0.fn.to_qkv.weight is not one of its keys$"):
        _import(tmp_path, extra)
    misshapen = collections.OrderedDict(state, **{"transformer.layers.2.1.fn.net.0.weight": torch.zeros(200, 99)})
    with pytest.raises(UserError, match=r"transformer.layers.2.1.fn.net.0.weight has shape \(200, 99\), "
                                        r"not \(200, 100\)$"):
        _import(tmp_path, misshapen)


def test_files_that_are_no_state_dict_are_refused(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("epoch 100: top-1 93.2\n")
    with pytest.raises(UserError, match="not a safetensors or PyTorch weights file"):
        _import(tmp_path, text)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(UserError, match="holds no state dict"):
        _import(tmp_path, listed)
    counts = tmp_path / "counts.pth"
    torch.save({"model_state_dict": {"pos_embedding": 3}}, counts)
    with pytest.raises(UserError, match="pos_embedding is a int, not a tensor"):
        _import(tmp_path, counts)
    with pytest.raises(UserError, match="does not exist"):
        _import(tmp_path, tmp_path / "absent.pth")


class Trainer:  # a pickled object: loading it would run code
    pass


def test_a_pickled_object_is_never_unpickled(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model_state_dict": official_state("vit-05m-lkca", 32, 10), "trainer": Trainer()}, path)
    with pytest.raises(UserError, match="pickled Python objects besides tensors"):
        _import(tmp_path, path)


def test_unknown_official_names_are_refused(tmp_path):
    with pytest.raises(UserError, match="unknown official model 'swin-t'"):
        _import(tmp_path, tmp_path / "x.pth", model="swin-t")
    with pytest.raises(UserError, match="unknown official data set 'cifar10'; valid: CIFAR10, CIFAR100"):
        _import(tmp_path, tmp_path / "x.pth", dataset="cifar10")


def test_imported_weights_are_float32_whatever_was_saved(tmp_path):
    state = collections.OrderedDict((k, v.half()) for k, v in official_state("vit-05m-lkca", 32, 10).items())
    out = _import(tmp_path, state)
    model, _ = load_checkpoint(out)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    x = images(32)
    with torch.no_grad():
        assert np.isfinite(model(x).numpy()).all()


def test_the_import_command(tmp_path):
    from cli_runner import assert_user_error, run_cli

    src = trainer_file(tmp_path / "checkpoint.pth", official_state("vit-05m-lkca", 32, 10), "bare+module")
    done = run_cli("import", src, "--from", "lkca-official", "--model", "vit-05m-lkca", "--dataset", "SVHN",
                   "--out", tmp_path / "svhn")
    assert "official-vit-05m-lkca" in done.stdout and read_checkpoint(tmp_path / "svhn").meta["data"] == "svhn"
    wrong = run_cli("import", src, "--from", "lkca-official", "--model", "vit-lkca", "--dataset", "CIFAR10",
                    "--out", tmp_path / "other", check_exit=None)
    assert_user_error(wrong, "pos_embedding has shape (1, 64, 100), not (1, 64, 210)", "vit-05m-lkca on CIFAR10 or SVHN")
    assert not (tmp_path / "other").exists()
