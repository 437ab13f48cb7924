"""The LKCA views are one linear map: conv, attention (Toeplitz) and FFT agree for any grid and kernel."""

import pytest
import torch

from lkca_deploy.models.lkca import LKCA, toeplitz

GRIDS_AND_KERNELS = [
    ((8, 8), None),  # default 2*grid-1: every token sees every token
    ((4, 6), None),  # non-square grid
    ((5, 7), 3),  # smaller than the grid: local
    ((6, 6), 11),  # exactly 2*grid-1
    ((5, 5), 13),  # larger than 2*grid-1: outer taps never touch the grid
    ((3, 8), (5, 9)),  # non-square kernel
]


@pytest.mark.parametrize("grid,kernel", GRIDS_AND_KERNELS)
@pytest.mark.parametrize("heads", [1, 4, 16])
def test_views_agree(grid, kernel, heads):
    torch.manual_seed(0)
    mixer = LKCA(16, grid, heads, kernel)
    torch.nn.init.normal_(mixer.kernel)  # full-scale weights, so a wrong tap would show
    x = torch.randn(3, grid[0] * grid[1], 16)
    outputs = {}
    for view in ("conv", "attention", "fft"):
        mixer.view = view
        outputs[view] = mixer(x)
    assert (outputs["conv"] - outputs["attention"]).abs().max() <= 1e-5
    assert (outputs["conv"] - outputs["fft"]).abs().max() <= 1e-5


def test_heads_share_a_kernel_across_their_channels():
    """Each head's kernel serves dim/heads channels: a head's channels see the same spatial mixing."""
    torch.manual_seed(0)
    mixer = LKCA(8, (4, 4), heads=2, view="conv")
    torch.nn.init.normal_(mixer.kernel)
    mixer.v = torch.nn.Identity()
    mixer.proj = torch.nn.Identity()
    x = torch.randn(1, 16, 1).repeat(1, 1, 8)  # every channel carries the same signal
    y = mixer(x)
    assert torch.allclose(y[..., 0], y[..., 3]) and torch.allclose(y[..., 4], y[..., 7])
    assert not torch.allclose(y[..., 0], y[..., 4])


def test_toeplitz_is_the_conv_as_a_matrix():
    torch.manual_seed(0)
    kernel = torch.randn(1, 1, 7, 7)
    a = toeplitz(kernel, (4, 4))[0]
    x = torch.randn(16)
    conv = torch.nn.functional.conv2d(x.reshape(1, 1, 4, 4), kernel, padding=3).reshape(16)
    assert torch.allclose(a @ x, conv, atol=1e-5)


def test_one_state_dict_loads_into_every_view():
    a = LKCA(16, (4, 4), 4, view="conv")
    for view in ("attention", "fft"):
        b = LKCA(16, (4, 4), 4, view=view)
        b.load_state_dict(a.state_dict())
        assert set(b.state_dict()) == {"v.weight", "v.bias", "kernel", "proj.weight", "proj.bias"}


def test_bad_arguments():
    with pytest.raises(ValueError, match="odd"):
        LKCA(16, (4, 4), 4, kernel_size=4)
    with pytest.raises(ValueError, match="divisible"):
        LKCA(10, (4, 4), 4)
    with pytest.raises(ValueError, match="unknown view"):
        LKCA(16, (4, 4), 4, view="dft")


def test_gradients_match_between_views():
    torch.manual_seed(0)
    x = torch.randn(2, 36, 8)
    grads = {}
    for view in ("conv", "attention", "fft"):
        torch.manual_seed(1)
        mixer = LKCA(8, (6, 6), 2, view=view)
        mixer(x).square().sum().backward()
        grads[view] = mixer.kernel.grad
    assert torch.allclose(grads["conv"], grads["attention"], atol=1e-4)
    assert torch.allclose(grads["conv"], grads["fft"], atol=1e-4)
