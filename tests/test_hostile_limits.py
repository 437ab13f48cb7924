"""Limits before allocation and the last words of a command: a model config is bounded before any tensor is made;
sizes typed on the command line are bounded by the memory they would take; a full or closed stdout, an interrupt
inside torch.onnx.export and a warning each end in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hostile_common import (
    assert_one_line,
    cli,
    mean_classifier,
    mean_classifier_bundle,
    segmenter_bundle,
    untrained_checkpoint,
)
from PIL import Image

from lkca_runtime.errors import UserError


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "nano")


def _with_model(ckpt: Path, where: Path, **changes) -> Path:
    import shutil

    shutil.copytree(ckpt, where)
    doc = json.loads((where / "config.json").read_text())
    doc["model"].update(changes)
    (where / "config.json").write_text(json.dumps(doc))
    return where


ABSURD = [{"dim": 10**9, "heads": 1}, {"num_classes": 10**9}, {"depth": 100000}, {"img_size": 4 * 10**6},
          {"mlp_ratio": 1e308}, {"kernel_size": 10**9}]


@pytest.mark.parametrize("changes", ABSURD, ids=lambda c: next(iter(c)))
def test_an_absurd_model_config_is_refused_before_any_tensor(ckpt, tmp_path, changes):
    from lkca_deploy.checkpoint import read_checkpoint

    edited = _with_model(ckpt, tmp_path / "c", **changes)
    with pytest.raises(UserError, match="config.json: lkca_vit_nano with these sizes") as caught:
        read_checkpoint(edited)
    assert "LKCA_DEPLOY_ALLOW_LARGE" in str(caught.value)


def test_the_bound_has_an_override_and_the_cli_says_it_in_one_line(ckpt, tmp_path, monkeypatch):
    from lkca_deploy.checkpoint import read_checkpoint

    edited = _with_model(ckpt, tmp_path / "c", depth=100000)
    assert_one_line(cli("evaluate", edited), "depth 100000", "LKCA_DEPLOY_ALLOW_LARGE=1")
    monkeypatch.setenv("LKCA_DEPLOY_ALLOW_LARGE", "1")
    assert read_checkpoint(edited).config.depth == 100000  # read, not built: the user asked for it


def test_command_line_sizes_are_bounded_by_the_memory_they_take(tmp_path):
    classifier = mean_classifier_bundle(tmp_path / "B", tmp_path)
    assert_one_line(cli("bench", classifier, "--batches", "100000000", "--no-cost"), "--batches 100000000",
                    "per image: activations of", "GiB", "available")
    segmenter = segmenter_bundle(tmp_path / "SEG", tmp_path)
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    assert_one_line(cli("predict", segmenter, image, "--slide", "--scale", "1e6"), "--scale", "available")


def test_a_full_or_closed_stdout_is_one_line(tmp_path):
    model = mean_classifier(tmp_path / "m.onnx")
    command = [sys.executable, "-m", "lkca_deploy.cli", "check", str(model), "--target", "onnxruntime-cpu", "--json"]
    with open("/dev/full", "w") as full:
        to_full = subprocess.Popen(command, stdout=full, stderr=subprocess.PIPE, text=True)
    to_pipe = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    to_pipe.stdout.close()  # the reader went away (`| head` that has read enough)
    for proc, reason in ((to_full, "No space left on device"), (to_pipe, "Broken pipe")):
        err = proc.communicate(timeout=120)[1]
        assert proc.returncode == 2, err
        assert err.strip().splitlines() == [f"lkca-deploy: error: cannot write to standard output: {reason}"], err


def test_an_interrupt_inside_torch_onnx_export_ends_as_interrupted():
    """A signal whose exception a layer under torch.onnx.export turns into its own error, which the exporter then
    wraps in a TorchExportError: still the interrupt it was."""
    import torch

    from lkca_deploy.interrupts import Interrupted, interrupts_raise

    class SignalledWhileTraced(torch.nn.Module):
        def forward(self, x):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
            except BaseException as e:
                raise RuntimeError("tracing failed") from e
            return x + 1

    with pytest.raises(Interrupted) as caught, interrupts_raise(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(SignalledWhileTraced(), (torch.zeros(2, 3),), None, dynamo=True, verbose=False)
    assert caught.value.exit_code == 143


def test_a_first_use_record_that_cannot_be_written_is_a_one_line_warning(tmp_path, monkeypatch):
    bundle = mean_classifier_bundle(tmp_path / "B", tmp_path, golden=8)
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    (tmp_path / "B.device-cache").write_text("")  # beside the bundle: a file where the cache folder goes
    monkeypatch.setenv("LKCA_DEPLOY_CACHE", str(blocker / "cache"))  # the user cache: below a file
    image = tmp_path / "x.png"
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(image)
    outcome = cli("predict", bundle, image)
    assert outcome.code == 0, outcome.err
    assert [line for line in outcome.lines if "golden check not recorded" in line] == outcome.lines
    assert len(outcome.lines) == 1 and outcome.lines[0].startswith("warning: golden check not recorded")


def _cgroup(root: Path, files: dict[str, str]) -> str:
    """A cgroup folder as the kernel writes it (the files a container sees under /sys/fs/cgroup)."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    return str(root)


