"""`mnistgan recipes` (`make sweep`): named training recipes, each a set of changes to params.yaml's train
section, queued as DVC experiments over seeds for one wall-clock budget of training. `mnistgan results`
(`make results`, mnistgan.lab.report) then compares them: scores over seeds with a test against the
default, and FID during training against seconds. That pair is the one way recipes are compared.

No torch here: the report reads these names without loading a model.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from typing import Any

from mnistgan.cli import OneLineParser, run_command
from mnistgan.config import TrainConfig, load_params
from mnistgan.errors import UserError

# The keys a recipe is told apart by: recipe_overrides gives each, the report's labels name them.
RECIPE_KEYS = ("model", "loss", "d_norm", "conditional", "ema", "ema_warmup", "batch_size", "lr", "lr_d", "beta1",
               "beta2", "g_width", "d_width", "d_steps", "r1_weight")  # fmt: skip

# Every recipe is a set of changes to params.yaml's train section (the one default; TrainConfig's defaults are
# held equal to it by tests/test_config.py). The first two rounds of the search started from a smaller
# recipe, FIRST_ROUND: params.yaml's without labels, at lr 2e-4, with D width 64 and no R1.
FIRST_ROUND: dict[str, Any] = {"conditional": False, "lr": 2e-4, "d_width": 64, "r1_weight": 0.0}

# name -> changes to params.yaml. Each changes one thing from its round's start, so a run says what it buys. The
# search's rounds (docs/recipes.md) ran each for a budget of seconds; "steps" fixes a run's length where the change
# depends on it (an lr decay).
CANDIDATES: dict[str, dict[str, Any]] = {
    # params.yaml's recipe, chosen by the rounds below (there: default-r1-0.1, the third round's winner)
    "default": {},
    "unconditional": {"conditional": False},  # the default without labels
    # the default until the third round (lr-4e-4-d-width-32-conditional below; "default" in the third round)
    "previous-default": {"r1_weight": 0.0},
    # the default for an hour of training on a 2-core CPU (docs/curves/hour)
    "long": {"steps": 100000},
    "baseline": FIRST_ROUND | {"ema_warmup": False},  # the pipeline's recipe before the search (EMA without the ramp)
    "ema-warmup": FIRST_ROUND,
    "ttur": FIRST_ROUND | {"lr": 1e-4, "lr_d": 4e-4, "beta1": 0.0},
    "lr-4e-4": FIRST_ROUND | {"lr": 4e-4},
    "batch-32": FIRST_ROUND | {"batch_size": 32},
    "batch-128": FIRST_ROUND | {"batch_size": 128, "lr": 4e-4},
    "d-width-32": FIRST_ROUND | {"d_width": 32},
    "g-width-32": FIRST_ROUND | {"g_width": 32, "d_width": 32},
    "hinge-spectral": FIRST_ROUND | {"loss": "hinge", "d_norm": "spectral"},
    "lsgan": FIRST_ROUND | {"loss": "lsgan"},
    "conditional": FIRST_ROUND | {"conditional": True, "loss": "hinge", "d_norm": "spectral"},
    "conditional-ns": FIRST_ROUND | {"conditional": True},
    # Second round: the two levers of the first (a higher learning rate, a cheaper discriminator), combined
    "lr-8e-4": FIRST_ROUND | {"lr": 8e-4},
    "lr-4e-4-d-width-32": FIRST_ROUND | {"lr": 4e-4, "d_width": 32},
    "lr-4e-4-widths-32": FIRST_ROUND | {"lr": 4e-4, "g_width": 32, "d_width": 32},
    "lr-4e-4-batch-32": FIRST_ROUND | {"lr": 4e-4, "batch_size": 32},
    "lr-4e-4-conditional": FIRST_ROUND | {"lr": 4e-4, "conditional": True},
    "lr-4e-4-d-width-32-conditional": {"r1_weight": 0.0},
    # Third round, for cleaner digits: the previous default (no R1) plus one change each
    "default-upsample-nearest": {"r1_weight": 0.0, "g_upsample": "nearest"},
    "default-upsample-bilinear": {"r1_weight": 0.0, "g_upsample": "bilinear"},
    "default-r1-0.1": {},
    "default-r1-1": {"r1_weight": 1.0},
    "default-lr-decay": {"r1_weight": 0.0, "lr_decay_from": 0.5, "steps": 6000},
    "default-topk": {"r1_weight": 0.0, "topk_min": 0.5, "topk_decay": 0.9},
    # Fourth round: the R1 default plus one change each, run longer to see where each levels off
    "default-nearest": {"g_upsample": "nearest"},
    "default-decay": {"lr_decay_from": 0.6, "steps": 11000},  # the lr to 0 over the last 40%
    "default-ema-0.9995": {"ema": 0.9995},
    "default-batch-128": {"batch_size": 128},
    "default-r1-topk": {"topk_min": 0.5, "topk_decay": 0.9},  # default-topk above, with R1
    # The document's DCGAN trained as written: the baseline the others are measured against.
    "seed-literal": FIRST_ROUND | {"model": "dcgan-large", "loss": "minimax", "d_norm": "batch", "ema": 0.0},
}


def default_recipe() -> dict[str, Any]:
    """params.yaml's train section on RECIPE_KEYS (through TrainConfig's defaults, which equal it)."""
    defaults = TrainConfig()
    return {k: getattr(defaults, k) for k in RECIPE_KEYS}


def recipe_overrides(name: str) -> dict[str, Any]:
    """The named recipe on every RECIPE_KEYS key, plus its other changes: TrainConfig keyword arguments."""
    if name not in CANDIDATES:
        raise KeyError(f"unknown recipe {name!r}; known recipes: {', '.join(CANDIDATES)}")
    return default_recipe() | CANDIDATES[name]


def recipe_name(train_params: dict[str, Any]) -> str | None:
    """The name of the recipe whose every key matches `train_params` (values compared as text, the way
    MLflow stores params), the most specific when several do (the default plus one change is not the
    default), or None."""
    matches = [
        name
        for name in CANDIDATES
        if all(str(train_params.get(k)) == str(v) for k, v in recipe_overrides(name).items())
    ]
    return max(matches, key=lambda name: len(recipe_overrides(name)), default=None)


# The README's recipe list: each is run over these seeds by `make sweep` (the default over three).
README_RECIPES: dict[str, tuple[int, ...]] = {
    "default": (0, 1, 2),
    "previous-default": (0, 1),
    "unconditional": (0, 1),
    "seed-literal": (0, 1),
}


def dvc_overrides(name: str, params_path: str = "params.yaml") -> list[str]:
    """`-S train.key=value` arguments that turn params.yaml's train section into the named recipe (only the
    keys that differ)."""
    current = load_params(params_path).train
    return [
        arg
        for k, v in recipe_overrides(name).items()
        if getattr(current, k) != v
        for arg in ("-S", f"train.{k}={_yaml(v)}")
    ]


def _yaml(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def main(argv: list[str] | None = None) -> int:
    """Queue recipes as DVC experiments over seeds, each for the same wall-clock budget of training."""
    parser = OneLineParser(prog="mnistgan recipes", description=main.__doc__)
    parser.add_argument("--seconds", type=float, default=200.0, help="training seconds per run (train.max_seconds)")
    parser.add_argument("--recipes", default=",".join(README_RECIPES), help="comma-separated recipe names")
    seeds_help = "comma-separated seeds for every recipe (default: 0,1,2 for the default, 0,1 for the others)"
    parser.add_argument("--seeds", help=seeds_help)
    parser.add_argument("--dry-run", action="store_true", help="print the dvc commands instead of running them")
    parser.add_argument("--run", action="store_true", help="then run the queue, one experiment at a time, and wait")
    return run_command(parser, queue_recipes, argv)


def queue_recipes(args: argparse.Namespace) -> int:
    names = [n for n in args.recipes.split(",") if n]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise UserError(f"--recipes: unknown recipe {unknown[0]!r}; known: {', '.join(CANDIDATES)}")
    if args.seeds is not None and not all(s.strip().isdigit() for s in args.seeds.split(",")):
        raise UserError(f"--seeds: {args.seeds!r} is not a comma-separated list of whole numbers, e.g. 0,1,2")
    for name in names:
        seeds = args.seeds or ",".join(map(str, README_RECIPES.get(name, (0, 1))))
        # the clock ends a run, unless the recipe fixes its length (then its -S train.steps comes after this one)
        cmd = ["dvc", "exp", "run", "--queue", "-S", f"seed={seeds}", "-S", f"train.max_seconds={args.seconds}"]
        cmd += ["-S", "train.steps=1000000"] if "steps" not in CANDIDATES[name] else []
        cmd += dvc_overrides(name)
        print(" ".join(cmd), flush=True)
        if not args.dry_run and subprocess.call(cmd) != 0:
            return 1
    if args.run and not args.dry_run:
        # One at a time: the budget is wall-clock seconds, so runs must not share the cores.
        if subprocess.call(["dvc", "queue", "start", "-j", "1"]) != 0:
            return 1
        while True:
            status = subprocess.run(["dvc", "queue", "status"], capture_output=True, text=True).stdout
            if not any(word in status for word in ("Queued", "Running")):
                print(status, flush=True)
                return 1 if "Failed" in status else 0
            time.sleep(20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
