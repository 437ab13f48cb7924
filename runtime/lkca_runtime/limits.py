"""Sizes bounded by the memory they would take, checked before anything is allocated.

A size a user types (`bench --batches 100000000`, `predict --slide --scale 1e6`) or a model config a checkpoint
carries can ask for hundreds of GiB; left alone, the allocator fails halfway through (a traceback, or the kernel's
OOM killer). Each such size is turned into the bytes it needs and refused in one line when that is more than the
memory this machine has available now. Set LKCA_DEPLOY_ALLOW_LARGE=1 to skip these checks (for people who mean it,
e.g. with swap or a machine whose available memory this cannot see). Torch-free: the runtime checks its sizes too.
"""

from __future__ import annotations

import os

from lkca_runtime.errors import UserError

ALLOW_LARGE = "LKCA_DEPLOY_ALLOW_LARGE"
GiB = 2**30


def large_allowed() -> bool:
    return os.environ.get(ALLOW_LARGE, "").strip().lower() in ("1", "true", "yes")


def available_memory() -> int | None:
    """Bytes this process may still allocate without swapping: MemAvailable (Linux), else free pages; None when
    the system does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gib(n: float) -> str:
    return f"{n / GiB:.3g} GiB" if n >= GiB / 10 else f"{n / 2**20:.3g} MiB"


def check_fits(nbytes: float, what: str, hint: str = "") -> None:
    """UserError when `what` needs more than the available memory (skipped with LKCA_DEPLOY_ALLOW_LARGE=1)."""
    if large_allowed():
        return
    available = available_memory()
    if available is None or nbytes <= available:
        return
    raise UserError(f"{what} needs about {gib(nbytes)}, more than the {gib(available)} of memory available here"
                    f"{': ' + hint if hint else ''} (set {ALLOW_LARGE}=1 to try anyway)")
