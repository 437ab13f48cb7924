"""Session fixtures for the precision tests (the cases themselves: precision_cases.py)."""

from pathlib import Path

import pytest
from precision_cases import FP16_FACTOR, INT8_FACTOR, Case, make_case


@pytest.fixture(scope="session")
def digits_nano(tmp_path_factory) -> Path:
    """lkca_vit_nano trained 12 epochs on digits: ~95% test top-1 in about 25 s on two quiet cores."""
    from lkca_deploy.train import TrainOptions, train

    out = tmp_path_factory.mktemp("precision") / "nano-digits"
    train("lkca_vit_nano", "digits", out=out,
          opts=TrainOptions(epochs=12, batch_size=16, lr=3e-3, warmup_epochs=1.0, progress=False))
    return out


@pytest.fixture(scope="session")
def clean_case(digits_nano, tmp_path_factory) -> Case:
    return make_case(digits_nano, tmp_path_factory.mktemp("clean"), None)


@pytest.fixture(scope="session")
def int8_outlier_case(digits_nano, tmp_path_factory) -> Case:
    return make_case(digits_nano, tmp_path_factory.mktemp("int8-outlier"), INT8_FACTOR)


@pytest.fixture(scope="session")
def fp16_outlier_case(digits_nano, tmp_path_factory) -> Case:
    return make_case(digits_nano, tmp_path_factory.mktemp("fp16-outlier"), FP16_FACTOR)
