"""What good, collapsed and noisy digits score: the metric suite on corrupted real images.

    python -m mnistgan.calibrate [--classifier models/classifier.pt] [--data data/mnist] [--n 10000]

Takes n real training images (the same held-out slice the evaluate stage uses as its reference), applies
each corruption, scores it with score.score_images against the MNIST test set, and prints a markdown
table. README's "How to read the scores" comes from this.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np

COLUMNS = [("score", "inception_score", "{:.2f}"), ("FID", "fid", "{:.2f}"), ("KID", "kid", "{:.3f}"),
           ("precision", "precision", "{:.3f}"), ("recall", "recall", "{:.3f}"), ("density", "density", "{:.3f}"),
           ("coverage", "coverage", "{:.3f}"), ("classes", "classes_covered", "{:.0f}")]  # fmt: skip


def blur(sigma: float) -> Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]:
    def f(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from scipy.ndimage import gaussian_filter

        return np.rint(gaussian_filter(x.astype(np.float64), sigma=(0, sigma, sigma))).astype(np.uint8)

    return f


def noise(std: float) -> Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]:
    """Additive Gaussian pixel noise, std in units of the full 0..255 range."""

    def f(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.clip(np.rint(x + rng.normal(0, std * 255, x.shape)), 0, 255).astype(np.uint8)

    return f


def keep_classes(k: int) -> Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]:
    """Only digits 0..k-1, resampled to the same count: a generator that dropped 10-k classes."""

    def f(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        idx = np.flatnonzero(y < k)
        return x[rng.choice(idx, size=len(x), replace=True)]

    return f


def pure_noise(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, x.shape, dtype=np.uint8)


CORRUPTIONS: list[tuple[str, Callable]] = [
    ("real images (no corruption)", lambda x, y, rng: x),
    ("Gaussian blur sigma 0.5", blur(0.5)),
    ("Gaussian blur sigma 1", blur(1.0)),
    ("Gaussian blur sigma 2", blur(2.0)),
    ("pixel noise std 0.1", noise(0.1)),
    ("pixel noise std 0.3", noise(0.3)),
    ("5 classes only", keep_classes(5)),
    ("2 classes only", keep_classes(2)),
    ("1 class only (collapsed)", keep_classes(1)),
    ("uniform noise images", pure_noise),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnistgan.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", default="models/classifier.pt")
    parser.add_argument("--data", default="data/mnist")
    parser.add_argument("--n", type=int, default=10000)
    args = parser.parse_args(argv)
    from mnistgan.score import load_classifier, load_data, real_features, score_images

    classifier, mnist = load_classifier(args.classifier), load_data(args.data)
    real = real_features(classifier, mnist, progress=True)
    x, y = mnist.x_train[-args.n :], mnist.y_train[-args.n :]
    print("| samples | " + " | ".join(t for t, _, _ in COLUMNS) + " |")
    print("| --- | " + " | ".join("---" for _ in COLUMNS) + " |")
    for name, corrupt in CORRUPTIONS:
        images = corrupt(x, y, np.random.default_rng(0))
        s = score_images(images, classifier, mnist, real=real)
        print(f"| {name} | " + " | ".join(fmt.format(s[key]) for _, key, fmt in COLUMNS) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
