import kornia
import pytest
import torch

from invisible_face.filters import blur_matrix, gaussian_blur


@pytest.mark.parametrize("sigma,size", [(1.5, 11), (3.0, 13), (0.5, 3)])
def test_gaussian_blur_equals_kornia_on_a_non_square_batch(sigma, size):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 20, 31)
    ours = gaussian_blur(x, sigma, size)
    theirs = kornia.filters.gaussian_blur2d(x, (size, size), (sigma, sigma))
    assert ours.shape == x.shape
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_blur_matrix_keeps_a_flat_signal_and_rejects_a_kernel_too_large():
    matrix = blur_matrix(9, 2.0, 7)
    assert torch.allclose(matrix.sum(1), torch.ones(9))  # reflection keeps every weight inside
    assert torch.allclose(matrix @ torch.full((9,), 0.3), torch.full((9,), 0.3))
    with pytest.raises(ValueError):
        blur_matrix(4, 1.0, 9)
