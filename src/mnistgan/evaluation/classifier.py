"""Train the yardstick networks and turn images into their features and class probabilities.

Two architectures: `lenet`, the pipeline's classifier (its softmax gives the Inception-style score, the
class coverage and precision/recall; its features FID), and `deep`, a deeper network without dropout
trained with another seed, a second opinion on every feature distance (mnistgan.extractors). Each gives
features in two modes: `penultimate` (the layer before the logits) and `blocks` (the spatial mean of every
conv block's activations concatenated with the penultimate features: block means change with texture,
such as pixel noise, that the penultimate layer of a classifier learns to ignore).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mnistgan.config import ClassifierConfig
from mnistgan.data import N_CLASSES
from mnistgan.io import load_torch
from mnistgan.tensors import epoch_permutation, to_unit_range

FORMAT = "mnistgan-classifier-1"
FEATURE_MODES = ("penultimate", "blocks")


class Classifier(nn.Module):
    """The yardstick CNN: its softmax gives the Inception-style score, its penultimate ReLU features FID.

    (B, 1, 28, 28) in [-1, 1] -> conv 32 3x3, BN, ReLU, maxpool (B, 32, 14, 14) -> conv 64 3x3, BN, ReLU,
    maxpool (B, 64, 7, 7) -> dense 128, ReLU (the features) -> dense 10 (logits). About 4.2 M multiply-adds
    per image, so it trains to >99% test accuracy in about a minute on two CPU cores.
    """

    FEATURES = 128

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(True),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(64 * 49, self.FEATURES),
            nn.ReLU(True),
        )
        self.logits = nn.Sequential(nn.Dropout(0.25), nn.Linear(self.FEATURES, N_CLASSES))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.body(x))  # (B, 10)


class DeepClassifier(Classifier):
    """A second opinion: six 3x3 convs with BatchNorm and no dropout, 256 features.

    (B, 1, 28, 28) -> [conv w, conv w] at 28x28, maxpool -> [conv 2w, conv 2w] at 14x14, maxpool ->
    [conv 4w, conv 4w] at 7x7 -> dense 256, ReLU (the features) -> dense 10. With w = 16 about 8 M
    multiply-adds per image, twice the classifier's.
    """

    FEATURES = 256

    def __init__(self, width: int = 16):
        nn.Module.__init__(self)
        layers: list[nn.Module] = []
        c_in = 1
        for stage, c in enumerate((width, 2 * width, 4 * width)):
            for _ in range(2):
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(True)]
                c_in = c
            if stage < 2:
                layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * 49, self.FEATURES), nn.ReLU(True))
        self.logits = nn.Linear(self.FEATURES, N_CLASSES)


ARCHS: dict[str, type[Classifier]] = {"lenet": Classifier, "deep": DeepClassifier}


def block_widths(model: Classifier) -> tuple[int, ...]:
    """The column widths of block_features: each conv block's channels, then the penultimate features."""
    return (*(m.num_features for m in model.body if isinstance(m, nn.BatchNorm2d)), model.FEATURES)


def block_features(model: Classifier, x: torch.Tensor) -> torch.Tensor:
    """(B, 1, 28, 28) -> (B, sum of conv widths + penultimate width): the spatial mean of every conv
    block's output (after its ReLU) and the penultimate features, concatenated."""
    parts = []
    for layer in model.body:
        x = layer(x)
        if isinstance(layer, nn.ReLU) and x.dim() == 4:
            parts.append(x.mean(dim=(2, 3)))  # (B, C)
    return torch.cat([*parts, x], dim=1)


@dataclass
class ClassifierResult:
    model: Classifier
    test_accuracy: float
    train_images: int
    epochs: int
    seconds: float


def train_classifier(
    cfg: ClassifierConfig,
    seed: int,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
) -> ClassifierResult:
    """Adam with a one-cycle learning rate over `epochs`; returns the model in eval mode.

    x_*: uint8 (N, 28, 28); y_*: uint8 (N,). Augmentation: random shifts of up to 2 pixels, which
    makes the features less sensitive to the small misplacements GAN samples have.
    """
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    n = cfg.train_images or len(x_train)
    x = to_unit_range(torch.from_numpy(x_train[:n]))  # (n, 1, 28, 28)
    y = torch.from_numpy(y_train[:n]).long()
    model = ARCHS[cfg.arch]()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    per_epoch = n // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr * 3, total_steps=cfg.epochs * per_epoch)
    shift_rng = torch.Generator().manual_seed(seed + 7)
    for epoch in range(cfg.epochs):
        model.train()
        perm = epoch_permutation(seed, epoch, n)
        total, correct, loss_sum = 0, 0, 0.0
        bar = tqdm(
            range(per_epoch),
            desc=f"classifier epoch {epoch + 1}/{cfg.epochs}",
            disable=not progress,
            mininterval=1.0,
            dynamic_ncols=True,
        )
        for i in bar:
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            xb = random_shift(x[idx], 2, shift_rng)
            logits = model(xb)
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
            total += len(idx)
        acc = accuracy(model, x_test, y_test)
        if on_epoch:
            on_epoch(
                epoch + 1,
                {"train_loss": loss_sum / total, "train_accuracy": correct / total, "test_accuracy": acc},
            )
    model.eval()
    return ClassifierResult(model, accuracy(model, x_test, y_test), n, cfg.epochs, time.perf_counter() - t0)


