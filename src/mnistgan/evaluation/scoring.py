"""The scoring core shared by the evaluate stage and `mnistgan score`: images in, every score out, each
beside the same score of as many real images, in every feature space asked for.

Pure logic: the caller loads the networks and the MNIST arrays and passes the real images' features
(`real_features`, computed once per network; the CLI caches them on disk).

Feature spaces are "<network>/<mode>": network `classifier` (the pipeline's yardstick, whose softmax
also gives the Inception-style score, class coverage and precision/recall) or `extractor` (a second
network of another architecture and seed); mode `penultimate` or `blocks` (mnistgan.evaluation.classifier). The full
metric suite is computed on classifier/penultimate; FID and KID in every space, each as a multiple of its
own real-data value at the same N, and the spread of those multiples says how much the verdict depends
on the network that looks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mnistgan.config import FEATURE_SPACES
from mnistgan.errors import InputError
from mnistgan.evaluation import metrics, suite

if TYPE_CHECKING:  # torch is imported only when features are computed
    from mnistgan.data import MNIST
    from mnistgan.evaluation.classifier import Classifier

PRIMARY = "classifier/penultimate"  # the yardstick of the headline scores


@dataclass
class RealFeatures:
    """One network's outputs for every training and test image, in blocks mode (the penultimate features
    are its last columns), and memorisation thresholds (penultimate) by pool size."""

    train_feats: np.ndarray  # (n_train, D) float64
    train_probs: np.ndarray  # (n_train, 10)
    test_feats: np.ndarray  # (n_test, D)
    test_probs: np.ndarray  # (n_test, 10)
    block_widths: tuple[int, ...]  # columns of each conv block's means, then of the penultimate features
    thresholds: dict[int, float] = field(default_factory=dict)  # pool size -> threshold
    _scale: np.ndarray | None = field(default=None, repr=False)

    @property
    def width(self) -> int:
        return self.block_widths[-1]

    def view(self, feats: np.ndarray, mode: str) -> np.ndarray:
        """Blocks-mode features (N, D) -> the features of `mode`.

        penultimate: the last columns. blocks: every block scaled so its total variance over the real
        training images is 1, so each conv block weighs as much as the penultimate layer (unscaled, the
        small spatial means of the conv blocks would vanish next to the penultimate features, and FID in
        this space would be the penultimate FID again).
        """
        if mode == "penultimate":
            return feats[:, -self.width :]
        if self._scale is None:
            var = self.train_feats.var(axis=0)
            edges = np.cumsum((0, *self.block_widths))
            self._scale = np.concatenate(
                [
                    np.full(b - a, 1 / np.sqrt(max(var[a:b].sum(), 1e-12)))
                    for a, b in zip(edges[:-1], edges[1:], strict=True)
                ]
            )
        return feats * self._scale

    def train(self, mode: str) -> np.ndarray:
        return self.view(self.train_feats, mode)

    def test(self, mode: str) -> np.ndarray:
        return self.view(self.test_feats, mode)

    def threshold(self, pool_size: int) -> float:
        """metrics.features_to_memorisation_threshold against the first `pool_size` training images."""
        if pool_size not in self.thresholds:
            pool = self.train("penultimate")[:pool_size]
            self.thresholds[pool_size] = metrics.features_to_memorisation_threshold(self.test("penultimate"), pool)
        return self.thresholds[pool_size]


def network_features(
    model: Classifier, images_u8: np.ndarray, *, batch_size: int = 500, progress: bool = False, desc: str = "features"
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 28, 28) -> blocks-mode features (N, D) and softmax (N, 10) of `model`."""
    from mnistgan.evaluation.classifier import features_and_probs  # lazy: torch only to compute features

    return features_and_probs(model, images_u8, batch_size, progress, desc=desc, mode="blocks")


