"""Training, evaluation and the checkpoint format, through the CLI as a user runs them."""

import json
import os
import subprocess
import sys

import pytest
import torch
from cli_runner import assert_user_error, run_cli
from safetensors.torch import save_file

from lkca_deploy.checkpoint import load_checkpoint, load_state_dict_file, read_checkpoint
from lkca_deploy.data.datasets import digits_split_indices
from lkca_deploy.train import TrainOptions, evaluate, train


def test_a_few_epochs_on_digits_learn(nano_checkpoint):
    metrics = evaluate(nano_checkpoint)
    assert metrics["samples"] == len(digits_split_indices()[1])
    assert metrics["top1"] > 0.8  # chance is 0.1; 4 epochs already learn
    assert metrics["top1"] <= metrics["top5"] <= 1.0


def test_checkpoint_is_safetensors_and_json(nano_checkpoint):
    files = {p.name for p in nano_checkpoint.iterdir()}
    assert {"model.safetensors", "config.json", "optimizer.safetensors"} <= files
    doc = json.loads((nano_checkpoint / "config.json").read_text())
    assert doc["model"]["name"] == "lkca_vit_nano" and doc["data"] == "digits"
    assert doc["preprocessing"]["input_size"] == [32, 32] and len(doc["preprocessing"]["class_names"]) == 10
    _model, ckpt = load_checkpoint(nano_checkpoint, view="conv")
    assert ckpt.meta["metrics"]["top1"] == pytest.approx(evaluate(nano_checkpoint)["top1"])


def test_evaluate_json_cli(nano_checkpoint):
    out = json.loads(run_cli("evaluate", nano_checkpoint, "--data", "digits", "--json").stdout)
    assert set(out) >= {"top1", "top5", "samples"} and 0 <= out["top1"] <= 1


def test_resume_continues_from_the_checkpoint(nano_checkpoint, tmp_path):
    before = read_checkpoint(nano_checkpoint).meta["epochs"]
    train("lkca_vit_nano", "digits", out=tmp_path / "resumed", resume=nano_checkpoint,
          opts=TrainOptions(epochs=1, progress=False))
    assert read_checkpoint(tmp_path / "resumed").meta["epochs"] == before + 1


def test_foreign_pt_state_dict_loads_without_unpickling(nano_checkpoint, tmp_path):
    model, _ = load_checkpoint(nano_checkpoint)
    pt = tmp_path / "weights.pt"
    torch.save(model.state_dict(), pt)
    state = load_state_dict_file(pt)
    assert torch.equal(state["blocks.0.mixer.kernel"], model.state_dict()["blocks.0.mixer.kernel"])
    evil = tmp_path / "evil.pt"
    torch.save({"x": object()}, evil)  # an arbitrary pickled object must not be unpickled
    with pytest.raises(Exception, match="cannot read weights"):
        load_state_dict_file(evil)


def test_models_json_cli():
    rows = json.loads(run_cli("models", "--json").stdout)
    names = {r["name"] for r in rows}
    assert {"lkca_vit_nano", "vit_nano", "lkca_vit_tiny", "vit_tiny"} <= names
    assert all({"params", "gflops", "input_size", "grid", "kernel"} <= set(r) for r in rows)


def test_user_errors_are_one_line_and_exit_2(nano_checkpoint, tmp_path):
    assert_user_error(run_cli("train", "resnet50", check_exit=None), "unknown model", "lkca_vit_nano")
    assert_user_error(run_cli("train", "lkca_vit_nano", "--data", "mnist-ish", check_exit=None), "unknown data set")
    assert_user_error(run_cli("train", "lkca_vit_nano", "--data", "cifar10", "--data-root", tmp_path,
                              check_exit=None), "cifar10 not found", str(tmp_path))
    assert_user_error(run_cli("evaluate", tmp_path / "nope", check_exit=None), "does not exist")

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((nano_checkpoint / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    assert_user_error(run_cli("evaluate", corrupt, check_exit=None), "cannot read weights")

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text((nano_checkpoint / "config.json").read_text())
    save_file({"w": torch.zeros(2)}, str(other / "model.safetensors"))
    assert_user_error(run_cli("evaluate", other, check_exit=None), "do not fit model lkca_vit_nano")

    assert_user_error(run_cli("train", "vit_nano", "--resume", nano_checkpoint, "--epochs", "1",
                              "--out", tmp_path / "x", check_exit=None), "holds lkca_vit_nano, not vit_nano")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_user_error(run_cli("train", "lkca_vit_nano", "--epochs", "1", "--out", blocker / "ckpt",
                              check_exit=None), "cannot write")


def test_torchrun_trains_with_two_processes(tmp_path):
    """DistributedDataParallel on CPU (gloo) as the README documents it: two ranks, one checkpoint from rank 0."""
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
         "lkca_deploy.cli", "train", "lkca_vit_nano", "--data", "digits", "--epochs", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = read_checkpoint(out).meta
    assert meta["train_options"]["processes"] == 2
    assert proc.stderr.count("epoch   2/2") == 1 and proc.stdout.count("saved") == 1  # only rank 0 reports
    assert evaluate(out)["top1"] == pytest.approx(meta["metrics"]["top1"])
    assert meta["metrics"]["top1"] > 0.3  # chance is 0.1
