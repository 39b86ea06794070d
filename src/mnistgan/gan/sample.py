"""Images from a generator: eval-mode generation, BatchNorm recalibration, the saved generator file,
fixed-seed sample sets and latent interpolations.

Used by the sample and evaluate stages and by FID during training, without importing the training loop
(so an edit to training code does not rerun sampling or evaluation).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mnistgan.config import TrainConfig, to_dict, train_config_from_dict
from mnistgan.data import N_CLASSES
from mnistgan.gan.models import build_gan
from mnistgan.tensors import to_uint8

# ---- generating ---------------------------------------------------------------------------------------


@torch.no_grad()
def recalibrate_batchnorm(
    g: nn.Module,
    z_dim: int,
    conditional: bool,
    seed: int,
    device: torch.device,
    n_batches: int = 20,
    batch_size: int = 256,
) -> None:
    """Recompute BatchNorm running statistics for `g`'s own weights ("standing statistics").

    An EMA generator's averaged weights do not match the running stats copied from the live generator;
    averaging batch statistics over a few fixed noise batches fixes that before eval-mode sampling.
    """
    bns = [m for m in g.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    rng = torch.Generator(device=device).manual_seed(seed)
    was_training = g.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    g.train()
    for _ in range(n_batches):
        z = torch.randn(batch_size, z_dim, generator=rng, device=device)
        y = torch.randint(0, N_CLASSES, (batch_size,), generator=rng, device=device) if conditional else None
        g(z, y)
    for m in bns:
        m.momentum = 0.1
    g.train(was_training)


def fixed_noise(z_dim: int, conditional: bool, seed: int, n: int = 100) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Noise for the sample grids; with labels, row r of a 10-wide grid is digit r."""
    z = torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))
    y = torch.arange(n) * N_CLASSES // n if conditional else None  # n = 100: 10 of each, in order
    return z, y


@torch.no_grad()
def generate(g: nn.Module, z: torch.Tensor, y: torch.Tensor | None, batch_size: int = 1000) -> torch.Tensor:
    """Eval-mode samples for noise z (N, z_dim) -> uint8 (N, 28, 28) on the CPU."""
    device = next(g.parameters()).device
    was_training = g.training
    g.eval()
    out = []
    for i in range(0, z.shape[0], batch_size):
        yb = y[i : i + batch_size].to(device) if y is not None else None
        out.append(to_uint8(g(z[i : i + batch_size].to(device), yb)).cpu())
    g.train(was_training)
    return torch.cat(out)


# ---- the saved generator -------------------------------------------------------------------------------

GENERATOR_FORMAT = "mnistgan-generator-1"


def generator_file(cfg: TrainConfig, seed: int, step: int, ema: bool, sampler: nn.Module) -> dict[str, Any]:
    """What the sample stage needs: the weights and the config that rebuilds their module."""
    return {
        "format": GENERATOR_FORMAT,
        "train_config": to_dict(cfg),
        "seed": seed,
        "step": step,
        "ema": ema,
        "state_dict": sampler.state_dict(),
    }


def check_generator_file(obj: Any) -> str | None:
    if not isinstance(obj, dict) or obj.get("format") != GENERATOR_FORMAT:
        return f"not a generator file of this version (format {GENERATOR_FORMAT!r} expected)"
    try:
        generator_from_file(obj)
    except Exception as e:  # config rejected or weights of another shape
        return f"generator does not match the code ({str(e).splitlines()[0]})"
    return None


def generator_from_file(obj: dict[str, Any]) -> tuple[nn.Module, TrainConfig]:
    cfg = train_config_from_dict(obj["train_config"])
    g, _ = build_gan(cfg.model, cfg.z_dim, cfg.d_norm, cfg.conditional, cfg.g_width, cfg.d_width, cfg.g_upsample)
    g.load_state_dict(obj["state_dict"])
    return g.eval(), cfg


# ---- sample sets ---------------------------------------------------------------------------------------


