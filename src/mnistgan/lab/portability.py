"""What portable numerics cost (the `numerics` section of `make bench`): each stage's work timed under
`numerics.mode` portable and native, each mode in processes of its own (the libraries read their code path
once per process), the modes alternated over rounds so a shared machine's drift hits both alike.

Timed per stage, on random inputs of MNIST's shape: the train stage's step of the params.yaml recipe
(images/s over whole R1 periods), the classifier stage's training (images/s of one epoch on a subset), and
the feature pass that evaluate runs (images/s).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from mnistgan import numerics
from mnistgan.config import load_params

STAGES = ("train", "classifier", "features")
PROBE_FLAG = "--probe"


def probe(mode: str, threads: int, train_steps: int = 160, images: int = 6400) -> dict[str, Any]:
    """One process's timings under `mode` (call in a fresh process: see the module docstring)."""
    numerics.apply(mode, threads)
    import numpy as np
    import torch

    from mnistgan.evaluation.classifier import train_classifier
    from mnistgan.evaluation.scoring import network_features
    from mnistgan.gan.losses import get_loss
    from mnistgan.gan.step import build_state, train_step

    params = load_params("params.yaml")
    cfg = params.train
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (images, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images))
    x = torch.from_numpy(images).float().div(127.5).sub(1).unsqueeze(1)  # (N, 1, 28, 28) in [-1, 1]
    y = torch.from_numpy(labels)
    state, loss = build_state(cfg, 0, torch.device("cpu")), get_loss(cfg.loss)

    def batches(i: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        idx = torch.arange(i * cfg.batch_size, (i + 1) * cfg.batch_size) % len(x)
        return [(x[idx], y[idx])]

    def steps(first: int, n: int) -> None:
        for i in range(first, first + n):
            state.step = i
            train_step(state, loss, batches(i))

    steps(0, cfg.r1_every)  # warm-up: one R1 period
    start = time.perf_counter()
    steps(cfg.r1_every, train_steps)
    result = {"train": train_steps * cfg.batch_size / (time.perf_counter() - start)}
    clf_cfg = dataclasses.replace(params.classifier, epochs=1, train_images=len(images))
    trained = train_classifier(clf_cfg, 0, images, labels, images[:500], labels[:500], progress=False)
    result["classifier"] = len(images) / trained.seconds
    start = time.perf_counter()
    network_features(trained.model, images)
    result["features"] = len(images) / (time.perf_counter() - start)
    return result | {"fingerprint": numerics.fingerprint(mode)}


def measure(
    threads: int, rounds: int = 3, log: Callable[[str], None] = print, train_steps: int = 160, images: int = 6400
) -> dict[str, Any]:
    """Median images/s per stage and mode over `rounds` alternating pairs of processes, and the ratio."""
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in numerics.MODES}
    for r in range(rounds):
        for mode in numerics.MODES:
            cmd = [
                sys.executable,
                "-m",
                __name__,
                PROBE_FLAG,
                mode,
                "--threads",
                str(threads),
                "--steps",
                str(train_steps),
                "--images",
                str(images),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
            log(f"  round {r + 1} {mode}: " + ", ".join(f"{s} {runs[mode][-1][s]:,.0f}" for s in STAGES) + " images/s")
    rows = []
    for stage in STAGES:
        median = {mode: statistics.median(run[stage] for run in runs[mode]) for mode in numerics.MODES}
        rows.append({"stage": stage, **median, "portable_cost": 1 - median["portable"] / median["native"]})
    return {
        "threads": threads,
        "rounds": rounds,
        "train_steps": train_steps,
        "images": images,
        "rows": rows,
        "fingerprints": {mode: runs[mode][0]["fingerprint"] for mode in numerics.MODES},
    }


def markdown_rows(section: dict[str, Any]) -> list[list[str]]:
    """Table rows: stage, native images/s, portable images/s, what portable costs."""
    return [
        [r["stage"], f"{r['native']:,.0f}", f"{r['portable']:,.0f}", f"{100 * r['portable_cost']:+.0f}%"]
        for r in section["rows"]
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one timing process (mnistgan.lab.portability.measure)")
    parser.add_argument(PROBE_FLAG, choices=numerics.MODES, required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--images", type=int, default=6400)
    args = parser.parse_args()
    print(json.dumps(probe(args.probe, args.threads, args.steps, args.images)))
