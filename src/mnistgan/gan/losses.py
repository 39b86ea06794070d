"""GAN losses as small functions of discriminator logits, looked up by name.

Each loss gives the discriminator's loss from (real_logits, fake_logits), both (B,), and the generator's
loss from fake_logits (B,). Lower is better for the player being trained. The WGAN-GP gradient penalty
needs the critic itself and lives in `gradient_penalty`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _check(*logits: torch.Tensor) -> None:
    for t in logits:
        if t.dim() != 1:
            raise ValueError(f"logits must be (B,), got shape {tuple(t.shape)}")


def bce_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-log D(x) - log(1 - D(G(z))) with D = sigmoid(logit); softplus keeps it stable."""
    _check(real, fake)
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def minimax_g(fake: torch.Tensor) -> torch.Tensor:
    """The original objective (Goodfellow et al. 2014): G minimises log(1 - D(G(z))) = -softplus(logit).

    It saturates (vanishing gradient) when D confidently rejects fakes; kept for the seed recipe.
    """
    _check(fake)
    return -F.softplus(fake).mean()


def ns_g(fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating variant: G maximises log D(G(z)), i.e. minimises softplus(-logit)."""
    _check(fake)
    return F.softplus(-fake).mean()


def lsgan_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Least squares GAN (Mao et al. 2017), targets 1 for real and 0 for fake: the 'mean squared error'."""
    _check(real, fake)
    return 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean()


def lsgan_g(fake: torch.Tensor) -> torch.Tensor:
    _check(fake)
    return 0.5 * ((fake - 1) ** 2).mean()


def hinge_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018)."""
    _check(real, fake)
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def wasserstein_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Critic loss of WGAN (Arjovsky et al. 2017); add `gradient_penalty` for WGAN-GP."""
    _check(real, fake)
    return fake.mean() - real.mean()


def wasserstein_g(fake: torch.Tensor) -> torch.Tensor:
    _check(fake)
    return -fake.mean()


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    eps: torch.Tensor,
) -> torch.Tensor:
    """WGAN-GP penalty (Gulrajani et al. 2017): E[(||grad critic(x_hat)|| - 1)^2] on random interpolates.

    real, fake: (B, 1, 28, 28); eps: (B, 1, 1, 1) mixing weights in [0, 1), drawn by the caller from the
    run's noise stream so the step stays reproducible.
    """
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def r1_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): E[||grad critic(x)||^2] on real images (B, 1, 28, 28), the squared norm
    over all pixels of each image. It flattens D around the real digits, so G is not pushed past them."""
    x = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return grad.flatten(1).pow(2).sum(1).mean()


@dataclass(frozen=True)
class Loss:
    d: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    g: Callable[[torch.Tensor], torch.Tensor]
    gradient_penalty: bool = False


LOSSES: dict[str, Loss] = {
    "minimax": Loss(bce_d, minimax_g),
    "ns": Loss(bce_d, ns_g),
    "lsgan": Loss(lsgan_d, lsgan_g),
    "hinge": Loss(hinge_d, wasserstein_g),
    "wgan-gp": Loss(wasserstein_d, wasserstein_g, gradient_penalty=True),
}


def get_loss(name: str) -> Loss:
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; known losses: {', '.join(LOSSES)}")
    return LOSSES[name]
