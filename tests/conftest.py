"""Shared fixtures: a small real checkpoint, trained once per session on the embedded digits data."""

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def nano_checkpoint(tmp_path_factory) -> Path:
    """lkca_vit_nano trained a few epochs on digits: real weights, real accuracy, seconds to make."""
    from lkca_deploy.train import TrainOptions, train

    out = tmp_path_factory.mktemp("ckpt") / "lkca_vit_nano-digits"
    train("lkca_vit_nano", "digits", out=out, opts=TrainOptions(epochs=4, batch_size=16, progress=False))
    return out


def run_cli(*args: str, check_exit: int | None = 0) -> subprocess.CompletedProcess:
    """The real console entry point in a subprocess, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "lkca_deploy.cli", *map(str, args)],
                          check=False, capture_output=True, text=True, timeout=600)
    if check_exit is not None:
        assert proc.returncode == check_exit, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, one clear line on stderr, no traceback."""
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
