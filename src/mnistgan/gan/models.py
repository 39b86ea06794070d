"""Generators, discriminators and the feature classifier: nn.Modules only, looked up by name.

Images are (B, 1, 28, 28) in [-1, 1]; noise is (B, z_dim); labels are (B,) int64 in 0..9.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from mnistgan.data import N_CLASSES


def _d_norm_layer(kind: str, channels: int, spatial: int | None = None) -> nn.Module:
    """The normalisation after a discriminator layer ('spectral' wraps the layer instead)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels) if spatial else nn.BatchNorm1d(channels)
    if kind == "layer":
        # Layer norm over (C, H, W) per sample: GroupNorm with one group is exactly that.
        return nn.GroupNorm(1, channels) if spatial else nn.LayerNorm(channels)
    return nn.Identity()


def _maybe_sn(layer: nn.Module, kind: str) -> nn.Module:
    return spectral_norm(layer) if kind == "spectral" else layer


class ConditionalInput(nn.Module):
    """Concatenate a one-hot label to the noise: (B, z) + (B,) -> (B, z + 10)."""

    def forward(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            return z
        return torch.cat([z, nn.functional.one_hot(y, N_CLASSES).to(z.dtype)], dim=1)


class LargeGenerator(nn.Module):
    """The project's seed generator (`dcgan-large`), layer for layer as first specified.

    z (B, 100) -> dense 1024, BN, ReLU -> dense 1024, BN, ReLU -> dense 7*7*256, BN, ReLU
    -> (B, 256, 7, 7) -> convT 128 5x5 s2 (B, 128, 14, 14), BN, ReLU -> convT 64 5x5 s2 (B, 64, 28, 28),
    BN, ReLU -> convT 1 7x7 s1 (B, 1, 28, 28), tanh.
    """

    def __init__(self, z_dim: int = 100, conditional: bool = False):
        super().__init__()
        self.z_dim, self.conditional = z_dim, conditional
        self.cond = ConditionalInput()
        in_dim = z_dim + (N_CLASSES if conditional else 0)
        self.dense = nn.Sequential(
            nn.Linear(in_dim, 1024),
            nn.BatchNorm1d(1024),
            nn.ReLU(True),
            nn.Linear(1024, 1024),
            nn.BatchNorm1d(1024),
            nn.ReLU(True),
            nn.Linear(1024, 7 * 7 * 256),
            nn.BatchNorm1d(7 * 7 * 256),
            nn.ReLU(True),
        )
        self.conv = nn.Sequential(
            nn.ConvTranspose2d(256, 128, 5, stride=2, padding=2, output_padding=1),
            nn.BatchNorm2d(128),
            nn.ReLU(True),
            nn.ConvTranspose2d(128, 64, 5, stride=2, padding=2, output_padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(True),
            nn.ConvTranspose2d(64, 1, 7, stride=1, padding=3),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.dense(self.cond(z, y if self.conditional else None))  # (B, 12544)
        return self.conv(h.view(-1, 256, 7, 7))  # (B, 1, 28, 28)


class SmallGenerator(nn.Module):
    """A small standard DCGAN generator (`dcgan-small`), fast enough for CPU runs (`python -m mnistgan.lab.flops`
    counts the FLOPs per training image of both models: about 9x fewer than dcgan-large at the defaults).

    z -> dense 128*7*7, BN, ReLU -> (B, 128, 7, 7) -> convT 64 4x4 s2 (B, 64, 14, 14), BN, ReLU
    -> convT 1 4x4 s2 (B, 1, 28, 28), tanh.

    upsample "nearest" or "bilinear" replaces each transposed conv by a 2x resize and a 3x3 conv (Odena et
    al. 2016: a 4x4 kernel at stride 2 covers output pixels unevenly, the usual source of checkerboard
    speckle; a resize then a conv cannot make that pattern).
    """

    def __init__(self, z_dim: int = 100, conditional: bool = False, width: int = 64, upsample: str = "transposed"):
        super().__init__()
        self.z_dim, self.conditional = z_dim, conditional
        self.cond = ConditionalInput()
        in_dim = z_dim + (N_CLASSES if conditional else 0)
        self.dense = nn.Sequential(nn.Linear(in_dim, 2 * width * 49), nn.BatchNorm1d(2 * width * 49), nn.ReLU(True))
        self.width = width
        self.conv = nn.Sequential(
            _up(2 * width, width, upsample),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
            _up(width, 1, upsample),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.dense(self.cond(z, y if self.conditional else None))  # (B, 2w*49)
        return self.conv(h.view(-1, 2 * self.width, 7, 7))  # (B, 1, 28, 28)


def _up(c_in: int, c_out: int, mode: str) -> nn.Module:
    """(B, c_in, H, W) -> (B, c_out, 2H, 2W)."""
    if mode == "transposed":
        return nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)
    if mode not in ("nearest", "bilinear"):
        raise KeyError(f"unknown upsampling {mode!r}; known: transposed, nearest, bilinear")
    return nn.Sequential(nn.Upsample(scale_factor=2, mode=mode), nn.Conv2d(c_in, c_out, 3, padding=1))


class Discriminator(nn.Module):
    """Conv feature stack -> dense logit, with an optional projection term for labels.

    Projection discriminator (Miyato & Koyama 2018, "cGANs with Projection Discriminator"):
    logit = w^T h + embed(y)^T h, with h the (B, F) features.
    """

    def __init__(self, features: nn.Module, n_features: int, norm: str, conditional: bool):
        super().__init__()
        self.conditional = conditional
        self.features = features
        self.head = _maybe_sn(nn.Linear(n_features, 1), norm)
        self.embed = _maybe_sn(nn.Embedding(N_CLASSES, n_features), norm) if conditional else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x).flatten(1)  # (B, F)
        logit = self.head(h).squeeze(1)  # (B,)
        if self.embed is not None and y is not None:
            logit = logit + (self.embed(y) * h).sum(1)
        return logit


def large_discriminator(norm: str = "batch", conditional: bool = False) -> Discriminator:
    """The project's seed discriminator (`dcgan-large`): conv 32, 64, 128 (5x5 stride 2), each norm + LeakyReLU.

    (B, 1, 28, 28) -> (B, 32, 14, 14) -> (B, 64, 7, 7) -> (B, 128, 4, 4) -> dense 1.
    """
    layers: list[nn.Module] = []
    channels, spatial = [1, 32, 64, 128], [14, 7, 4]
    for c_in, c_out, s in zip(channels[:-1], channels[1:], spatial, strict=True):
        layers += [
            _maybe_sn(nn.Conv2d(c_in, c_out, 5, stride=2, padding=2), norm),
            _d_norm_layer(norm, c_out, s),
            nn.LeakyReLU(0.2, True),
        ]
    return Discriminator(nn.Sequential(*layers), 128 * 4 * 4, norm, conditional)


def small_discriminator(norm: str = "none", conditional: bool = False, width: int = 64) -> Discriminator:
    """(B, 1, 28, 28) -> conv 4x4 s2 (B, w, 14, 14) -> conv 4x4 s2 (B, 2w, 7, 7) -> dense 1.

    No normalisation on the first layer (as in DCGAN: it would remove the input's scale).
    """
    features = nn.Sequential(
        _maybe_sn(nn.Conv2d(1, width, 4, stride=2, padding=1), norm),
        nn.LeakyReLU(0.2, True),
        _maybe_sn(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), norm),
        _d_norm_layer(norm, 2 * width, 7),
        nn.LeakyReLU(0.2, True),
    )
    return Discriminator(features, 2 * width * 49, norm, conditional)


def _large_g(z_dim: int, conditional: bool, width: int, upsample: str = "transposed") -> nn.Module:
    if upsample != "transposed":
        raise KeyError(f"dcgan-large has transposed convolutions only, not {upsample!r}")
    return LargeGenerator(z_dim, conditional)  # the document's widths, layer for layer


def _large_d(norm: str, conditional: bool, width: int) -> Discriminator:
    return large_discriminator(norm, conditional)


# name -> (generator factory (z_dim, conditional, width, upsample), discriminator factory (norm, conditional,
# width)); the widths and the upsampling apply to dcgan-small only.
MODELS: dict[str, tuple[Callable[..., nn.Module], Callable[..., Discriminator]]] = {
    "dcgan-large": (_large_g, _large_d),
    "dcgan-small": (SmallGenerator, small_discriminator),
}


def build_gan(
    name: str,
    z_dim: int,
    d_norm: str,
    conditional: bool,
    g_width: int = 64,
    d_width: int = 64,
    g_upsample: str = "transposed",
) -> tuple[nn.Module, Discriminator]:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    make_g, make_d = MODELS[name]
    return make_g(z_dim, conditional, g_width, g_upsample), make_d(d_norm, conditional, d_width)
