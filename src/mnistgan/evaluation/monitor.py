"""FID during training: a small, fixed sample of the current generator scored against the MNIST test set
on the classifier's features, so a run shows when it stopped improving, or collapsed, without waiting
for the evaluate stage. Pure logic: the caller passes the classifier and the arrays.

The score is fid_inf (metrics.fid_inf: FID extrapolated to infinitely many samples), not the FID of the
few thousand images themselves, which is biased upwards by their number: so a number during training and
the evaluate stage's fid_inf of 10,000 samples are on one scale. The monitor also scores as many real
training images, drawn at random, the same way: that `reference` is the real-data floor the curve is plotted
against, about 0 (a random draw: a slice of MNIST's file is not typical; its last 2,000 training images have a
fid_inf of 28).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from mnistgan.errors import InputError
from mnistgan.evaluation.classifier import Classifier, features_and_probs
from mnistgan.evaluation.metrics import features_to_statistics, statistics_to_fid_inf
from mnistgan.gan.sample import generate, recalibrate_batchnorm, sample_noise

if TYPE_CHECKING:
    from mnistgan.config import TrainConfig
    from mnistgan.data import MNIST

MIN_SAMPLES = 10


class FidMonitor:
    """Callable: generator -> fid_inf of its `n` samples of fixed noise against the real test set."""

    def __init__(
        self,
        classifier: Classifier,
        x_test: np.ndarray,
        x_reference: np.ndarray,
        n: int,
        z_dim: int,
        conditional: bool,
        seed: int,
        batch_size: int = 500,
        recalibrate: bool = False,
    ):
        """x_test: uint8 (M, 28, 28), the target set; x_reference: uint8 (>= n, 28, 28) real images that
        are not in x_test (training images), n of which give the real-data value at this sample size.
        recalibrate: score a copy of the generator with its BatchNorm statistics recomputed, as the saved
        EMA generator is (loop.finalize_sampler); the EMA copy's own statistics are the live G's."""
        if n < MIN_SAMPLES:
            raise ValueError(f"FID monitor: n must be at least {MIN_SAMPLES}, got {n}")
        if len(x_reference) < n:
            raise ValueError(f"FID monitor: {len(x_reference)} reference images, need n={n}")
        self.classifier = classifier.cpu().eval()
        self.batch_size = batch_size
        test_feats, _ = features_and_probs(self.classifier, x_test, batch_size)  # (M, 128)
        self.mu, self.sigma = features_to_statistics(test_feats)
        self.fid_seed = seed  # the subsets of fid_inf's line: the same at every check
        real_feats = self._features(x_reference[:n])  # (n, 128)
        self.reference = self._fid(real_feats)  # fid_inf of n real images: the curve's floor (about 0)
        # Fixed noise (its own generator, so the training noise stream is untouched): the curve moves
        # only because the generator does. Labels cycle through the classes for conditional models.
        self.z, self.y = sample_noise(n, z_dim, conditional, seed)  # (n, z_dim), (n,) or None
        self.z_dim, self.conditional, self.seed, self.recalibrate = z_dim, conditional, seed, recalibrate

    @classmethod
    def for_config(cls, classifier: Classifier, mnist: MNIST, cfg: TrainConfig, n: int, seed: int) -> FidMonitor:
        """The monitor of a training run: `n` samples of the run's noise shape (the sampling generator with
        recomputed BatchNorm statistics when EMA is on) against the test set; `n` training images drawn at
        random (from the seed) give the floor."""
        if n > len(mnist.x_train):
            raise InputError(f"train.fid_samples: {n} is more than the {len(mnist.x_train)} training images")
        drawn = np.sort(np.random.default_rng(seed + 3).choice(len(mnist.x_train), n, replace=False))
        return cls(
            classifier,
            mnist.x_test,
            mnist.x_train[drawn],
            n,
            cfg.z_dim,
            cfg.conditional,
            seed=seed + 3,
            recalibrate=cfg.ema > 0,
        )

    def _features(self, images_u8: np.ndarray) -> np.ndarray:
        return features_and_probs(self.classifier, images_u8, self.batch_size)[0]  # (n, 128)

    def _fid(self, feats: np.ndarray) -> float:
        return statistics_to_fid_inf(feats, (self.mu, self.sigma), seed=self.fid_seed)

    def _images(self, g: nn.Module) -> np.ndarray:
        if self.recalibrate:
            g = copy.deepcopy(g)
            device = next(g.parameters()).device
            recalibrate_batchnorm(g, self.z_dim, self.conditional, self.seed + 1, device, n_batches=8)
        return generate(g, self.z, self.y).numpy()  # (n, 28, 28) uint8

    def __call__(self, g: nn.Module) -> float:
        return self._fid(self._features(self._images(g)))
