"""Discriminator rejection sampling (Azadi et al. 2019, "Discriminator Rejection Sampling").

A trained discriminator's logit d(x) estimates log p_data(x) / p_G(x), so keeping a sample with
probability exp(d(x) - M) (M: the largest logit seen) moves the samples towards the data. The paper
smooths that into an acceptance probability sigmoid(F(x) - gamma) with

    F(x) = d(x) - M - log(1 - exp(d(x) - M - eps)),

where gamma (here: a percentile of F over a burn-in set) sets how strict the sampler is. Only the GAN's own
discriminator judges: never the scoring networks, or the scores would stop meaning anything.

With labels, every slot of the balanced label cycle (sample_noise) is refilled with fresh noise of its
own label until a sample is accepted, so every class keeps exactly its share; M and gamma are per class,
so the strictness is the same for every digit. Deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mnistgan.config import SampleConfig, TrainConfig, train_config_from_dict
from mnistgan.data import N_CLASSES
from mnistgan.errors import InputError
from mnistgan.gan.models import build_gan
from mnistgan.gan.sample import normal_noise, sample_images, sample_noise
from mnistgan.tensors import to_uint8

EPS = 1e-6
MAX_ROUNDS = 200  # after this many proposals a slot keeps its last one (counted in `forced`)


@dataclass(frozen=True)
class RejectionStats:
    burn_in: int  # images judged to set M and gamma
    proposals: int  # images judged for the n slots
    accepted: int
    forced: int  # slots that kept a proposal after MAX_ROUNDS rejections

    @property
    def acceptance(self) -> float:
        return self.accepted / max(1, self.proposals)


def discriminator_from_checkpoint(ckpt: dict[str, Any], generator_file: dict[str, Any], name: str) -> nn.Module:
    """The trained discriminator of the run that saved `generator_file`, from its final checkpoint `name`."""
    if ckpt.get("train_config") != generator_file["train_config"] or ckpt.get("step") != generator_file["step"]:
        raise InputError(
            f"{name} (step {ckpt.get('step')}) is not the final checkpoint of the generator's run "
            f"(step {generator_file['step']}); rerun the train stage"
        )
    cfg = train_config_from_dict(ckpt["train_config"])
    _, d = build_gan(cfg.model, cfg.z_dim, cfg.d_norm, cfg.conditional, cfg.g_width, cfg.d_width, cfg.g_upsample)
    # wrappers of other training set-ups (DDP, torch.compile) prefix the names
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in ckpt["d"].items()}
    d.load_state_dict(state)
    return d.eval()


@torch.no_grad()
def _judge(
    g: nn.Module, d: nn.Module, z: torch.Tensor, y: torch.Tensor | None, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (N, 28, 28) and D's logits (N,) for noise z (N, z_dim)."""
    device = next(g.parameters()).device
    images, logits = [], []
    for i in range(0, z.shape[0], batch_size):
        yb = y[i : i + batch_size].to(device) if y is not None else None
        x = g(z[i : i + batch_size].to(device), yb)  # (B, 1, 28, 28) in [-1, 1]
        logits.append(d(x, yb).float().cpu())
        images.append(to_uint8(x).cpu())
    return torch.cat(images), torch.cat(logits)


def _f_score(logits: torch.Tensor, max_logit: torch.Tensor) -> torch.Tensor:
    """F(x) of the paper; a logit above the burn-in's maximum counts as the maximum."""
    delta = (logits - max_logit).clamp(max=0.0)
    return delta - torch.log1p(-torch.exp(delta - EPS))


def rejection_sample(
    g: nn.Module,
    d: nn.Module,
    n: int,
    z_dim: int,
    conditional: bool,
    seed: int,
    percentile: float,
    batch_size: int = 1000,
    truncation: float = 0.0,
) -> tuple[np.ndarray, RejectionStats]:
    """n samples uint8 (n, 28, 28) kept by `d`, with gamma the `percentile` (0-100) of F over a burn-in of n
    proposals: higher is stricter. Slot i holds label i % 10 as in sample_noise; the first proposals are
    sample_noise's own noise."""
    if not 0 < percentile < 100:
        raise ValueError(f"percentile {percentile} must be between 0 and 100 (exclusive)")
    g.eval()
    d.eval()
    groups = N_CLASSES if conditional else 1

    def label_of(index: torch.Tensor) -> torch.Tensor:  # (N,) slot -> label group
        return index % groups

    # burn-in: M and gamma per label group, from noise of their own stream
    burn_rng = torch.Generator().manual_seed(seed + 1)
    z_burn = normal_noise(burn_rng, (n, z_dim), truncation)
    burn_group = label_of(torch.arange(n))  # the burn-in's labels when conditional
    _, burn_logits = _judge(g, d, z_burn, burn_group if conditional else None, batch_size)
    max_logit = torch.stack([burn_logits[burn_group == k].max() for k in range(groups)])  # (groups,)
    burn_f = _f_score(burn_logits, max_logit[burn_group])
    gamma = torch.stack([torch.quantile(burn_f[burn_group == k], percentile / 100) for k in range(groups)])

    z, y = sample_noise(n, z_dim, conditional, seed, truncation)
    out = torch.empty(n, 28, 28, dtype=torch.uint8)
    pending = torch.arange(n)
    noise_rng, accept_rng = torch.Generator().manual_seed(seed + 2), torch.Generator().manual_seed(seed + 3)
    proposals, forced = 0, 0
    for round_ in range(MAX_ROUNDS):
        zp = z if round_ == 0 else normal_noise(noise_rng, (len(pending), z_dim), truncation)
        yp = y[pending] if y is not None else None
        images, logits = _judge(g, d, zp, yp, batch_size)
        proposals += len(pending)
        group = label_of(pending)
        p_accept = torch.sigmoid(_f_score(logits, max_logit[group]) - gamma[group])
        keep = torch.rand(len(pending), generator=accept_rng) < p_accept
        if round_ == MAX_ROUNDS - 1:
            forced = int((~keep).sum())
            keep[:] = True
        out[pending[keep]] = images[keep]
        pending = pending[~keep]
        if len(pending) == 0:
            break
    return out.numpy(), RejectionStats(burn_in=n, proposals=proposals, accepted=n - forced, forced=forced)


def draw_samples(
    g: nn.Module, d: nn.Module | None, cfg: SampleConfig, train_cfg: TrainConfig, seed: int
) -> tuple[np.ndarray, RejectionStats | None]:
    """The sample stage's images uint8 (cfg.n, 28, 28) for `seed`: rejection-sampled by `d` when
    cfg.drs_percentile > 0, else sample_images; and the rejection statistics (None without)."""
    if cfg.drs_percentile <= 0:
        return sample_images(
            g, cfg.n, train_cfg.z_dim, train_cfg.conditional, seed, cfg.batch_size, cfg.truncation
        ), None
    if d is None:
        raise ValueError("sample.drs_percentile > 0 needs the discriminator")
    return rejection_sample(
        g, d, cfg.n, train_cfg.z_dim, train_cfg.conditional, seed, cfg.drs_percentile, cfg.batch_size, cfg.truncation
    )
