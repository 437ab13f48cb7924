"""The zoo: names, configs, parameter counts, and the public create_model/list_models API."""

import subprocess
import sys

import pytest
import torch

import lkca_deploy
from lkca_deploy.models.zoo import get_config, model_summary
from lkca_runtime.errors import UserError


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_public_api_lists_and_creates():
    names = lkca_deploy.list_models()
    for name in ("lkca_vit_nano", "vit_nano", "lkca_vit_tiny", "vit_tiny", "lkca_vit_small", "vit_small",
                 "lkca_vit_tiny_64", "vit_tiny_64", "lkca_seg_nano", "vit_seg_nano", "lkca_seg_tiny", "vit_seg_tiny"):
        assert name in names
    model = lkca_deploy.create_model("lkca_vit_nano", view="attention", num_classes=7)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 7)


def test_lkca_tiny_has_fewer_parameters_than_vit_tiny():
    lkca = n_params(lkca_deploy.create_model("lkca_vit_tiny"))
    mhsa = n_params(lkca_deploy.create_model("vit_tiny"))
    assert lkca < mhsa
    assert 1.8e6 < lkca < 2.3e6 and 2.5e6 < mhsa < 2.9e6  # the paper's ViT-tiny scale


def test_nano_is_about_a_tenth_of_a_million_parameters():
    assert 0.05e6 < n_params(lkca_deploy.create_model("lkca_vit_nano")) < 0.2e6


def test_every_config_names_its_grid_and_kernel():
    assert get_config("lkca_vit_tiny").grid == (8, 8) and get_config("lkca_vit_tiny").kernel == (15, 15)
    assert get_config("lkca_vit_tiny_64").grid == (8, 8)
    assert get_config("lkca_seg_nano").kernel == (31, 31)
    assert get_config("lkca_seg_tiny").grid == (32, 32) and get_config("lkca_seg_tiny").kernel == (63, 63)
    assert get_config("vit_tiny").kernel is None


def test_summary_counts_flops():
    s = model_summary("lkca_vit_nano")
    assert s["params"] > 0 and s["gflops"] > 0 and s["grid"] == [8, 8] and s["kernel"] == [15, 15]


def test_seeded_creation_is_deterministic():
    a = lkca_deploy.create_model("lkca_vit_nano", seed=3)
    b = lkca_deploy.create_model("lkca_vit_nano", seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_views_agree_on_the_whole_network():
    torch.manual_seed(0)
    model = lkca_deploy.create_model("lkca_vit_nano", view="conv").eval()
    for block in model.blocks:
        torch.nn.init.normal_(block.mixer.kernel, std=0.3)
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        ref = model(x)
        for view in ("attention", "fft"):
            assert (model.set_view(view)(x) - ref).abs().max() <= 1e-5


def test_segmentation_model_outputs_a_map_at_input_size():
    model = lkca_deploy.create_model("lkca_seg_nano", view="attention")
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 11, 64, 64)


def test_unknown_names_and_arguments_are_user_errors():
    with pytest.raises(UserError, match="unknown model 'resnet'.*lkca_vit_nano"):
        lkca_deploy.create_model("resnet")
    with pytest.raises(UserError, match="unknown model argument"):
        lkca_deploy.create_model("lkca_vit_nano", wings=2)


def test_importing_the_package_does_not_import_torch():
    code = "import sys, lkca_deploy; assert 'torch' not in sys.modules; print(lkca_deploy.__version__)"
    subprocess.run([sys.executable, "-c", code], check=True)
