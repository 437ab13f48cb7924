"""The only atomic writer: every file or folder the toolkit writes is built beside its target and renamed into place.

One mode rule: what is renamed into place gets the mode the user's umask gives an ordinary new file (0644 under
umask 022) or folder (0755). mkstemp/mkdtemp create 0600/0700, and a rename keeps the mode, so without this a bundle
copied to a device could not be read by the user or container that serves it.

No heavy imports: checkpoints, bundles and the torch-free runtime all write through here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (reading it means setting it; the lock keeps two threads from racing on that)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def ordinary_mode(*, directory: bool = False) -> int:
    return (0o777 if directory else 0o666) & ~current_umask()


def give_ordinary_modes(path: Path) -> None:
    """chmod `path` (and, for a folder, everything in it) to the modes the umask gives new files and folders."""
    file_mode, dir_mode = ordinary_mode(), ordinary_mode(directory=True)

    def chmod_file(name: str) -> None:
        # An executable (a trtexec script) stays executable for whoever may read it: 0755 under umask 022.
        executable = os.stat(name).st_mode & 0o100
        os.chmod(name, dir_mode if executable else file_mode)

    if not path.is_dir():
        chmod_file(str(path))
        return
    os.chmod(path, dir_mode)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(root, name), dir_mode)
        for name in files:
            chmod_file(os.path.join(root, name))


def _beside(target: Path) -> tuple[str, str, str]:
    # Beside the target, not in /tmp, so os.replace stays a rename on one file system.
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write to {target.parent}: {e.strerror or e}") from None
    return f".{target.name}.", ".tmp", str(target.parent)


@contextmanager
def atomic_output(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `target`; on success it replaces `target`, on failure it is removed."""
    target = Path(target)
    prefix, suffix, folder = _beside(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    except OSError as e:
        raise UserError(f"cannot write to {target.parent}: {e.strerror or e}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        publish(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def publish(tmp: Path, target: str | os.PathLike) -> Path:
    """Rename a finished temp file from staging_dir into place with the ordinary mode."""
    give_ordinary_modes(Path(tmp))
    os.replace(tmp, target)
    return Path(target)


@contextmanager
def staging_dir(target: str | os.PathLike) -> Iterator[Path]:
    """A temp folder beside `target`, removed on exit: for artifacts written as several files (OpenVINO's
    .xml + .bin) that are then published one by one, the file that names the artifact last."""
    target = Path(target)
    prefix, suffix, folder = _beside(target)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=folder))
    except OSError as e:
        raise UserError(f"cannot write to {target.parent}: {e.strerror or e}") from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_output(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    with atomic_output(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


@contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `target`; on success it replaces `target` in one rename.

    On any exception (KeyboardInterrupt included) the temporary directory is removed and `target` is untouched.
    """
    target = Path(target)
    with staging_dir(target) as tmp:
        yield tmp
        give_ordinary_modes(tmp)
        if target.exists():
            # A directory cannot be os.replace'd over a non-empty one: move the old one aside first.
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
