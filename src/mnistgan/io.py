"""File I/O for the edges: every output is written to a temporary name and renamed into place, so a
crash never leaves a half-written file under its real name; every load turns a missing or corrupt file
into one clear error line that says which stage makes it."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mnistgan.errors import InputError

__all__ = [
    "InputError",
    "atomic_path",
    "load_npy",
    "load_torch",
    "read_json",
    "save_npy",
    "save_torch",
    "write_csv",
    "write_json",
]

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed to `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path: str | Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    """rows as CSV with a header; floats to 6 significant digits (so the bytes repeat across runs)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def read_json(path: str | Path, made_by: str = "") -> Any:
    path = Path(path)
    _require(path, made_by)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a valid JSON file ({e}){_hint(made_by)}") from None


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def load_npy(path: str | Path, made_by: str = "") -> np.ndarray:
    path = Path(path)
    _require(path, made_by)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{path}: corrupt or truncated array file ({e}){_hint(made_by)}") from None


def save_torch(path: str | Path, obj: Any) -> None:
    import torch  # lazy: light commands read JSON and arrays without torch

    # Through a file object: torch.save(obj, <path>) names the zip records after the (random) temporary
    # file name, so the same weights would give different bytes on every run.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def load_torch(path: str | Path, made_by: str = "", check: Callable[[Any], str | None] | None = None) -> Any:
    """torch.load with weights_only (no pickled code runs) and a one-line error for bad files.

    `check` returns a problem description (or None) for a file that loads but is not what is expected.
    """
    import torch  # lazy: light commands read JSON and arrays without torch

    path = Path(path)
    _require(path, made_by)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, pickle errors, zipfile errors, EOFError...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{path}: corrupt or unreadable torch file ({msg}){_hint(made_by)}") from None
    problem = check(obj) if check else None
    if problem:
        raise InputError(f"{path}: {problem}{_hint(made_by)}")
    return obj


def _hint(made_by: str) -> str:
    return f"; rerun the {made_by} stage (dvc repro {made_by})" if made_by else ""


def _require(path: Path, made_by: str) -> None:
    if not path.exists():
        raise InputError(f"{path}: file not found{_hint(made_by)}")


def save_png(path: str | Path, image: np.ndarray, scale: int = 1) -> None:
    """uint8 (H, W) grayscale -> PNG, each pixel repeated `scale` times for viewing."""
    from PIL import Image  # lazy: only PNG writers need it

    if scale > 1:
        image = np.kron(image, np.ones((scale, scale), np.uint8))
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(image, np.uint8), mode="L").save(tmp, format="PNG")
