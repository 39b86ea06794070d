"""mnistgan.lab.flops: multiply-adds counted by forward hooks, checked against counts by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mnistgan.lab import flops


def test_large_model_costs_the_figure_counted_by_hand():
    """By hand: G 96.7 M and D 5.9 M multiply-adds per image, 0.69 GFLOP per training image."""
    macs = flops.gan_macs("dcgan-large", d_norm="batch")
    assert macs["g"] == pytest.approx(96.7e6, rel=1e-3)
    assert macs["d"] == pytest.approx(5.9e6, rel=0.01)
    assert flops.train_flops_per_image(macs["g"], macs["d"]) == pytest.approx(0.69e9, rel=0.02)
    layers = dict(macs["g_layers"])
    assert layers["dense.6"] == 1024 * 7 * 7 * 256  # the dense 1024 -> 12544 layer: 12.8 M
    assert layers["conv.0"] == 256 * 7 * 7 * 128 * 5 * 5  # convT 256 -> 128, 5x5, on 7x7 inputs: 40.1 M
    assert dict(macs["d_layers"])["features.0"] == 32 * 14 * 14 * 5 * 5  # conv 1 -> 32, 5x5 s2 -> 14x14


def test_layer_macs_by_hand():
    conv = nn.Conv2d(4, 8, 3, padding=1, groups=2)
    rows = flops.count_macs(conv, torch.zeros(2, 4, 10, 10))
    assert rows == [("", 2 * 8 * 10 * 10 * (4 // 2) * 9)]
    convt = nn.ConvTranspose2d(3, 5, 4, stride=2, padding=1)
    assert flops.count_macs(convt, torch.zeros(1, 3, 7, 7)) == [("", 3 * 7 * 7 * 5 * 16)]
    lin = nn.Linear(6, 7)
    assert flops.count_macs(lin, torch.zeros(3, 6)) == [("", 3 * 6 * 7)]


def test_train_flops_formula():
    assert flops.train_flops_per_image(10.0, 1.0) == pytest.approx(6 * (10 + 3 * 1))
    # d_steps = 2: G forward twice and backward once; D forward+backward 5 times; per 2B images.
    assert flops.train_flops_per_image(10.0, 1.0, d_steps=2) == pytest.approx(2 * (4 * 10 + 15 * 1) / 2)


def test_the_command_prints_every_model(capsys):
    assert flops.main() == 0
    out = capsys.readouterr().out
    assert "dcgan-large:" in out and "dcgan-small:" in out and "GFLOP per training image" in out