def random_shift(x: torch.Tensor, max_shift: int, rng: torch.Generator) -> torch.Tensor:
    """Shift a whole batch (B, 1, 28, 28) by one random (dy, dx) in [-max_shift, max_shift], zero-padded
    with the background value -1."""
    dy, dx = (torch.randint(-max_shift, max_shift + 1, (2,), generator=rng)).tolist()
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    h, w = x.shape[-2:]
    return padded[..., max_shift + dy : max_shift + dy + h, max_shift + dx : max_shift + dx + w]


@torch.no_grad()
def accuracy(model: Classifier, x_u8: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> float:
    _, probs = features_and_probs(model, x_u8, batch_size)
    return float((probs.argmax(1) == y).mean())


@torch.no_grad()
def features_and_probs(
    model: Classifier,
    x_u8: np.ndarray,
    batch_size: int = 500,
    progress: bool = False,
    desc: str = "features",
    mode: str = "penultimate",
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 28, 28) -> features float64 (N, D) and softmax float64 (N, 10).

    mode "penultimate": D = model.FEATURES; "blocks": block_features. Eval mode (no dropout, running BN
    stats), so the result is independent of batch size up to float32 rounding; the outputs are promoted
    to float64 for the statistics downstream.
    """
    if mode not in FEATURE_MODES:
        raise ValueError(f"feature mode {mode!r}; allowed: {', '.join(FEATURE_MODES)}")
    was_training = model.training
    model.eval()
    feats, probs = [], []
    for i in tqdm(range(0, len(x_u8), batch_size), desc=desc, disable=not progress, mininterval=1.0):
        xb = to_unit_range(torch.from_numpy(np.ascontiguousarray(x_u8[i : i + batch_size])))
        f = block_features(model, xb) if mode == "blocks" else model.features(xb)  # (b, D)
        h = f[:, -model.FEATURES :]  # the penultimate features are the last columns in both modes
        feats.append(f.double().numpy())
        probs.append(F.softmax(model.logits(h).double(), dim=1).numpy())
    model.train(was_training)
    return np.concatenate(feats), np.concatenate(probs)


def arch_of(model: Classifier) -> str:
    return next(name for name, cls in ARCHS.items() if type(model) is cls)


def classifier_file(model: Classifier, test_accuracy: float) -> dict[str, Any]:
    return {"format": FORMAT, "arch": arch_of(model), "state_dict": model.state_dict(), "test_accuracy": test_accuracy}


def check_classifier_file(obj: Any) -> str | None:
    """Why a loaded classifier file does not fit this code, or None."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        return f"not a classifier file of this version (format {FORMAT!r} expected)"
    arch = obj.get("arch", "lenet")  # files of older code hold the lenet classifier
    if arch not in ARCHS:
        return f"unknown classifier architecture {arch!r}; allowed: {', '.join(ARCHS)}"
    expected = ARCHS[arch]().state_dict()
    got = obj["state_dict"]
    if set(got) != set(expected) or any(tuple(got[k].shape) != tuple(v.shape) for k, v in expected.items()):
        return f"{arch} weights do not match the network in classifier.py (was the code changed?)"
    return None


def classifier_from_file(obj: dict[str, Any]) -> Classifier:
    model = ARCHS[obj.get("arch", "lenet")]()
    model.load_state_dict(obj["state_dict"])
    return model.eval()


def load_classifier(path: str | Path, made_by: str = "classifier") -> Classifier:
    """A classifier file (the `made_by` stage's output), checked against this code, in eval mode."""
    return classifier_from_file(load_torch(path, made_by=made_by, check=check_classifier_file))


def weights_sha256(model: nn.Module) -> str:
    """sha256 of a model's weights and buffers (names, shapes and bytes, in name order): its identity."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name} {tuple(t.shape)} {t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dim() else t.reshape(1).numpy().tobytes())
    return h.hexdigest()
