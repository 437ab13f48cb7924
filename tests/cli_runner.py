"""Run the real console entry point as a user does, and check the one-line user-error promise.

A module of its own, not conftest.py: test folders have conftest.py files of their own, and `from conftest import`
would find whichever one Python imported first.
"""

import subprocess
import sys


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
