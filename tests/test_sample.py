import numpy as np
import pytest
import torch

from mnistgan.gan.models import build_gan
from mnistgan.gan.sample import interpolation_images, sample_images, sample_noise, slerp
from mnistgan.pictures import by_class_grid, image_grid


def test_image_grid_layout():
    imgs = np.stack([np.full((28, 28), i, np.uint8) for i in range(12)])
    grid = image_grid(imgs, nrow=5, pad=2)
    assert grid.shape == (3 * 30 + 2, 5 * 30 + 2)
    assert grid[2, 2] == 0 and grid[2, 2 + 30] == 1 and grid[2 + 30, 2] == 5  # row-major order
    assert grid[0, 0] == 255 and grid[2 + 60, 2 + 2 * 30] == 255  # separators, blank cells
    with pytest.raises(ValueError, match=r"must be \(N, H, W\)"):
        image_grid(np.zeros((2, 1, 28, 28), np.uint8))


def test_by_class_grid_rows_are_classes():
    imgs = np.stack([np.full((28, 28), i % 10, np.uint8) for i in range(30)])
    grid = by_class_grid(imgs, np.arange(30) % 10, per_class=3)
    for r in range(10):
        assert grid[2 + r * 30, 2] == r


def test_sampling_is_seeded_and_balanced_for_conditional():
    g, _ = build_gan("dcgan-small", 16, "none", True)
    a = sample_images(g, 30, 16, True, seed=5, batch_size=7)
    b = sample_images(g, 30, 16, True, seed=5, batch_size=30)
    assert a.shape == (30, 28, 28) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)  # batch size does not change samples (eval-mode BN)
    _, y = sample_noise(30, 16, True, 0)
    assert np.bincount(y.numpy()).tolist() == [3] * 10


def test_slerp_endpoints_and_norm():
    a, b = torch.randn(64), torch.randn(64)
    path = slerp(a, b, torch.linspace(0, 1, 5))
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)
    assert path[2].norm() > 0.8 * min(a.norm(), b.norm())  # no collapse toward 0 in the middle


def test_interpolation_strip_shape():
    g, _ = build_gan("dcgan-small", 16, "none", False)
    assert interpolation_images(g, 16, False, seed=0, rows=2, steps=4).shape == (8, 28, 28)


def test_truncation_zero_is_the_plain_normal_draw():
    z, _ = sample_noise(50, 16, False, 7)
    torch.testing.assert_close(z, torch.randn(50, 16, generator=torch.Generator().manual_seed(7)), rtol=0, atol=0)


@pytest.mark.parametrize(("t", "std"), [(0.5, 0.2839), (1.0, 0.5396), (2.0, 0.8796)])
def test_truncated_noise_stays_inside_and_has_the_truncated_normal_spread(t, std):
    # std of N(0, 1) cut to [-t, t]: sqrt(1 - 2 t pdf(t) / (2 cdf(t) - 1))
    z, _ = sample_noise(20000, 64, False, 3, truncation=t)
    assert z.dtype == torch.float32 and z.abs().max() <= t
    assert abs(z.std().item() - std) < 0.005 and abs(z.mean().item()) < 0.005
    again, _ = sample_noise(20000, 64, False, 3, truncation=t)
    assert torch.equal(z, again)  # seeded


def test_a_large_truncation_is_the_normal_distribution_and_finite():
    z, _ = sample_noise(2000, 64, False, 0, truncation=40.0)
    assert torch.isfinite(z).all() and abs(z.std().item() - 1) < 0.01
