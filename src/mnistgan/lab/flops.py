"""`mnistgan flops`: training compute, counted rather than assumed: multiply-adds of every
Linear/Conv2d/ConvTranspose2d layer from forward hooks, turned into FLOPs per training image of the GAN step.

    mnistgan flops            # the figure for every model at the default widths
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from torch import nn

from mnistgan.cli import OneLineParser, run_command
from mnistgan.config import TrainConfig
from mnistgan.gan.models import MODELS, build_gan


def layer_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    """Multiply-adds of one forward call of a Linear, Conv2d or ConvTranspose2d layer (whole batch).

    Linear: every output element is in_features MACs. Conv2d: every output element is
    (in_channels / groups) * kh * kw MACs. ConvTranspose2d: every *input* element is scattered to
    (out_channels / groups) * kh * kw outputs. Biases, norms and activations are not counted.
    """
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.ConvTranspose2d):
        kh, kw = module.kernel_size
        return inputs[0].numel() * (module.out_channels // module.groups) * kh * kw
    raise TypeError(f"no MAC formula for {type(module).__name__}")


def count_macs(model: nn.Module, *args: Any) -> list[tuple[str, int]]:
    """(layer name, MACs) of every Linear/Conv2d/ConvTranspose2d call in model(*args), in call order."""
    rows: list[tuple[str, int]] = []
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            handles.append(m.register_forward_hook(lambda mod, i, o, n=name: rows.append((n, layer_macs(mod, i, o)))))
    try:
        with torch.no_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return rows


def gan_macs(
    model: str, z_dim: int = 100, d_norm: str = "none", conditional: bool = False, g_width: int = 64, d_width: int = 64
) -> dict[str, Any]:
    """Forward multiply-adds per image of the generator and the discriminator, with per-layer rows."""
    g, d = build_gan(model, z_dim, d_norm, conditional, g_width, d_width)
    g.eval()
    d.eval()
    n = 2
    z, y = torch.zeros(n, z_dim), torch.zeros(n, dtype=torch.long)
    g_rows = count_macs(g, z, y if conditional else None)
    x = g(z, y if conditional else None).detach()
    d_rows = count_macs(d, x, y if conditional else None)
    return {
        "g": sum(m for _, m in g_rows) / n,
        "d": sum(m for _, m in d_rows) / n,
        "g_layers": [(name, m / n) for name, m in g_rows],
        "d_layers": [(name, m / n) for name, m in d_rows],
    }


def train_flops_per_image(g_macs: float, d_macs: float, d_steps: int = 1) -> float:
    """FLOPs per training image of step.train_step (one image = one real image of one D update).

    Per generator update with n = d_steps discriminator updates of B images each: G runs forward n
    times and backward once; D runs forward+backward 2n + 1 times (real and fake per D update, fake
    again for the G update). A backward pass costs 2x its forward, a MAC is 2 FLOPs:
      FLOPs/image = 2 * ((n + 2) * G + 3 * (2n + 1) * D) / n,   n = 1:  6 * (G + 3 * D).
    The gradient penalty's double backward is not counted.
    """
    n = d_steps
    return 2.0 * ((n + 2) * g_macs + 3.0 * (2 * n + 1) * d_macs) / n


def main(argv: list[str] | None = None) -> int:
    """Print G and D multiply-adds and training GFLOP per image for each model (TrainConfig defaults)."""
    return run_command(OneLineParser(prog="mnistgan flops", description=main.__doc__), print_flops, argv)


def print_flops(_args: argparse.Namespace) -> None:
    cfg = TrainConfig()
    for model in MODELS:
        d_norm = "batch" if model == "dcgan-large" else cfg.d_norm
        macs = gan_macs(model, cfg.z_dim, d_norm, cfg.conditional, cfg.g_width, cfg.d_width)
        gflop = train_flops_per_image(macs["g"], macs["d"], cfg.d_steps) / 1e9
        print(
            f"{model}: G {macs['g'] / 1e6:.2f} M, D {macs['d'] / 1e6:.2f} M multiply-adds per image; "
            f"{gflop:.3f} GFLOP per training image (conditional {cfg.conditional}, D norm {d_norm}, "
            f"widths G {cfg.g_width} D {cfg.d_width})"
        )


if __name__ == "__main__":
    sys.exit(main())
