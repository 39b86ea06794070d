"""`mnistgan score PATH`: every metric of digits made by any program, beside the real-data reference.

PATH is an .npy/.npz array (uint8 0..255, float in [0, 1] or float in [-1, 1]; (N, 28, 28) or
(N, 1, 28, 28)) or a folder of 28x28 grayscale PNGs. The images go through the pipeline's classifier and
are scored against the MNIST test set (metrics.evaluate_samples); the last `n_reference` training images
are scored the same way as the reference (their memorisation pool: the other training images). One JSON
object goes to stdout. The pipeline's evaluate stage calls score_images and reference_scores directly.

The real images' features (70,000 classifier passes, about a minute on two CPU cores) and the reference
scores are cached on disk (--cache-dir, default ~/.cache/mnistgan), keyed by the classifier's weights, the
data bytes and the source of the code that computes them, so a second run only scores the new images.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnistgan import metrics
from mnistgan.io import InputError, atomic_path, write_json

if TYPE_CHECKING:  # torch is imported only when a classifier is needed
    from mnistgan.classifier import Classifier
    from mnistgan.data import MNIST

PROG = "mnistgan score"
EXIT_BAD_INPUT = 2
ARRAY_KEYS = ("x", "images", "samples")  # the array taken from an .npz holding several
FLOAT_TOLERANCE = 1e-3  # float pixels may overshoot their range by this much (rounding in a generator)


# --- reading images -----------------------------------------------------------------------------------


def images_to_uint8(array: np.ndarray, source: str = "array") -> tuple[np.ndarray, str]:
    """Any of the accepted pixel conventions -> uint8 (N, 28, 28), and the name of the convention found.

    uint8 (or another integer type) in 0..255 is kept. Float pixels are read as [0, 1] (x * 255, rounded)
    when none is below -FLOAT_TOLERANCE, else as [-1, 1] ((x + 1) * 127.5, rounded, as tensors.to_uint8
    does for the generator's tanh output): digits on a black background reach -1 in that convention,
    so the two cannot be confused on real samples.
    """
    a = np.asarray(array)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3 or a.shape[1:] != (28, 28):
        raise InputError(f"{source}: shape {a.shape}; expected (N, 28, 28) or (N, 1, 28, 28) images")
    if len(a) == 0:
        raise InputError(f"{source}: holds no images")
    if a.dtype == np.uint8:
        return a, "uint8 0..255"
    if np.issubdtype(a.dtype, np.integer) and not np.issubdtype(a.dtype, np.timedelta64):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise InputError(f"{source}: integer pixels in [{lo}, {hi}]; expected 0..255")
        return a.astype(np.uint8), "integer 0..255"
    if not np.issubdtype(a.dtype, np.floating):
        raise InputError(f"{source}: dtype {a.dtype}; expected uint8 or float pixels")
    finite = np.isfinite(a)
    if not finite.all():
        bad = int((~finite).reshape(len(a), -1).any(axis=1).sum())
        raise InputError(f"{source}: {bad} of {len(a)} images contain NaN or Inf pixels")
    x = a.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    tol = FLOAT_TOLERANCE
    if lo >= -tol and hi <= 1 + tol:
        return np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8), "float [0, 1]"
    if lo >= -1 - tol and hi <= 1 + tol:
        # In float32, exactly as tensors.to_uint8 converts the generator's output (same rounding at .5).
        x32 = np.clip(a.astype(np.float32), np.float32(-1), np.float32(1))
        return np.rint((x32 + np.float32(1)) * np.float32(127.5)).astype(np.uint8), "float [-1, 1]"
    raise InputError(
        f"{source}: float pixels in [{lo:.4g}, {hi:.4g}] fit none of the accepted ranges "
        "(uint8 0..255, float [0, 1], float [-1, 1])"
    )


def load_png_folder(folder: Path) -> np.ndarray:
    """Every *.png in `folder` (sorted by name), each 28x28 grayscale, as uint8 (N, 28, 28)."""
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise InputError(f"{folder}: no .png files in this folder")
    images = []
    for path in files:
        try:
            with Image.open(path) as img:
                img.load()
                if img.mode in ("I", "I;16", "I;16B", "F"):
                    raise InputError(f"{path}: {img.mode} (16-bit or float) PNG; save 8-bit grayscale digits")
                if img.size != (28, 28):
                    raise InputError(f"{path}: {img.size[0]}x{img.size[1]} pixels; expected 28x28")
                images.append(np.asarray(img if img.mode == "L" else img.convert("L"), np.uint8))
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise InputError(f"{path}: not a readable PNG ({e})") from None
    return np.stack(images)


def load_images(path: str | Path) -> tuple[np.ndarray, str]:
    """An .npy, an .npz or a folder of PNGs -> uint8 (N, 28, 28) and a description of what was read."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return load_png_folder(path), "png folder"
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise InputError(f"{path}: unsupported input; expected an .npy or .npz array or a folder of PNGs")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{path}: corrupt or unreadable array file ({str(e).splitlines()[0]})") from None
    if suffix == ".npz":
        with loaded as npz:
            names = list(npz.keys())
            chosen = names[0] if len(names) == 1 else next((k for k in ARRAY_KEYS if k in names), None)
            if chosen is None:
                raise InputError(f"{path}: holds arrays {names}; expected one array or one named x, images or samples")
            try:
                array = npz[chosen]
            except (OSError, ValueError, EOFError) as e:
                raise InputError(f"{path}[{chosen}]: unreadable array ({str(e).splitlines()[0]})") from None
            images, convention = images_to_uint8(array, f"{path}[{chosen}]")
        return images, f"npz[{chosen}], {convention}"
    images, convention = images_to_uint8(loaded, str(path))
    return images, f"npy, {convention}"


# --- inputs of the pipeline ---------------------------------------------------------------------------


def load_classifier(path: str | Path) -> Classifier:
    """The pipeline's classifier, in eval mode; one-line InputError when it is missing or does not fit."""
    from mnistgan.classifier import check_classifier_file, classifier_from_file
    from mnistgan.io import load_torch

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: classifier file not found; run `dvc repro classifier` (or pass --classifier)")
    return classifier_from_file(load_torch(path, made_by="classifier", check=check_classifier_file))


def load_data(folder: str | Path) -> MNIST:
    """The four MNIST arrays of the prepare stage (any number of images, for tests), uint8."""
    from mnistgan.data import MNIST
    from mnistgan.io import load_npy

    folder = Path(folder)
    names = ("x_train", "y_train", "x_test", "y_test")
    missing = [f"{n}.npy" for n in names if not (folder / f"{n}.npy").exists()]
    if missing:
        raise InputError(
            f"{folder}: MNIST arrays missing ({', '.join(missing)}); run `dvc repro prepare` (or pass --data)"
        )
    arrays = {n: load_npy(folder / f"{n}.npy", made_by="prepare") for n in names}
    for n in ("x_train", "x_test"):
        a = arrays[n]
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[1:] != (28, 28):
            problem = f"shape {a.shape} {a.dtype}, expected (N, 28, 28) uint8"
            raise InputError(f"{folder / n}.npy: {problem}; run `dvc repro prepare`")
    return MNIST(**arrays)


# --- real-image features ------------------------------------------------------------------------------


@dataclass
class RealFeatures:
    """Classifier outputs for all training and test images, and memorisation thresholds by pool size."""

    train_feats: np.ndarray  # (n_train, 128) float64
    train_probs: np.ndarray  # (n_train, 10)
    test_feats: np.ndarray  # (n_test, 128)
    test_probs: np.ndarray  # (n_test, 10)
    thresholds: dict[int, float] = field(default_factory=dict)  # pool size -> threshold

    def threshold(self, pool_size: int) -> float:
        """metrics.features_to_memorisation_threshold against the first `pool_size` training images."""
        if pool_size not in self.thresholds:
            pool = self.train_feats[:pool_size]
            self.thresholds[pool_size] = metrics.features_to_memorisation_threshold(self.test_feats, pool)
        return self.thresholds[pool_size]


_memo: dict[str, RealFeatures] = {}  # one entry: the evaluate stage scores samples, then the reference


def _fingerprint(classifier: Classifier, mnist: MNIST, batch_size: int) -> str:
    """sha256 of the classifier weights, the real images and the batch size."""
    h = hashlib.sha256()
    for name, tensor in sorted(classifier.state_dict().items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(tensor.detach().cpu().numpy()).tobytes())
    for a in (mnist.x_train, mnist.x_test):
        h.update(str(a.shape).encode())
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    h.update(f"batch {batch_size}".encode())
    return h.hexdigest()


def real_features(
    classifier: Classifier, mnist: MNIST, *, batch_size: int = 500, progress: bool = False
) -> RealFeatures:
    """Features and probabilities of every training and test image (memoised for the last inputs)."""
    from mnistgan.classifier import features_and_probs

    key = _fingerprint(classifier, mnist, batch_size)
    if key not in _memo:
        train = features_and_probs(classifier, mnist.x_train, batch_size, progress, desc="train features")
        test = features_and_probs(classifier, mnist.x_test, batch_size, progress, desc="test features")
        _memo.clear()
        _memo[key] = RealFeatures(*train, *test)
    return _memo[key]


# --- scores -------------------------------------------------------------------------------------------


def _min_samples(splits: int, k: int) -> int:
    return max(splits, k + 1, 2)


def _check_n_reference(n_reference: int, n_train: int, splits: int, k: int) -> None:
    need = _min_samples(splits, k)
    if not need <= n_reference < n_train:
        raise InputError(f"n_reference {n_reference}: must be at least {need} and below the {n_train} training images")


def score_images(
    images_u8: np.ndarray,
    classifier: Classifier,
    mnist: MNIST,
    *,
    splits: int = 10,
    batch_size: int = 500,
    progress: bool = False,
    k: int = 3,
    seed: int = 0,
    real: RealFeatures | None = None,
) -> dict[str, float]:
    """Every metric of uint8 (N, 28, 28) images against the MNIST test set (metrics.evaluate_samples);
    all training images are the memorisation pool."""
    from mnistgan.classifier import features_and_probs

    images = np.asarray(images_u8)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise InputError(f"images: shape {images.shape} {images.dtype}; expected (N, 28, 28) uint8")
    need = _min_samples(splits, k)
    if len(images) < need:
        raise InputError(f"images: {len(images)} samples; at least {need} needed ({splits} IS splits, k={k})")
    if real is None:
        real = real_features(classifier, mnist, batch_size=batch_size, progress=progress)
    feats, probs = features_and_probs(classifier, images, batch_size, progress, desc="sample features")
    pool = real.train_feats
    return metrics.evaluate_samples(feats, probs, real.test_feats, pool, splits=splits, k=k, seed=seed,
                                    memorisation_threshold=real.threshold(len(pool)))  # fmt: skip


def reference_scores(
    classifier: Classifier,
    mnist: MNIST,
    n_reference: int = 10000,
    *,
    splits: int = 10,
    batch_size: int = 500,
    progress: bool = False,
    k: int = 3,
    seed: int = 0,
    real: RealFeatures | None = None,
) -> dict[str, float]:
    """The same metrics for the last `n_reference` real training images (by default 50000:60000), with
    the other training images as their memorisation pool: what a perfect generator would score."""
    _check_n_reference(n_reference, len(mnist.x_train), splits, k)
    n_train = len(mnist.x_train)
    if real is None:
        real = real_features(classifier, mnist, batch_size=batch_size, progress=progress)
    split = n_train - n_reference
    return metrics.evaluate_samples(
        real.train_feats[split:], real.train_probs[split:], real.test_feats, real.train_feats[:split],
        splits=splits, k=k, seed=seed, memorisation_threshold=real.threshold(split),
    )  # fmt: skip


# --- disk cache (CLI only) ----------------------------------------------------------------------------


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mnistgan"


def _code_digest() -> str:
    """sha256 of the source that turns images into features and features into scores, and the versions."""
    import scipy
    import torch

    from mnistgan import classifier as clf

    h = hashlib.sha256(f"{np.__version__} {scipy.__version__} {torch.__version__}".encode())
    objects = [clf.features_and_probs, clf.Classifier, getattr(clf, "to_unit_range", None), metrics]
    files = {Path(inspect.getfile(inspect.getmodule(o))) for o in objects if o is not None} | {Path(__file__)}
    for path in sorted(files):
        h.update(path.read_bytes())
    return h.hexdigest()


class DiskCache:
    """Real features, thresholds and reference scores under root/<key>/, where the key hashes the
    classifier weights, the real images, the batch size and the code; an unreadable entry is recomputed."""

    FEATURES = ("train_feats", "train_probs", "test_feats", "test_probs")

    def __init__(self, root: Path, classifier: Classifier, mnist: MNIST, batch_size: int):
        key = _fingerprint(classifier, mnist, batch_size) + _code_digest()
        self.dir = Path(root) / hashlib.sha256(key.encode()).hexdigest()[:32]

    def load_features(self) -> RealFeatures | None:
        try:
            with np.load(self.dir / "features.npz", allow_pickle=False) as z:
                arrays = [z[name].astype(np.float64) for name in self.FEATURES]
            thresholds = json.loads((self.dir / "thresholds.json").read_text())
            return RealFeatures(*arrays, thresholds={int(k): float(v) for k, v in thresholds.items()})
        except (OSError, ValueError, KeyError):
            return None

    def save_features(self, real: RealFeatures) -> None:
        # The features are float32 values promoted to float64 (features_and_probs): float32 is lossless.
        arrays = {name: getattr(real, name) for name in self.FEATURES}
        for name in ("train_feats", "test_feats"):
            arrays[name] = arrays[name].astype(np.float32)
        thresholds = {str(k): v for k, v in real.thresholds.items()}
        try:
            with atomic_path(self.dir / "features.npz") as tmp, open(tmp, "wb") as f:
                np.savez(f, **arrays)
            write_json(self.dir / "thresholds.json", thresholds)
        except OSError as e:
            self._warn(e)

    def load_reference(self, name: str) -> dict[str, float] | None:
        try:
            reference = json.loads((self.dir / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(reference, dict) or set(reference) != set(metrics.EVALUATE_KEYS):
            return None
        return {key: reference[key] for key in metrics.EVALUATE_KEYS}

    def save_reference(self, name: str, reference: dict[str, float]) -> None:
        try:
            write_json(self.dir / f"{name}.json", reference)
        except OSError as e:
            self._warn(e)

    def _warn(self, e: OSError) -> None:
        print(f"{PROG}: warning: cannot write the cache in {self.dir} ({e})", file=sys.stderr)


# --- command line -------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints the whole usage otherwise)
        self.exit(EXIT_BAD_INPUT, f"{PROG}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("path", metavar="PATH", help=".npy/.npz array of digits or a folder of 28x28 PNGs")
    p.add_argument("--classifier", default="models/classifier.pt", help="default: %(default)s")
    p.add_argument("--data", default="data/mnist", help="folder of the MNIST arrays (default: %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the result to FILE")
    p.add_argument("--n-reference", type=int, default=10000, help="real training images scored as the reference")
    p.add_argument("--splits", type=int, default=10, help="Inception Score splits (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=500, help="classifier batch size (default: %(default)s)")
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="default: %(default)s")
    p.add_argument("--no-cache", action="store_true", help="recompute the real-image features and reference")
    p.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    for name in ("n_reference", "splits", "batch_size"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')}: must be a positive integer")
    images, read_as = load_images(args.path)
    need = _min_samples(args.splits, 3)
    if len(images) < need:
        raise InputError(f"{args.path}: {len(images)} images; at least {need} needed")
    classifier = load_classifier(args.classifier)
    mnist = load_data(args.data)
    _check_n_reference(args.n_reference, len(mnist.x_train), args.splits, 3)
    progress = not args.quiet and sys.stderr.isatty()
    cache = None if args.no_cache else DiskCache(args.cache_dir, classifier, mnist, args.batch_size)
    real = cache.load_features() if cache else None
    saved_thresholds = None if real is None else dict(real.thresholds)
    if real is None:
        real = real_features(classifier, mnist, batch_size=args.batch_size, progress=progress)
    common = {"splits": args.splits, "batch_size": args.batch_size, "progress": progress, "real": real}
    generated = score_images(images, classifier, mnist, **common)
    ref_name = f"reference-{args.n_reference}-splits{args.splits}"
    reference = cache.load_reference(ref_name) if cache else None
    if reference is None:
        reference = reference_scores(classifier, mnist, args.n_reference, **common)
        if cache:
            cache.save_reference(ref_name, reference)
    if cache and real.thresholds != saved_thresholds:
        cache.save_features(real)
    return {**generated, "input": str(args.path), "read_as": read_as, "n_reference": args.n_reference,
            "reference": reference}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed as one line
        return int(e.code or 0)
    try:
        result = run(args)
        text = json.dumps(result, indent=2, sort_keys=True)
        if args.json:
            try:
                write_json(args.json, result)
            except OSError as e:
                raise InputError(f"--json {args.json}: cannot write ({e.strerror or e})") from None
    except (InputError, ValueError) as e:
        print(f"{PROG}: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
