"""`mnistgan generate`: digits from a trained generator, as a picture or an array.

    mnistgan generate --digit 7 --n 64 --seed 0 --out sevens.png   # an 8-wide grid
    mnistgan generate --digit 7 --n 64 --seed 0 --out sevens.npy   # uint8 (64, 28, 28), 0 = black

Image i is drawn from seed `--seed + i` alone (sample.digits_from_seeds), so it is reproducible and equals
what the registered MLflow model returns for the row (digit, seed + i). The generator comes from
models/generator.pt (the train stage's output), `--generator FILE` or `--model-uri models:/NAME/VERSION`
(an MLflow Model logged by the train stage, from the store of `MLFLOW_TRACKING_URI` or this repo's
mlflow.db: only its weights file is downloaded, and loaded like a local one, so no code stored with the model
runs here).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from mnistgan.cli import OneLineParser, run_command
from mnistgan.data import N_CLASSES
from mnistgan.errors import UserError
from mnistgan.io import load_torch, save_npy, save_png
from mnistgan.pictures import image_grid
from mnistgan.tracking import download_generator_file

PROG = "mnistgan generate"
DEFAULT_GENERATOR = "models/generator.pt"
OUTPUT_SUFFIXES = (".png", ".npy")


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--digit",
        type=int,
        default=-1,
        help="0-9, or -1 for any (default; the only choice of an unconditional generator)",
    )
    p.add_argument("--n", type=int, default=64, help="how many images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed SEED+i (default: %(default)s)")
    p.add_argument("--out", required=True, type=Path, help="FILE.png (a grid) or FILE.npy (uint8 (n, 28, 28))")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--generator", type=Path, default=None, help=f"generator file (default: {DEFAULT_GENERATOR})")
    source.add_argument("--model-uri", help="an MLflow model, e.g. models:/mnistgan-generator/latest")
    p.add_argument(
        "--truncation",
        type=float,
        default=0.0,
        help="cut the noise to [-T, T]: cleaner, less varied digits (default: 0, full normal)",
    )
    p.add_argument("--nrow", type=int, default=8, help="images per row of the PNG grid (default: %(default)s)")
    p.add_argument("--scale", type=int, default=3, help="PNG pixels per image pixel (default: %(default)s)")
    return p


def check_args(args) -> None:  # noqa: ANN001 (an argparse Namespace)
    """Every argument problem that needs no file, as one line naming the option and what is allowed."""
    if not -1 <= args.digit < N_CLASSES:
        raise UserError(f"--digit {args.digit} is out of range; allowed 0-{N_CLASSES - 1}, or -1 for any")
    if args.n < 1:
        raise UserError(f"--n {args.n}: must be at least 1")
    if args.seed < 0:
        raise UserError(f"--seed {args.seed}: must be 0 or more")
    if args.truncation < 0:
        raise UserError(f"--truncation {args.truncation}: must be 0 (off) or more, e.g. 2.0")
    if args.nrow < 1 or args.scale < 1:
        raise UserError(f"--nrow {args.nrow} / --scale {args.scale}: must be at least 1")
    if args.out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"--out {args.out}: unknown suffix {args.out.suffix!r}; use {' or '.join(OUTPUT_SUFFIXES)}")


def generate_images(args) -> np.ndarray:  # noqa: ANN001
    """uint8 (n, 28, 28): image i from (args.digit, args.seed + i)."""
    digits = np.full(args.n, args.digit, np.int64)
    seeds = np.arange(args.seed, args.seed + args.n, dtype=np.int64)
    if args.model_uri:  # its weights file only, loaded as a local one (no code from the store runs)
        with tempfile.TemporaryDirectory(prefix="mnistgan-model-") as tmp:
            return images_from_file(
                download_generator_file(args.model_uri, Path(tmp)), args.model_uri, "", digits, seeds, args.truncation
            )
    path = args.generator or Path(DEFAULT_GENERATOR)
    hint = "train" if args.generator is None else ""  # the default file is the train stage's output
    return images_from_file(path, str(path), hint, digits, seeds, args.truncation)


def images_from_file(
    path: Path, name: str, made_by: str, digits: np.ndarray, seeds: np.ndarray, truncation: float
) -> np.ndarray:
    # lazy: torch, after the arguments are checked
    from mnistgan.gan.sample import check_generator_file, digits_from_seeds, generator_from_file

    g, cfg = generator_from_file(load_torch(path, made_by=made_by, check=check_generator_file))
    try:
        return digits_from_seeds(g, cfg.z_dim, cfg.conditional, digits, seeds, truncation)
    except ValueError as e:  # e.g. a digit asked of an unconditional generator
        raise UserError(f"{name}: {e}") from None


def write_images(images: np.ndarray, out: Path, nrow: int, scale: int) -> None:
    if out.suffix.lower() == ".npy":
        save_npy(out, images)
    else:
        save_png(out, image_grid(images, nrow=min(nrow, len(images))), scale=scale)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), generate_command, argv)


def generate_command(args) -> None:  # noqa: ANN001
    check_args(args)
    images = generate_images(args)
    try:
        write_images(images, args.out, args.nrow, args.scale)
    except OSError as e:
        raise UserError(f"--out {args.out}: cannot write ({e.strerror or e})") from None
    which = "any digit" if args.digit < 0 else f"digit {args.digit}"
    print(f"{PROG}: {args.n} images of {which} (seeds {args.seed}-{args.seed + args.n - 1}) -> {args.out}")


if __name__ == "__main__":
    raise SystemExit(main())