def test_a_containers_memory_limit_bounds_what_is_available(tmp_path, monkeypatch):
    from lkca_runtime import limits

    mib = 2**20
    nowhere = str(tmp_path / "no-proc-cgroup")  # the cgroup mounted as the root: a container's own view
    v2 = _cgroup(tmp_path / "v2", {"memory.max": str(1024 * mib), "memory.current": str(512 * mib),
                                   "memory.stat": f"anon {256 * mib}\ninactive_file {256 * mib}\nactive_file 0"})
    assert limits.cgroup_headroom(v2, nowhere) == 768 * mib  # inactive page cache counts as free: the kernel reclaims it
    v1 = _cgroup(tmp_path / "v1", {"memory/memory.limit_in_bytes": str(2048 * mib),
                                   "memory/memory.usage_in_bytes": str(1024 * mib),
                                   "memory/memory.stat": "cache 0\ntotal_inactive_file 0"})
    assert limits.cgroup_headroom(v1, nowhere) == 1024 * mib
    unlimited = _cgroup(tmp_path / "v2max", {"memory.max": "max", "memory.current": "1"})
    assert limits.cgroup_headroom(unlimited, nowhere) is None
    unlimited_v1 = _cgroup(tmp_path / "v1max", {"memory/memory.limit_in_bytes": "9223372036854771712",
                                                "memory/memory.usage_in_bytes": "1"})
    assert limits.cgroup_headroom(unlimited_v1, nowhere) is None
    assert limits.cgroup_headroom(str(tmp_path / "none"), nowhere) is None

    # A host's hierarchy: the process's own cgroup (/proc/self/cgroup) is unlimited, its parent is not
    host = _cgroup(tmp_path / "host", {"jobs/memory.max": str(512 * mib), "jobs/memory.current": str(128 * mib),
                                       "jobs/one/memory.max": "max", "jobs/one/memory.current": str(64 * mib)})
    proc_cgroup = tmp_path / "cgroup"
    proc_cgroup.write_text("0::/jobs/one\n")
    assert limits.cgroup_headroom(host, str(proc_cgroup)) == 384 * mib
    proc_cgroup.write_text("12:cpu,cpuacct:/x\n4:memory:/jobs/one\n0::/\n")  # v1 lines name their controllers
    v1_host = _cgroup(tmp_path / "v1host", {"memory/jobs/memory.limit_in_bytes": str(256 * mib),
                                            "memory/jobs/memory.usage_in_bytes": "0"})
    assert limits.cgroup_headroom(v1_host, str(proc_cgroup)) == 256 * mib

    # A 64 MiB container on a host with GiBs free: a 100 MiB size is refused in one line naming the container's figure
    small = _cgroup(tmp_path / "small", {"memory.max": str(64 * mib), "memory.current": "0"})
    monkeypatch.setattr(limits, "CGROUP_ROOT", small)
    monkeypatch.delenv(limits.ALLOW_LARGE, raising=False)
    assert limits.available_memory() == 64 * mib
    with pytest.raises(UserError, match=r"needs about 100 MiB, more than the 64 MiB of memory available here"):
        limits.check_fits(100 * mib, "this")
