"""Config validation: a checkpoint's config.json is validated against the zoo before any model is
built, and a damaged optimizer file met on --resume is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hostile_common import assert_one_line, cli


@pytest.fixture
def ckpt(nano_checkpoint, tmp_path) -> Path:
    copy = tmp_path / "ckpt"
    shutil.copytree(nano_checkpoint, copy)
    return copy


def _edit_model(ckpt: Path, **changes) -> None:
    doc = json.loads((ckpt / "config.json").read_text())
    if changes.pop("model_is_null", False):
        doc["model"] = None
    else:
        doc["model"].update(changes)
    (ckpt / "config.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("changes, fragment", [
    ({"name": "lkca_vit_huge"}, "lkca_vit_huge"),
    ({"model_is_null": True}, "model"),
    ({"dim": -64}, "dim"),
    ({"dim": "64"}, "dim"),
    ({"depth": 0}, "depth"),
    ({"heads": 3}, "heads"),  # 64 does not split into 3 heads
    ({"patch": 5}, "patch"),  # 32 px does not split into 5 px patches
    ({"mixer": "magic"}, "mixer"),
    ({"task": "detection"}, "task"),
    ({"num_classes": 0}, "num_classes"),
    ({"in_chans": 2}, "in_chans"),
    ({"mlp_ratio": float("nan")}, "mlp_ratio"),
    ({"kernel_size": -3}, "kernel_size"),
])
def test_bad_config_values_are_one_line(ckpt, changes, fragment):
    _edit_model(ckpt, **changes)
    line = assert_one_line(cli("evaluate", ckpt), fragment)
    assert str(ckpt / "config.json") in line


def test_a_damaged_optimizer_file_on_resume_is_one_line(ckpt, tmp_path):
    (ckpt / "optimizer.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert_one_line(cli("train", "lkca_vit_nano", "--resume", ckpt, "--epochs", "1", "--out", tmp_path / "next"),
                    "optimizer.safetensors")
    assert not (tmp_path / "next").exists()
