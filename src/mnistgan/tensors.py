"""Conversions between stored uint8 images and model tensors, and the seeded data order."""

from __future__ import annotations

import numpy as np
import torch


def to_unit_range(x_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) pixels -> float32 (N, 1, 28, 28) in [-1, 1], the generator's tanh range."""
    return (x_u8.float().unsqueeze(1) / 127.5) - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float (N, 1, 28, 28) in [-1, 1] -> uint8 (N, 28, 28), rounding to the nearest level."""
    return ((x.squeeze(1).float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def training_tensors(
    x_u8: np.ndarray, y: np.ndarray, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored images and labels -> what training takes: float32 (N, 1, 28, 28) in [-1, 1] and int64 (N,),
    on `device`."""
    return to_unit_range(torch.from_numpy(x_u8)).to(device), torch.from_numpy(y).long().to(device)


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of one epoch, a pure function of (seed, epoch) so resume needs no saved state."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)
