"""Where calibration samples come from: a data set's training split, a folder of images, or a .npy/.npz array.

Whatever the source, the result is a seeded random subset of float32 NCHW tensors preprocessed by the model's
PreprocessSpec, the same numpy code the runtime uses. A data set name always means its training split: calibrating on
the split that judges accuracy would flatter the INT8 model.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lkca_deploy.calibration import CALIB_SAMPLES
from lkca_deploy.data import load_arrays
from lkca_runtime.errors import UserError
from lkca_runtime.spec import PreprocessSpec

# Ultralytics warns below the same count: with fewer samples INT8 ranges follow the few images seen.
MIN_RELIABLE_SAMPLES = 300
ARRAY_KEYS = ("x", "images")  # preferred keys of a .npz; otherwise its first array
_DECODE_CHUNK = 64  # images decoded and preprocessed at once: photos at full size are large


@dataclass
class CalibrationSet:
    """Preprocessed calibration samples (float32 NCHW), where they came from, and what went wrong on the way."""

    array: np.ndarray
    source: str
    skipped: int = 0  # unreadable files met while collecting images
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.array)


def load_calibration(
    source: str | Path,
    spec: PreprocessSpec,
    *,
    samples: int = CALIB_SAMPLES,
    seed: int = 0,
    data_root: str | Path | None = None,
    download: bool = False,
) -> CalibrationSet:
    """A seeded random subset of at most `samples` preprocessed tensors from `source`.

    `source` is a `.npy`/`.npz` file of preprocessed (N, C, H, W) tensors, a folder of images (searched recursively;
    unreadable files are skipped and counted; a folder with train/ and test/ or val/ is read from train/ only), or a
    data set name (digits, cifar10, ...), whose training split is read from `data_root`.
    """
    if samples < 1:
        raise UserError(f"calibration needs at least one sample, got samples={samples}")
    path = Path(source)
    if path.is_file():
        calibration = _from_array_file(path, spec, samples, seed)
    elif path.is_dir():
        calibration = _from_image_folder(path, spec, samples, seed)
    elif path.suffix or len(path.parts) > 1:
        raise UserError(f"calibration source {source} does not exist; give a data set name, a folder or a .npy/.npz")
    else:
        calibration = _from_data_set(str(source), spec, samples, seed, data_root, download)
    _require_finite(calibration.array, calibration.source)
    calibration.warnings += _count_warnings(len(calibration), samples, calibration.source)
    return calibration


def _require_finite(array: np.ndarray, source: str, rows: np.ndarray | None = None) -> None:
    """Refuse samples holding NaN or infinity, naming how many and which: one +inf among 40 samples stretched
    every INT8 range and left a model at 10% where FP32 had 99%."""
    bad = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))
    if len(bad):
        where = (rows[bad] if rows is not None else bad).tolist()
        shown = ", ".join(map(str, where[:10])) + (", ..." if len(where) > 10 else "")
        raise UserError(f"{source}: {len(bad)} of {len(array)} calibration samples hold NaN or infinite values "
                        f"(sample {shown}); remove them or fix their preprocessing")


def _count_warnings(found: int, asked: int, source: str) -> list[str]:
    warnings = []
    if found < asked:
        warnings.append(f"only {found} calibration samples in {source}, {asked} asked")
    if found < MIN_RELIABLE_SAMPLES:
        warnings.append(
            f"{found} calibration samples: below {MIN_RELIABLE_SAMPLES} calibration samples INT8 ranges are unreliable"
        )
    return warnings


# ----------------------------------------------------------------------------------------------------------- data sets


def _from_data_set(name, spec, samples, seed, data_root, download) -> CalibrationSet:
    x, _ = load_arrays(name, split="train", spec=spec, root=data_root, download=download, limit=samples, seed=seed)
    return CalibrationSet(np.ascontiguousarray(x, dtype=np.float32), f"{name} (train split)")


# -------------------------------------------------------------------------------------------------------------- arrays


def _from_array_file(path: Path, spec: PreprocessSpec, samples: int, seed: int) -> CalibrationSet:
    if path.suffix.lower() not in (".npy", ".npz"):
        raise UserError(f"calibration file {path} is neither .npy nor .npz; give one of those, or a folder of images")
    array = _load_array(path)
    expected = (spec.channels, *spec.input_size)
    if array.ndim != 4 or tuple(array.shape[1:]) != expected:
        raise UserError(
            f"{path} holds an array of shape {tuple(array.shape)}; the model takes preprocessed tensors of shape "
            f"(N, {', '.join(map(str, expected))})"
        )
    if len(array) == 0:
        raise UserError(f"{path} holds no samples")
    if array.dtype.kind != "f":
        raise UserError(
            f"{path} holds {array.dtype} values; calibration arrays are preprocessed (normalised) float tensors. "
            "Give a folder of images instead to have them preprocessed"
        )
    rows = _seeded_subset(len(array), samples, seed)
    subset = np.ascontiguousarray(array[rows], dtype=np.float32)
    _require_finite(subset, str(path), rows)  # named by their row in the file
    return CalibrationSet(subset, str(path))


def _load_array(path: Path) -> np.ndarray:
    """The array of a .npy (memory-mapped: only the chosen rows are read), or of a .npz (key x, images, or first)."""
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        with np.load(path, allow_pickle=False) as archive:
            if not archive.files:
                raise UserError(f"{path} holds no arrays")
            key = next((k for k in ARRAY_KEYS if k in archive.files), archive.files[0])
            return archive[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise UserError(f"cannot read {path} as a numpy array file: {error}") from None


def _seeded_subset(available: int, samples: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset (all of them when there are no more than `samples`)."""
    if available <= samples:
        return np.arange(available)
    return np.sort(np.random.default_rng(seed).choice(available, samples, replace=False))


# -------------------------------------------------------------------------------------------------------------- images


def _from_image_folder(folder: Path, spec: PreprocessSpec, samples: int, seed: int) -> CalibrationSet:
    root, warnings = _training_part(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    order = np.random.default_rng(seed).permutation(len(files))
    chunks, skipped, found = [], 0, 0
    for chunk in _chunks((files[i] for i in order), _DECODE_CHUNK):
        images = [image for image in map(_read_image, chunk) if image is not None]
        skipped += len(chunk) - len(images)
        images = images[: samples - found]
        if images:
            chunks.append(spec.preprocess(images))
            found += len(images)
        if found == samples:
            break
    if not found:
        raise UserError(
            f"no readable image in {root} ({skipped} files skipped); put PNG, JPEG or BMP images there"
        )
    if skipped:
        warnings.append(f"skipped {skipped} unreadable or non-image files in {root}")
    return CalibrationSet(np.concatenate(chunks), str(root), skipped, warnings)


def _training_part(folder: Path) -> tuple[Path, list[str]]:
    """A folder split into train/ and test/ (or val/) is calibrated on train/ only."""
    evaluation = [name for name in ("test", "val", "validation") if (folder / name).is_dir()]
    if (folder / "train").is_dir() and evaluation:
        note = f"calibrating on {folder / 'train'} only: {', '.join(evaluation)} judge accuracy and stay unseen"
        return folder / "train", [note]
    return folder, []


def _read_image(path: Path):
    """The decoded PIL image, or None when the file is not an image PIL can read in full."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()  # decodes everything: a truncated file fails here, not later in preprocessing
            return image.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
