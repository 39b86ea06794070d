"""`mnistgan score PATH`: every metric of digits made by any program, beside the real-data reference.

PATH is an .npy/.npz array (uint8 0..255, float in [0, 1] or float in [-1, 1]; (N, 28, 28) or
(N, 1, 28, 28)) or a folder of 28x28 grayscale PNGs. The images go through the pipeline's classifier and
its second feature network (the extractor stage) and are scored against the MNIST test set by
mnistgan.evaluation.scoring, the core the evaluate stage uses too: every metric on the classifier's features, FID and
KID in each feature space as multiples of their real-data values, and the spread of those multiples. The
reference is as many real training images as the input holds (their memorisation pool: the other
training images), so both sides of every comparison have the same N. One JSON object goes to stdout.

The real images' features (70,000 passes per network, about a minute on two CPU cores) are cached on
disk (--cache-dir, default ~/.cache/mnistgan), keyed by the network's weights, the data bytes and the
source of the code that computes them, so a second run only scores the new images."""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnistgan.cli import OneLineParser, run_command
from mnistgan.config import DEFAULT_SPACES, FEATURE_SPACES
from mnistgan.data import MNIST, load_mnist
from mnistgan.evaluation import metrics
from mnistgan.evaluation.scoring import RealFeatures, min_samples, real_features, score_all
from mnistgan.io import InputError, atomic_path, write_json

if TYPE_CHECKING:  # torch is imported only when a classifier is needed
    from mnistgan.evaluation.classifier import Classifier

PROG = "mnistgan score"
DEFAULT_EXTRACTOR = "models/extractor.pt"  # optional: without it, the classifier's feature spaces only
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
    from PIL import Image, UnidentifiedImageError  # lazy: PNG folders only

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


def load_network(path: str | Path, option: str) -> Classifier:
    """A feature network file, in eval mode; one-line InputError when it is missing or does not fit."""
    from mnistgan.evaluation.classifier import load_classifier  # torch: only once a file is scored

    path = Path(path)
    if not path.exists():
        stage = option.removeprefix("--")
        raise InputError(f"{path}: {stage} file not found; run `dvc repro {stage}` (or pass {option})")
    return load_classifier(path, made_by=option.removeprefix("--"))


# --- disk cache (CLI only) ----------------------------------------------------------------------------


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mnistgan"


def _fingerprint(model: Classifier, mnist: MNIST, batch_size: int) -> str:
    """sha256 of the network's weights, the real images and the batch size."""
    from mnistgan.evaluation.classifier import weights_sha256  # lazy: torch

    h = hashlib.sha256(weights_sha256(model).encode())
    for a in (mnist.x_train, mnist.x_test):
        h.update(str(a.shape).encode())
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    h.update(f"batch {batch_size}".encode())
    return h.hexdigest()


def _code_digest() -> str:
    """sha256 of the source that turns images into features and features into scores, and the versions."""
    import scipy  # lazy: versions for the cache key
    import torch  # lazy: --help and usage errors answer before torch loads

    from mnistgan import tensors  # lazy: torch
    from mnistgan.evaluation import classifier, scoring  # lazy: torch

    h = hashlib.sha256(f"{np.__version__} {scipy.__version__} {torch.__version__}".encode())
    for module in sorted((classifier, metrics, scoring, tensors), key=lambda m: m.__name__):
        h.update(Path(inspect.getfile(module)).read_bytes())
    return h.hexdigest()


class DiskCache:
    """One network's real features and thresholds, and reference scores, under root/<key>/, where the key
    hashes the weights, the real images, the batch size and the code; an unreadable entry is recomputed."""

    FEATURES = ("train_feats", "train_probs", "test_feats", "test_probs")

    def __init__(self, root: Path, model: Classifier, mnist: MNIST, batch_size: int):
        key = _fingerprint(model, mnist, batch_size) + _code_digest()
        self.dir = Path(root) / hashlib.sha256(key.encode()).hexdigest()[:32]
        from mnistgan.evaluation.classifier import block_widths  # lazy: torch

        self.block_widths = block_widths(model)

    def load_features(self) -> RealFeatures | None:
        try:
            with np.load(self.dir / "features.npz", allow_pickle=False) as z:
                arrays = [z[name].astype(np.float64) for name in self.FEATURES]
            thresholds = json.loads((self.dir / "thresholds.json").read_text())
            return RealFeatures(
                *arrays, block_widths=self.block_widths, thresholds={int(k): float(v) for k, v in thresholds.items()}
            )
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
            print(f"{PROG}: warning: cannot write the cache in {self.dir} ({e})", file=sys.stderr)