def sample_noise(
    n: int, z_dim: int, conditional: bool, seed: int, truncation: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Noise (n, z_dim) from `seed`; with labels, a balanced 0..9 cycle so every class gets n/10 samples.

    truncation > 0 draws each noise value from the standard normal cut to [-truncation, truncation] (the
    "truncation trick": samples from nearer the middle of the noise, so more of them look like the
    generator's best work and fewer cover the rare styles; precision up, recall down). 0 = the full normal.
    """
    z = normal_noise(torch.Generator().manual_seed(seed), (n, z_dim), truncation)
    y = torch.arange(n) % N_CLASSES if conditional else None
    return z, y


def normal_noise(rng: torch.Generator, shape: tuple[int, ...], truncation: float = 0.0) -> torch.Tensor:
    """Standard normal noise of `shape` from `rng`; truncation > 0 cuts it to [-truncation, truncation]."""
    if truncation > 0:
        # inverse CDF of the truncated normal: one uniform draw per value, exact, no rejection loop
        lo = torch.special.ndtr(torch.tensor(-truncation, dtype=torch.float64))
        u = torch.rand(*shape, generator=rng, dtype=torch.float64)
        return torch.special.ndtri(lo + u * (1 - 2 * lo)).clamp(-truncation, truncation).float()
    return torch.randn(*shape, generator=rng)


ANY_DIGIT = -1


def digits_from_seeds(
    g: nn.Module, z_dim: int, conditional: bool, digits: np.ndarray, seeds: np.ndarray, truncation: float = 0.0
) -> np.ndarray:
    """One image per (digit, seed) row -> uint8 (rows, 28, 28): what `mnistgan generate` and the logged
    MLflow model return.

    Each row's noise (z_dim,) comes from its own seed alone, so a row's image does not depend on the
    other rows: the same (digit, seed) gives the same bytes in any request. digit ANY_DIGIT (-1) lets
    a conditional generator draw the label from the same seed (after the noise); an unconditional
    generator accepts only ANY_DIGIT.
    """
    digits, seeds = np.asarray(digits, np.int64).reshape(-1), np.asarray(seeds, np.int64).reshape(-1)
    if digits.shape != seeds.shape:
        raise ValueError(f"{len(digits)} digits but {len(seeds)} seeds; give one of each per image")
    bad = digits[(digits < ANY_DIGIT) | (digits >= N_CLASSES)]
    if len(bad):
        raise ValueError(f"digit {int(bad[0])} is out of range; allowed 0-{N_CLASSES - 1}, or {ANY_DIGIT} for any")
    if not conditional and (digits != ANY_DIGIT).any():
        raise ValueError(f"this generator is unconditional: it cannot be asked for a digit (use {ANY_DIGIT}, any)")
    if (seeds < 0).any():
        raise ValueError(f"seed {int(seeds[seeds < 0][0])} is negative; seeds are integers >= 0")
    z = torch.empty(len(seeds), z_dim)
    y = torch.empty(len(seeds), dtype=torch.long)
    for i, (digit, seed) in enumerate(zip(digits.tolist(), seeds.tolist(), strict=True)):
        rng = torch.Generator().manual_seed(seed)
        z[i] = normal_noise(rng, (z_dim,), truncation)
        y[i] = int(torch.randint(0, N_CLASSES, (1,), generator=rng)) if digit == ANY_DIGIT else digit
    # One image per forward pass on one thread: a batch's size and the thread count change the kernels'
    # summation order, which moves a pixel by one level now and then (measured: 2 of 392,000 pixels between
    # batches of 1 and 500). About 5 ms an image on one CPU core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return generate(g, z, y if conditional else None, batch_size=1).numpy()
    finally:
        torch.set_num_threads(threads)


def sample_images(
    g: nn.Module, n: int, z_dim: int, conditional: bool, seed: int, batch_size: int = 1000, truncation: float = 0.0
) -> np.ndarray:
    """n eval-mode samples -> uint8 (n, 28, 28); `truncation` as in sample_noise."""
    z, y = sample_noise(n, z_dim, conditional, seed, truncation)
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
