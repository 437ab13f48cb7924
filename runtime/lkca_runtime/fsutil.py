"""The only atomic writer: every file or folder the toolkit writes is built beside its target and renamed into place.

One mode rule: what is renamed into place gets the mode the user's umask gives an ordinary new file (0644 under
umask 022) or folder (0755). mkstemp/mkdtemp create 0600/0700, and a rename keeps the mode, so without this a bundle
copied to a device could not be read by the user or container that serves it.

What every write promises (docs/reliability.md): nothing of the user's is deleted (a folder is replaced only when
it is empty, or with force when it holds the marker of what the toolkit writes there); a target that another run
wrote meanwhile is never replaced (checked again at the rename); a failure says so in one line about the user's
path (a file in the way, a read-only or full disk), never a temp name.

No heavy imports: checkpoints, bundles and the torch-free runtime all write through here.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lkca_runtime.errors import UserError

BUNDLE_MANIFEST = "manifest.json"
_BUNDLE_FORMAT = b'"lkca-deploy-bundle/'  # what tells a bundle's manifest.json from any other (a web app's)
MAX_JSON_DEPTH = 64  # report.json, the deepest file the toolkit writes, nests 7 levels
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


# ---------------------------------------------------------------- failures, in the user's words

# errno values that mean "this place cannot take the output", each said as one line about the user's path.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_WRITE_ERRNOS = _FULL | {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG,
                         errno.EEXIST, errno.ELOOP}
_NEARLY_FULL = 1 << 20  # a library that hides ENOSPC in its own error type failed with less than this left


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{max(n, 0) / 1024:.0f} KiB"


def _existing_ancestor(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _free_bytes(path: Path) -> int | None:
    try:
        st = os.statvfs(_existing_ancestor(path))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(_existing_ancestor(path)).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _written(path: Path) -> int:
    """Bytes a half-written temp file or folder holds."""
    try:
        if path.is_dir():
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def _cannot_write(target: Path, code: int | None, detail: str = "") -> str:
    """One line: why `target` cannot be written, naming the place that is in the way."""
    place = _existing_ancestor(target.parent)
    if place.exists() and not place.is_dir():
        return f"cannot write {target}: {place} is a file, not a folder"
    if code == errno.EROFS or (code in (errno.EACCES, errno.EPERM) and _read_only(place)):
        return f"cannot write {target}: {place} is on a read-only file system"
    if code in (errno.EACCES, errno.EPERM):
        return f"cannot write {target}: no permission to write in {place}"
    if code == errno.EISDIR or target.is_dir():
        return f"cannot write {target}: it is a directory; give a file path"
    return f"cannot write {target}: {detail or (os.strerror(code) if code else 'failed')}"


def _disk_full(target: Path, needed: str) -> str:
    free = _free_bytes(target.parent)
    left = f", {_size(free)} free there" if free is not None else ""
    return f"the disk holding {_existing_ancestor(target.parent)} is full: {target.name} needs {needed}{left}"


def _in_user_terms(error: BaseException, target: Path, tmp: Path, renames: list[tuple[str, str]],
                   size_hint: int | None) -> BaseException:
    """The exception a failed write becomes: a UserError about `target` (temp names replaced by the user's),
    or the error itself when it is not about the file system (a bug, an interrupt)."""
    if isinstance(error, UserError):
        text = str(error)
        for old, new in renames:
            text = text.replace(old, new)
        return UserError(text) if text != str(error) else error
    if not isinstance(error, Exception):
        return error  # KeyboardInterrupt, a signal, SystemExit: as they are
    needed = f"about {_size(size_hint)}" if size_hint else f"more than the {_size(_written(tmp))} it got"
    if isinstance(error, OSError) and error.errno in _FULL:
        return UserError(_disk_full(target, needed))
    if isinstance(error, OSError) and error.errno in _WRITE_ERRNOS:
        return UserError(_cannot_write(target, error.errno, error.strerror or ""))
    free = _free_bytes(tmp)
    if free is not None and free < _NEARLY_FULL:  # e.g. OpenVINO or safetensors reporting ENOSPC their own way
        return UserError(_disk_full(target, needed))
    return error


def check_output(target: str | os.PathLike, *, folder: bool = False) -> Path:
    """`target` if an output can be written there; else a UserError in the user's words, before any work:
    a file in the way of its folder, a folder where a file goes (or the reverse), a read-only or closed folder."""
    target = Path(target)
    if not folder and target.is_dir():
        raise UserError(_cannot_write(target, errno.EISDIR))
    if folder and os.path.lexists(target) and not target.is_dir():
        raise UserError(f"cannot write {target}: it is a file, not a folder; give a folder path")
    place = _existing_ancestor(target.parent)
    if not place.is_dir():
        raise UserError(_cannot_write(target, errno.ENOTDIR))
    if not os.access(place, os.W_OK | os.X_OK):
        raise UserError(_cannot_write(target, errno.EROFS if _read_only(place) else errno.EACCES))
    return target


def bundle_above(path: str | os.PathLike) -> Path | None:
    """The bundle `path` lies in (or is): the nearest folder at or above it holding a bundle's manifest.json."""
    resolved = Path(path).resolve()
    for folder in (resolved, *resolved.parents):
        manifest = folder / BUNDLE_MANIFEST
        try:
            with open(manifest, "rb") as f:
                if _BUNDLE_FORMAT in f.read(1 << 16):
                    return folder
        except OSError:  # absent, a folder, unreadable: not a bundle's
            continue
    return None


def guard_output(target: str | os.PathLike, inputs: Sequence[str | os.PathLike | None] = (), *,
                 folder: bool = False, writes_bundles: bool = False) -> Path:
    """Refuse, before any work, an output that would destroy an input or a bundle; then check_output.

    Refused: one of the command's `inputs` (the same file once symlinks are resolved, a hard link to it, or a
    folder holding it), and any place inside a bundle (a folder with a bundle's manifest.json at or above it)
    unless the command is the one that writes bundles: a bundle is proven whole by the hashes in its manifest,
    so a file written into it makes it refuse to serve."""
    target = Path(target)
    resolved = target.resolve()
    for source in inputs:
        if source is None:
            continue
        source_path = Path(source)
        src = source_path.resolve()
        same = resolved == src or (target.exists() and source_path.exists() and os.path.samefile(target, src))
        if same or resolved in src.parents:
            what = "is" if same else "holds"
            raise UserError(f"{target} {what} this command's input {source}: writing there would destroy it; "
                            "choose another output path")
    bundle = None if writes_bundles else bundle_above(target)
    if bundle is not None:
        raise UserError(f"{target} lies inside the bundle {bundle}: a bundle is written whole by lkca-deploy "
                        "pipeline and a file written into it makes it refuse to serve; choose a path outside it")
    return check_output(target, folder=folder)


def _beside(target: Path, *, folder: bool = False) -> tuple[str, str, str]:
    # Beside the target, not in /tmp, so os.replace stays a rename on one file system.
    check_output(target, folder=folder)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(_cannot_write(target, e.errno, e.strerror or "")) from None
    return f".{target.name}.", ".tmp", str(target.parent)


# ---------------------------------------------------------------- concurrent writers


def _identity(path: Path) -> tuple | None:
    """What tells a target apart from one written since: None when absent."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size if not os.path.isdir(path) else None)


def _written_meanwhile(target: Path) -> UserError:
    return UserError(f"{target} was written meanwhile by another run; refusing to replace it (this run's output "
                     "is discarded): give each run its own output path")


# ---------------------------------------------------------------- files


def _stage_file(target: Path) -> tuple[Path, tuple | None]:
    prefix, suffix, folder = _beside(target)
    before = _identity(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    except OSError as e:
        raise UserError(_cannot_write(target, e.errno, e.strerror or "")) from None
    os.close(fd)
    return Path(tmp), before


def _renames(tmp: Path, target: Path) -> list[tuple[str, str]]:
    return [(str(tmp), str(target)), (tmp.name, target.name)]


@contextmanager
def atomic_outputs(*targets: str | os.PathLike, size_hint: int | None = None) -> Iterator[list[Path]]:
    """Temp paths beside each of `targets`; all of them replace their targets when the block succeeds, none when
    it fails (a command's outputs appear together or not at all). `size_hint`: bytes the first output needs, for
    the message when the disk is full."""
    targets = [Path(t) for t in targets]
    staged: list[tuple[Path, tuple | None]] = []
    try:
        for target in targets:
            staged.append(_stage_file(target))
        tmps = [tmp for tmp, _ in staged]
        try:
            yield tmps
        except BaseException as error:
            first = next((i for i, t in enumerate(tmps) if str(t) in str(error) or t.name in str(error)), 0)
            renames = [pair for tmp, target in zip(tmps, targets) for pair in _renames(tmp, target)]
            translated = _in_user_terms(error, targets[first], tmps[first], renames,
                                        size_hint if first == 0 else None)
            if translated is error:
                raise
            raise translated from None
        for (tmp, before), target in zip(staged, targets):
            give_ordinary_modes(tmp)
            if _identity(target) != before:
                raise _written_meanwhile(target)
        for (tmp, _), target in zip(staged, targets):
            publish(tmp, target)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_output(target: str | os.PathLike, *, size_hint: int | None = None) -> Iterator[Path]:
    """Yield a temp path beside `target`; on success it replaces `target`, on failure it is removed."""
    with atomic_outputs(target, size_hint=size_hint) as (tmp,):
        yield tmp


def publish(tmp: Path, target: str | os.PathLike) -> Path:
    """Rename a finished temp file from staging_dir into place with the ordinary mode."""
    give_ordinary_modes(Path(tmp))
    try:
        os.replace(tmp, target)
    except OSError as e:
        raise UserError(_cannot_write(Path(target), e.errno, e.strerror or "")) from None
    return Path(target)


@contextmanager
def staging_dir(target: str | os.PathLike, *, size_hint: int | None = None, folder: bool = False
                ) -> Iterator[Path]:
    """A temp folder beside `target` (a file, or a `folder`), removed on exit: for artifacts written as several
    files (OpenVINO's .xml + .bin) that are then published one by one, the file that names the artifact last."""
    target = Path(target)
    prefix, suffix, place = _beside(target, folder=folder)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=place))
    except OSError as e:
        raise UserError(_cannot_write(target, e.errno, e.strerror or "")) from None
    try:
        yield tmp
    except BaseException as error:
        renames = [(f"{tmp}{os.sep}", f"{target.parent}{os.sep}"), (str(tmp), str(target.parent))]
        translated = _in_user_terms(error, target, tmp, renames, size_hint)
        if translated is error:
            raise
        raise translated from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_output(target, size_hint=len(data)) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    with atomic_output(dst, size_hint=_written(Path(src))) as tmp:
        shutil.copyfile(src, tmp)
        shutil.copymode(src, tmp)  # an executable stays one; publish then applies the umask rule
    return Path(dst)


# ---------------------------------------------------------------- folders


def check_replaceable(target: str | os.PathLike, *, force: bool = False, marker: str | None = None,
                      what: str = "folder") -> Path:
    """Refuse, before any work, to replace what may not be replaced: a file where a folder goes, and, for kinds
    with a `marker` (the file every such folder holds: a bundle's manifest.json, a checkpoint's config.json), an
    existing non-empty folder without `force`, or with it when the folder lacks the marker (the toolkit did not
    write it). An empty folder holds nothing to lose. Without a marker the caller vouches that the folder is its own.
    """
    target = check_output(target, folder=True)
    if not target.is_dir() or not any(target.iterdir()) or marker is None:
        return target
    if not force:
        raise UserError(f"{target} exists; pass --force to replace it")
    if not (target / marker).is_file():
        raise UserError(f"{target} exists and is not a {what} (it has no {marker}); refusing to replace it: "
                        "choose another output path")
    return target


@contextmanager
def atomic_dir(target: str | os.PathLike, *, force: bool = False, marker: str | None = None,
               what: str = "folder", size_hint: int | None = None) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `target`; on success it replaces `target` in one rename.

    What may be replaced: see check_replaceable (checked first). At the rename `target` is checked again: one
    written meanwhile by another run is left as it is, and this run fails. On any exception (an interrupt
    included) the temporary directory is removed and `target` is untouched.
    """
    target = check_replaceable(target, force=force, marker=marker, what=what)
    before = _identity(target)
    with staging_dir(target, size_hint=size_hint, folder=True) as tmp:
        try:
            yield tmp
        except BaseException as error:
            # Paths inside the temp folder are the user's paths inside `target`.
            translated = _in_user_terms(error, target, tmp, [(str(tmp), str(target))], size_hint)
            if translated is error:
                raise
            raise translated from None
        give_ordinary_modes(tmp)
        _replace_dir(tmp, target, before)


def _replace_dir(tmp: Path, target: Path, before: tuple | None) -> None:
    if _identity(target) != before:
        raise _written_meanwhile(target)
    if before is None:
        try:
            os.rename(tmp, target)  # refused by the OS if a non-empty folder appeared since the check above
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise _written_meanwhile(target) from None
            raise UserError(_cannot_write(target, e.errno, e.strerror or "")) from None
        return
    # A directory cannot be renamed over a non-empty one: move the old one aside first, and make sure it is the
    # one checked above (another run may have swapped it in between).
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.rename(target, old)
    if _identity(old) != before:
        os.rename(old, target)
        raise _written_meanwhile(target)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- JSON from users


def _depth(doc: Any) -> int:
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def json_loads(text: str | bytes) -> Any:
    """json.loads for files a user hands over (manifests, reports, sidecars, configs): a ValueError, as for any
    bad JSON, when it nests deeper than MAX_JSON_DEPTH (the parser's own limit is a RecursionError, and code that
    walks the result recursively would meet it later)."""
    try:
        doc = json.loads(text)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    if _depth(doc) > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return doc


# ---------------------------------------------------------------- several files into one folder


@contextmanager
def atomic_files(folder: str | os.PathLike) -> Iterator[Path]:
    """A temp folder beside `folder` to write a command's files into (masks, reports); when the block succeeds
    they appear in `folder` (created if needed; files of the same names replaced, others left as they are), when
    it fails none does. A new `folder` appears in one rename; into an existing one the files are renamed one by
    one after all of them were written, so a failure during the work leaves nothing."""
    folder = Path(folder)
    existed = folder.is_dir()
    if not existed:
        with atomic_dir(folder) as tmp:
            yield tmp
        return
    check_output(folder, folder=True)
    with staging_dir(folder, folder=True) as tmp:
        try:
            yield tmp
        except BaseException as error:
            translated = _in_user_terms(error, folder, tmp, [(str(tmp), str(folder))], None)
            if translated is error:
                raise
            raise translated from None
        give_ordinary_modes(tmp)
        for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
            destination = folder / file.relative_to(tmp)
            destination.parent.mkdir(parents=True, exist_ok=True)
            publish(file, destination)
