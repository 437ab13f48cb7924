"""Sizes bounded by the memory they would take, checked before anything is allocated.

A size a user types (`bench --batches 100000000`, `predict --slide --scale 1e6`) or a model config a checkpoint
carries can ask for hundreds of GiB; left alone, the allocator fails halfway through (a traceback, or the kernel's
OOM killer). Each such size is turned into the bytes it needs and refused in one line when that is more than the
memory this machine, or this container's cgroup, has available now. Set LKCA_DEPLOY_ALLOW_LARGE=1 to skip these
checks (for people who mean it, e.g. with swap or a machine whose available memory this cannot see). Torch-free:
the runtime checks its sizes too.
"""

from __future__ import annotations

import os

from lkca_runtime.errors import UserError

ALLOW_LARGE = "LKCA_DEPLOY_ALLOW_LARGE"
GiB = 2**30
CGROUP_ROOT = "/sys/fs/cgroup"  # where a container sees its own cgroup


def large_allowed() -> bool:
    return os.environ.get(ALLOW_LARGE, "").strip().lower() in ("1", "true", "yes")


def available_memory() -> int | None:
    """Bytes this process may still allocate without swapping: MemAvailable (Linux), else free pages, and no more
    than its cgroup's limit leaves (a container sees the host's MemAvailable); None when the system does not say."""
    system = _system_available()
    headroom = cgroup_headroom()
    return system if headroom is None else headroom if system is None else min(system, headroom)


def _system_available() -> int | None:
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


# cgroup v2, then v1: (folder under CGROUP_ROOT, limit, usage, stat, the stat's key for reclaimable page cache)
_LAYOUTS = (
    ("", "memory.max", "memory.current", "memory.stat", "inactive_file"),
    ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat", "total_inactive_file"),
)
_NO_LIMIT = 2**60  # v1 writes "no limit" as the largest page-aligned 63-bit number


def cgroup_headroom(root: str | None = None, cgroup_file: str = "/proc/self/cgroup") -> int | None:
    """Bytes left under the tightest memory limit of this process's cgroup and its ancestors, counting inactive
    page cache as free (the kernel reclaims it before the OOM killer acts); None where no limit is set or readable.

    The process's cgroup comes from `cgroup_file`; a container whose own cgroup is mounted as `root` (a cgroup
    namespace, or v1's bind mount) is read at `root` itself."""
    root = root or CGROUP_ROOT
    found = []
    for sub, limit_file, usage_file, stat_file, cache_key in _LAYOUTS:
        base = os.path.join(root, sub)
        own = _own_cgroup(cgroup_file, v1=bool(sub))
        for folder in _with_ancestors(base, own):
            headroom = _headroom(folder, limit_file, usage_file, stat_file, cache_key)
            if headroom is not None:
                found.append(headroom)
    return min(found) if found else None


def _own_cgroup(cgroup_file: str, v1: bool) -> str:
    """This process's cgroup path in /proc/self/cgroup's lines ("0::/a/b" in v2, "4:memory:/a/b" in v1); "" unknown."""
    try:
        with open(cgroup_file, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if ("memory" in controllers.split(",")) if v1 else (controllers == ""):
            return path.strip("/")
    return ""


def _with_ancestors(base: str, own: str) -> list[str]:
    """base/own and each folder above it up to base, those that exist (base alone when own is not under it)."""
    parts = [p for p in own.split("/") if p]
    folders = [os.path.join(base, *parts[:n]) for n in range(len(parts), 0, -1)]
    return [f for f in folders if os.path.isdir(f)] + [base]


def _headroom(folder: str, limit_file: str, usage_file: str, stat_file: str, cache_key: str) -> int | None:
    try:
        limit_text = _read(folder, limit_file)
        if limit_text == "max" or int(limit_text) >= _NO_LIMIT:
            return None
        limit, usage = int(limit_text), int(_read(folder, usage_file))
    except (OSError, ValueError):
        return None
    cache = 0
    try:
        for line in _read(folder, stat_file).splitlines():
            key, _, value = line.partition(" ")
            if key == cache_key:
                cache = int(value)
    except (OSError, ValueError):
        pass
    return max(limit - max(usage - cache, 0), 0)


def _read(folder: str, name: str) -> str:
    with open(os.path.join(folder, name), encoding="ascii") as f:
        return f.read().strip()


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