def real_features(
    model: Classifier, mnist: MNIST, *, batch_size: int = 500, progress: bool = False, name: str = "classifier"
) -> RealFeatures:
    """`model`'s features and probabilities of every training and test image."""
    train = network_features(model, mnist.x_train, batch_size=batch_size, progress=progress, desc=f"{name}: train")
    test = network_features(model, mnist.x_test, batch_size=batch_size, progress=progress, desc=f"{name}: test")
    from mnistgan.evaluation.classifier import block_widths  # lazy: torch

    return RealFeatures(*train, *test, block_widths=block_widths(model))


def identity(model: Classifier, network: str, mode: str) -> dict[str, str]:
    """What a score's features came from: the network's role, architecture and weights (sha256), and the
    feature mode with the file format version, so scores of different feature spaces are never mixed."""
    from mnistgan.evaluation.classifier import FORMAT, arch_of, weights_sha256  # lazy: torch

    arch = arch_of(model)
    return {
        "space": f"{network}/{mode}",
        "arch": arch,
        "weights_sha256": weights_sha256(model)[:16],
        "version": f"{FORMAT}/{arch}/{mode}",
    }


def min_samples(splits: int, k: int) -> int:
    return max(splits, k + 1, 2)


def check_images(images: np.ndarray, splits: int, k: int) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise InputError(f"images: shape {images.shape} {images.dtype}; expected (N, 28, 28) uint8")
    need = min_samples(splits, k)
    if len(images) < need:
        raise InputError(f"images: {len(images)} samples; at least {need} needed ({splits} IS splits, k={k})")
    return images


def check_n_reference(n_reference: int, n_train: int, splits: int, k: int) -> None:
    need = min_samples(splits, k)
    if not need <= n_reference < n_train:
        raise InputError(f"n_reference {n_reference}: must be at least {need} and below the {n_train} training images")


def score_features(
    feats: np.ndarray,
    probs: np.ndarray,
    real: RealFeatures,
    *,
    splits: int = 10,
    k: int = 3,
    seed: int = 0,
    intervals: bool = True,
) -> dict[str, Any]:
    """Every metric (suite.evaluate_samples, on penultimate features) of samples whose blocks-mode
    features and probabilities are given, against the test set; all training images are the pool. With
    `intervals`, the headline scores' 95% intervals (`<score>_ci95`) too."""
    pool = real.train("penultimate")
    return suite.evaluate_samples(
        real.view(feats, "penultimate"),
        probs,
        real.test("penultimate"),
        pool,
        splits=splits,
        k=k,
        seed=seed,
        memorisation_threshold=real.threshold(len(pool)),
        intervals=intervals,
    )


def reference_scores(
    real: RealFeatures, n_reference: int, *, splits: int = 10, k: int = 3, seed: int = 0
) -> dict[str, float]:
    """The same metrics for the last `n_reference` real training images, with the other training images
    as their memorisation pool: what a perfect generator would score at that sample size."""
    n_train = len(real.train_feats)
    check_n_reference(n_reference, n_train, splits, k)
    split = n_train - n_reference
    train, test = real.train("penultimate"), real.test("penultimate")
    return suite.evaluate_samples(
        train[split:],
        real.train_probs[split:],
        test,
        train[:split],
        splits=splits,
        k=k,
        seed=seed,
        memorisation_threshold=real.threshold(split),
    )


def space_scores(
    feats: np.ndarray, real: RealFeatures, mode: str, n_reference: int, seed: int = 0, kid_subsets: int = 100
) -> dict[str, float]:
    """FID, fid_inf and KID of samples (blocks-mode features) in one feature space, and of the last
    `n_reference` real training images: a multiple is the distance in units of its real-data value (fid at
    the same N; fid_inf: both extrapolated to infinitely many samples, so the multiple does not depend on N)."""
    test = real.test(mode)
    gen, ref = real.view(feats, mode), real.train(mode)[-n_reference:]
    fid, fid_real = metrics.fid(gen, test), metrics.fid(ref, test)
    fid_inf, fid_inf_real = (metrics.fid_inf(x, test, seed=seed) for x in (gen, ref))
    kid, kid_real = (metrics.features_to_kid(x, test, subsets=kid_subsets, seed=seed)[0] for x in (gen, ref))
    return {
        "fid": fid,
        "fid_real": fid_real,
        "fid_multiple": fid / fid_real,
        "fid_inf": fid_inf,
        "fid_inf_real": fid_inf_real,
        "fid_inf_multiple": fid_inf / fid_inf_real,
        "kid": kid,
        "kid_real": kid_real,
    }


