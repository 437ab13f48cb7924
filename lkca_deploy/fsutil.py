"""File-system helpers with no heavy imports, shared by checkpoints, bundles and the torch-free runtime.

Here rather than in checkpoint.py because that module imports the model zoo, and so torch.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target``; on success it replaces ``target`` in one rename.

    On any exception (KeyboardInterrupt included) the temporary directory is removed and ``target`` is untouched.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as e:
        raise UserError(f"cannot write to {target.parent}: {e.strerror or e}") from None
    try:
        yield tmp
        if target.exists():
            # A directory cannot be os.replace'd over a non-empty one: move the old one aside first.
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
