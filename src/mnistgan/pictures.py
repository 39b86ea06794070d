"""Pictures of digits: grids, per-class grids, samples beside their nearest training images (numpy only)."""

from __future__ import annotations

import numpy as np

from mnistgan.data import N_CLASSES


def image_grid(images: np.ndarray, nrow: int = 10, pad: int = 2, background: int = 255) -> np.ndarray:
    """uint8 (N, 28, 28) -> one uint8 (H, W) picture, `nrow` images per row, separated by `pad` pixels.

    The separators are light so that dark digit borders stay visible.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W), got shape {images.shape}")
    n, h, w = images.shape
    rows = -(-n // nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad), background, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = img
    return grid


def by_class_grid(images: np.ndarray, labels: np.ndarray, per_class: int = 10) -> np.ndarray:
    """Row r shows `per_class` images labelled r (blank where a class has too few)."""
    rows = []
    for c in range(N_CLASSES):
        picked = images[labels == c][:per_class]
        blank = np.zeros((per_class - len(picked), *images.shape[1:]), np.uint8)
        rows.append(np.concatenate([picked, blank]))
    return image_grid(np.concatenate(rows), nrow=per_class)


def nearest_training_grid(
    samples: np.ndarray, sample_feats: np.ndarray, train_images: np.ndarray, train_feats: np.ndarray, n: int = 10
) -> np.ndarray:
    """Memorisation at a glance: n samples (top row) above their nearest training images (bottom row),
    nearest in the classifier's feature space. uint8 (N, 28, 28) images, (N, F) features."""
    q = sample_feats[:n]
    d2 = (q**2).sum(1)[:, None] - 2 * q @ train_feats.T + (train_feats**2).sum(1)[None, :]  # (n, N_train)
    nearest = d2.argmin(1)
    return image_grid(np.concatenate([samples[:n], train_images[nearest]]), nrow=len(q))
