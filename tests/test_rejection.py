"""Discriminator rejection sampling (gan/rejection.py): the acceptance rule, class shares, determinism and
the discriminator read back from the final checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mnistgan.config import SampleConfig, TrainConfig, to_dict
from mnistgan.errors import InputError
from mnistgan.gan import rejection
from mnistgan.gan.models import build_gan
from mnistgan.gan.rejection import _f_score, discriminator_from_checkpoint, draw_samples, rejection_sample
from mnistgan.gan.sample import generator_file, sample_images

Z = 8


class LabelGenerator(nn.Module):
    """Image brightness encodes the label (label/10 - 0.9 + 0.03 * tanh(z0)), so a test can read both back."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))  # a parameter, so the device can be read off the module

    def forward(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        level = (y.float() / 10 - 0.9 if y is not None else torch.zeros(len(z))) + 0.03 * torch.tanh(z[:, 0])
        return level[:, None, None, None].expand(-1, 1, 28, 28) + self.w


class BrightnessJudge(nn.Module):
    """Prefers brighter images: logit = 40 * mean pixel."""

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return 40 * x.mean(dim=(1, 2, 3))


def test_f_with_gamma_zero_is_the_density_ratio_exactly():
    # sigmoid(F) = exp(d - M) (up to eps): the sampler keeps a sample with probability p_data / (M p_G)
    logits, max_logit = torch.tensor([-3.0, -1.0, -0.25, 0.0, 2.0]), torch.tensor(0.0)
    p = torch.sigmoid(_f_score(logits, max_logit))
    assert torch.allclose(p[:3], torch.exp(logits[:3]), atol=1e-5)
    assert p[3] > 0.999 and p[4] > 0.999  # the maximum, and a logit above it counts as the maximum


def test_keeps_every_label_in_its_slot_and_favours_what_d_prefers():
    g, d = LabelGenerator(), BrightnessJudge()
    images, stats = rejection_sample(g, d, 200, Z, True, seed=3, percentile=80)
    plain = sample_images(g, 200, Z, True, 3)
    # slot i is label i % 10 in both: the label sets the brightness to within 0.03
    level = images.reshape(200, -1).mean(1) / 127.5 - 1
    assert np.allclose(np.round((level + 0.9) * 10) % 10, np.arange(200) % 10)
    # within each label the kept samples are brighter (D's preference) than the plain draw's
    assert (images.reshape(200, -1).mean(1) - plain.reshape(200, -1).mean(1)).mean() > 0.5
    assert stats.accepted == 200 and stats.forced == 0 and stats.burn_in == 200
    assert stats.proposals > 200 and 0 < stats.acceptance < 1  # some proposals were rejected
    again, _ = rejection_sample(g, d, 200, Z, True, seed=3, percentile=80)
    other, _ = rejection_sample(g, d, 200, Z, True, seed=4, percentile=80)
    assert np.array_equal(images, again) and not np.array_equal(images, other)


def test_a_stricter_percentile_rejects_more():
    g, d = LabelGenerator(), BrightnessJudge()
    loose = rejection_sample(g, d, 300, Z, False, seed=0, percentile=10)[1]
    strict = rejection_sample(g, d, 300, Z, False, seed=0, percentile=90)[1]
    assert strict.acceptance < loose.acceptance


def test_slots_left_after_the_last_round_are_counted(monkeypatch):
    monkeypatch.setattr(rejection, "MAX_ROUNDS", 1)
    images, stats = rejection_sample(LabelGenerator(), BrightnessJudge(), 100, Z, True, seed=0, percentile=95)
    assert stats.proposals == 100 and stats.forced > 0 and stats.accepted + stats.forced == 100
    assert images.shape == (100, 28, 28)


def test_percentile_zero_is_the_plain_sample_set_and_bad_percentiles_fail():
    g, train_cfg = LabelGenerator(), TrainConfig(z_dim=Z, conditional=True)
    plain, stats = draw_samples(g, None, SampleConfig(n=50, batch_size=20), train_cfg, seed=7)
    assert stats is None and np.array_equal(plain, sample_images(g, 50, Z, True, 7, 20))
    with pytest.raises(ValueError, match="needs the discriminator"):
        draw_samples(g, None, SampleConfig(n=50, drs_percentile=50), train_cfg, seed=7)
    with pytest.raises(ValueError, match="between 0 and 100"):
        rejection_sample(g, BrightnessJudge(), 10, Z, True, seed=0, percentile=100)


def test_the_discriminator_comes_back_from_the_final_checkpoint_only():
    cfg = TrainConfig(g_width=8, d_width=8, z_dim=Z)
    g, d = build_gan(cfg.model, cfg.z_dim, cfg.d_norm, cfg.conditional, cfg.g_width, cfg.d_width)
    gen = generator_file(cfg, 0, 120, True, g)
    ckpt = {"train_config": to_dict(cfg), "step": 120, "d": {f"module.{k}": v for k, v in d.state_dict().items()}}
    back = discriminator_from_checkpoint(ckpt, gen, "models/checkpoint.pt")
    x = torch.randn(4, 1, 28, 28)
    y = torch.arange(4)
    assert torch.equal(back(x, y), d.eval()(x, y)) and not back.training
    with pytest.raises(InputError, match=r"models/checkpoint.pt \(step 100\) is not the final checkpoint"):
        discriminator_from_checkpoint(ckpt | {"step": 100}, gen, "models/checkpoint.pt")