def cached_real_features(
    model: Classifier, mnist: MNIST, name: str, args: argparse.Namespace, progress: bool
) -> tuple[RealFeatures, Callable[[], None]]:
    """The network's real features from the disk cache, else computed; and a function that saves them
    (with any memorisation threshold computed meanwhile) when the cache lacks them."""
    cache = None if args.no_cache else DiskCache(args.cache_dir, model, mnist, args.batch_size)
    real = cache.load_features() if cache else None
    saved = None if real is None else dict(real.thresholds)
    if real is None:
        real = real_features(model, mnist, batch_size=args.batch_size, progress=progress, name=name)

    def save() -> None:
        if cache and real.thresholds != saved:
            cache.save_features(real)

    return real, save


# --- command line -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("path", metavar="PATH", help=".npy/.npz array of digits or a folder of 28x28 PNGs")
    p.add_argument("--classifier", default="models/classifier.pt", help="default: %(default)s")
    p.add_argument(
        "--extractor",
        default="models/extractor.pt",
        help="the second feature network (default: %(default)s; skipped when the default is absent)",
    )
    p.add_argument(
        "--spaces",
        default=",".join(DEFAULT_SPACES),
        help=f"feature spaces for FID/KID and their agreement (default, as the evaluate stage: %(default)s; "
        f"known: {', '.join(FEATURE_SPACES)})",
    )
    p.add_argument("--data", default="data/mnist", help="folder of the MNIST arrays (default: %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the result to FILE")
    p.add_argument(
        "--n-reference",
        type=int,
        default=0,
        help="real training images scored as the reference (default: as many as the input's images)",
    )
    p.add_argument("--splits", type=int, default=10, help="Inception Score splits (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=500, help="classifier batch size (default: %(default)s)")
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="default: %(default)s")
    p.add_argument("--no-cache", action="store_true", help="recompute the real-image features")
    p.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    for name in ("splits", "batch_size"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')}: must be a positive integer")
    if args.n_reference < 0:
        raise InputError("--n-reference: must be 0 (as many as the images) or a positive integer")
    spaces = tuple(s.strip() for s in args.spaces.split(",") if s.strip())
    unknown = [s for s in spaces if s not in FEATURE_SPACES]
    if unknown:
        raise InputError(f"--spaces: unknown feature space {unknown[0]!r}; known: {', '.join(FEATURE_SPACES)}")
    images, read_as = load_images(args.path)
    need = min_samples(args.splits, 3)
    if len(images) < need:
        raise InputError(f"{args.path}: {len(images)} images; at least {need} needed")
    models = {"classifier": load_network(args.classifier, "--classifier")}
    if Path(args.extractor).exists() or args.extractor != DEFAULT_EXTRACTOR:
        models["extractor"] = load_network(args.extractor, "--extractor")
    else:  # a pipeline without the extractor stage: the classifier's spaces only
        spaces = tuple(s for s in spaces if s.startswith("classifier/"))
    mnist = load_mnist(args.data)
    progress = not args.quiet and sys.stderr.isatty()
    reals, saves = {}, []
    for name, model in models.items():
        reals[name], save = cached_real_features(model, mnist, name, args, progress)
        saves.append(save)
    result = score_all(
        images,
        models,
        reals,
        spaces,
        n_reference=args.n_reference,
        splits=args.splits,
        batch_size=args.batch_size,
        progress=progress,
    )
    for save in saves:
        save()
    return {"input": str(args.path), "read_as": read_as, **result}  # the keys of eval.json (docs/scores.md)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), score_command, argv, errors=(ValueError,))


def score_command(args: argparse.Namespace) -> None:
    result = run(args)
    text = json.dumps(result, indent=2, sort_keys=True)
    if args.json:
        try:
            write_json(args.json, result)
        except OSError as e:
            raise InputError(f"--json {args.json}: cannot write ({e.strerror or e})") from None
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
