"""Data sets and the preprocessing spec.

`open_split` is what the trainer and evaluator use: a torch Dataset of preprocessed (image, target) pairs plus the
spec that produced them. `load_arrays` gives the same as numpy arrays, for calibration and parity.
Segmentation data sets live in `scenes.py` / `segmentation.py` and are dispatched here by name.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from lkca_deploy.data.datasets import load_arrays as load_classification_arrays
from lkca_deploy.data.datasets import open_source, preprocess_all, spec_for
from lkca_deploy.data.segmentation import load_segmentation_arrays, open_segmentation_split
from lkca_runtime.errors import UserError
from lkca_runtime.spec import PreprocessSpec, Split

SEGMENTATION_DATASETS = ("digit-scenes", "ade20k")


def is_segmentation_data(name: str) -> bool:
    path = Path(name)
    return name in SEGMENTATION_DATASETS or ((path / "images").is_dir() and (path / "masks").is_dir())


def open_split(name: str, split: str, task: str, img_size: int, root=None, download: bool = False,
               spec: PreprocessSpec | None = None) -> Split:
    """`spec`: the model's own preprocessing (a checkpoint's), which every image then goes through, converted to
    its channels as the Predictor converts; the class names stay the data set's. None: the data set's own."""
    if task == "segmentation":
        if not is_segmentation_data(name):
            raise UserError(f"{name} is not a segmentation data set; valid: {', '.join(SEGMENTATION_DATASETS)}, "
                            "or a folder with images/ and masks/")

        return open_segmentation_split(name, split, img_size, root, download, spec=spec)
    if is_segmentation_data(name):
        raise UserError(f"{name} is a segmentation data set, but the model is a classifier")

    source = open_source(name, split, root, download)
    spec = spec_for(source, img_size) if spec is None else replace(spec, class_names=source.class_names)
    return Split(name, split, spec, _classification_dataset(source, spec), source.natural)


def load_arrays(name: str, split: str, spec: PreprocessSpec, root=None, download: bool = False,
                limit: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A split as numpy (x float32 NCHW preprocessed by ``spec``, targets); ``limit`` takes a seeded subset."""
    if spec.task == "segmentation":

        return load_segmentation_arrays(name, split, spec, root, download, limit, seed)

    return load_classification_arrays(name, split, spec, root, download, limit, seed)


IN_MEMORY_LIMIT = 20_000  # small sets are preprocessed once up front; large ones per item in loader workers


def _classification_dataset(source, spec: PreprocessSpec):
    import torch
    from torch.utils.data import Dataset, TensorDataset


    if len(source) <= IN_MEMORY_LIMIT:
        x = torch.from_numpy(preprocess_all(source, spec))
        return TensorDataset(x, torch.from_numpy(source.labels))

    class LazyImages(Dataset):
        def __len__(self) -> int:
            return len(source)

        def __getitem__(self, i: int):
            x = spec.preprocess([source.read(i)])[0]
            return torch.from_numpy(x), torch.tensor(source.labels[i])

    return LazyImages()
