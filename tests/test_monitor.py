"""FID during training (monitor.py) and its hook in the training loop."""

import numpy as np
import pytest
import torch
from torch import nn

from mnistgan.config import TrainConfig
from mnistgan.evaluation.classifier import Classifier
from mnistgan.evaluation.monitor import FidMonitor
from mnistgan.gan import checkpoint as ckpts
from mnistgan.gan import loop as core
from mnistgan.gan.sample import recalibrate_batchnorm
from mnistgan.gan.step import build_state
from mnistgan.tensors import to_unit_range

N = 60


def digits(n: int, seed: int) -> np.ndarray:
    """uint8 (n, 28, 28): blurry random strokes, enough structure for distinct features."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 28, 28), np.float32)
    for i in range(n):
        r, c = rng.integers(4, 24, size=2)
        x[i, r - 3 : r + 3, 4:24] = 1.0
        x[i, 4:24, c - 2 : c + 2] = rng.uniform(0.3, 1.0)
    return (x * 255).astype(np.uint8)


def classifier() -> Classifier:
    torch.manual_seed(0)
    return Classifier().eval()


class Replay(nn.Module):
    """A 'generator' that returns the given images whatever the noise: (B, z) -> (B, 1, 28, 28)."""

    def __init__(self, images_u8: np.ndarray):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))  # generate() finds the device through a parameter
        self.images = to_unit_range(torch.from_numpy(images_u8))  # (n, 1, 28, 28) in [-1, 1]
        self.calls = 0

    def forward(self, z, y=None):
        start = self.calls
        self.calls += z.shape[0]
        return self.images[start : start + z.shape[0]] * self.scale


def test_real_images_score_the_reference_and_noise_scores_far_worse():
    test, reference = digits(200, 1), digits(N, 2)
    monitor = FidMonitor(classifier(), test, reference, N, z_dim=8, conditional=False, seed=0)
    assert monitor(Replay(reference)) == pytest.approx(monitor.reference, rel=1e-9)
    noise = np.random.default_rng(3).integers(0, 256, (N, 28, 28), dtype=np.uint8)
    assert monitor(Replay(noise)) > 5 * monitor.reference


def test_noise_is_fixed_and_labels_cycle():
    a = FidMonitor(classifier(), digits(50, 1), digits(N, 2), N, z_dim=8, conditional=True, seed=5)
    b = FidMonitor(classifier(), digits(50, 1), digits(N, 2), N, z_dim=8, conditional=True, seed=5)
    assert torch.equal(a.z, b.z) and a.z.shape == (N, 8)
    assert a.y.tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_bad_sizes_fail_clearly():
    with pytest.raises(ValueError, match="n must be at least 10"):
        FidMonitor(classifier(), digits(50, 1), digits(N, 2), 5, z_dim=8, conditional=False, seed=0)
    with pytest.raises(ValueError, match="60 reference images, need n=100"):
        FidMonitor(classifier(), digits(50, 1), digits(N, 2), 100, z_dim=8, conditional=False, seed=0)


def test_training_loop_scores_on_schedule_without_changing_the_weights():
    cfg = TrainConfig(
        batch_size=16,
        steps=6,
        log_every=3,
        image_every=6,
        checkpoint_every=6,
        train_images=64,
        fid_every=4,
        fid_samples=N,
    )
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 28, 28, generator=g) * 2 - 1, torch.randint(0, 10, (64,), generator=g)
    monitor = FidMonitor(classifier(), digits(100, 1), digits(N, 2), N, cfg.z_dim, cfg.conditional, seed=3)
    seen = []
    scored = build_state(cfg, 0, torch.device("cpu"))
    core.train(scored, x, y, fid=monitor, on_fid=lambda s, v: seen.append((s, v)), progress=False)
    assert [s for s, _ in seen] == [4, 6]  # every fid_every steps and at the end
    assert [{"step": r["step"], "fid": r["fid"]} for r in scored.fid_history] == [
        {"step": s, "fid": v} for s, v in seen
    ]
    seconds = [r["seconds"] for r in scored.fid_history]  # training seconds at each check, for the curves
    assert 0 < seconds[0] <= seconds[1]
    assert all(np.isfinite(v) and v > 0 for _, v in seen)
    assert ckpts.checkpoint(scored)["fid_history"] == scored.fid_history  # a resumed run keeps the curve
    plain = build_state(cfg, 0, torch.device("cpu"))
    core.train(plain, x, y, progress=False)
    for a, b in [(scored.g, plain.g), (scored.d, plain.d)]:
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_recalibrating_monitor_scores_a_copy_with_fresh_batchnorm_statistics():
    import copy

    from mnistgan.gan.models import build_gan

    torch.manual_seed(0)
    g, _ = build_gan("dcgan-small", 8, "none", True, g_width=8)
    bn = next(m for m in g.modules() if isinstance(m, nn.BatchNorm1d))
    bn.running_mean.fill_(5.0)  # an EMA copy carries the live generator's statistics, not its own
    fixed = copy.deepcopy(g)
    recalibrate_batchnorm(fixed, 8, True, seed=4, device=torch.device("cpu"), n_batches=8)
    args = (classifier(), digits(100, 1), digits(N, 2), N, 8, True)
    recal = FidMonitor(*args, seed=3, recalibrate=True)
    plain = FidMonitor(*args, seed=3)
    assert recal(g) == pytest.approx(plain(fixed), rel=1e-9)  # the monitor's copy got seed + 1 = 4
    assert recal(g) != pytest.approx(plain(g), rel=1e-3)  # the stale statistics do change the score
    assert torch.all(bn.running_mean == 5.0)  # the monitored generator itself is untouched
