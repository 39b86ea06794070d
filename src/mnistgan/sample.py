"""Draw samples from a trained generator: fixed-seed sample sets and latent interpolations."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mnistgan.models import N_CLASSES
from mnistgan.train import generate


def sample_noise(n: int, z_dim: int, conditional: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Noise (n, z_dim) from `seed`; with labels, a balanced 0..9 cycle so every class gets n/10 samples."""
    z = torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))
    y = torch.arange(n) % N_CLASSES if conditional else None
    return z, y


def sample_images(g: nn.Module, n: int, z_dim: int, conditional: bool, seed: int, batch_size: int = 1000) -> np.ndarray:
    """n eval-mode samples -> uint8 (n, 28, 28)."""
    z, y = sample_noise(n, z_dim, conditional, seed)
    return generate(g, z, y, batch_size).numpy()


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between noise vectors a, b (z_dim,) at fractions t (T,) -> (T, z_dim).

    Gaussian noise lives near a sphere; a straight line between two points passes through low-norm
    noise the generator never saw, so the middle of a linear interpolation looks washed out.
    """
    cos = torch.dot(a / a.norm(), b / b.norm()).clamp(-1, 1)
    omega = torch.arccos(cos)
    if omega.abs() < 1e-6:
        return a + t[:, None] * (b - a)
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so)[:, None] * a + (torch.sin(t * omega) / so)[:, None] * b


def interpolation_images(
    g: nn.Module, z_dim: int, conditional: bool, seed: int, rows: int = 8, steps: int = 10
) -> np.ndarray:
    """`rows` latent walks of `steps` images each between random noise pairs -> uint8 (rows*steps, 28, 28).
    Conditional models keep one label per row (row r: digit r % 10)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, steps)
    z = torch.cat([slerp(torch.randn(z_dim, generator=gen), torch.randn(z_dim, generator=gen), t) for _ in range(rows)])
    y = torch.arange(rows).repeat_interleave(steps) % N_CLASSES if conditional else None
    return generate(g, z, y).numpy()