def agreement(spaces: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The FID multiples of the feature spaces: their mean, range and spread (max - min). A difference
    between two runs smaller than the spread is within what the choice of network alone moves."""
    multiples = [s["fid_multiple"] for s in spaces.values()]
    return {
        "fid_multiple_mean": float(np.mean(multiples)),
        "fid_multiple_min": float(min(multiples)),
        "fid_multiple_max": float(max(multiples)),
        "fid_multiple_spread": float(max(multiples) - min(multiples)),
        "n_spaces": len(multiples),
    }


def reference_size(n_samples: int, n_reference: int, n_train: int, splits: int, k: int) -> int:
    """n_reference, or (0) as many real images as samples, capped so a memorisation pool remains."""
    n = n_reference or min(n_samples, n_train - min_samples(splits, k))
    check_n_reference(n, n_train, splits, k)
    return n


def score_all(
    images_u8: np.ndarray,
    models: dict[str, Classifier],
    reals: dict[str, RealFeatures],
    spaces: tuple[str, ...] = (PRIMARY,),
    *,
    n_reference: int = 0,
    splits: int = 10,
    k: int = 3,
    seed: int = 0,
    batch_size: int = 500,
    progress: bool = False,
    kid_subsets: int = 100,
    intervals: bool = True,
) -> dict[str, Any]:
    """Every score of uint8 (N, 28, 28) images, beside the real-data reference at the same N; with
    `intervals`, the generated headline scores' 95% intervals (`<score>_ci95`).

    models/reals: by network name ("classifier" required); spaces: the feature spaces for FID/KID and
    their agreement. Returns {"generated", "real_reference", "n_reference", "feature_spaces", "agreement",
    "headline_features"}; "headline_features" is the identity of the network whose features give the headline
    scores (the classifier's penultimate layer).
    """
    images = check_images(images_u8, splits, k)
    missing = sorted({s.split("/")[0] for s in (PRIMARY, *spaces)} - set(models))
    if missing or any(s not in FEATURE_SPACES for s in spaces):
        known = ", ".join(FEATURE_SPACES)
        raise InputError(f"feature spaces {list(spaces)}: need networks {missing}; known spaces: {known}")
    n_ref = reference_size(len(images), n_reference, len(reals["classifier"].train_feats), splits, k)
    needed = {"classifier"} | {space.split("/")[0] for space in spaces}  # networks nothing asks for stay idle
    outputs = {
        name: network_features(models[name], images, batch_size=batch_size, progress=progress, desc=f"{name}: samples")
        for name in sorted(needed)
    }
    feats, probs = outputs["classifier"]
    per_space = {}
    for space in spaces:
        network, mode = space.split("/")
        per_space[space] = space_scores(outputs[network][0], reals[network], mode, n_ref, seed, kid_subsets) | {
            "identity": identity(models[network], network, mode)
        }
    return {
        "generated": score_features(
            feats, probs, reals["classifier"], splits=splits, k=k, seed=seed, intervals=intervals
        ),
        "real_reference": reference_scores(reals["classifier"], n_ref, splits=splits, k=k, seed=seed),
        "n_reference": n_ref,
        "feature_spaces": per_space,
        "agreement": agreement(per_space) if per_space else {},
        "headline_features": identity(models["classifier"], "classifier", "penultimate"),
    }
