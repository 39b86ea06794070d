"""Training checkpoints: what they hold, when one may be resumed, and resuming from a file.

A checkpoint holds everything that makes a resumed run continue exactly as the uninterrupted one would:
weights, optimizer state, every random generator (the loop's noise stream of each data-parallel rank and
the global torch/numpy/python ones), the loss rows and FID curve so far, the running loss sums and the
training seconds. It is resumed only when it was made with the same train params and seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnistgan.config import to_dict
from mnistgan.gan.step import GANState
from mnistgan.io import InputError, load_torch
from mnistgan.runtime import gather_objects

CHECKPOINT_FORMAT = "mnistgan-checkpoint-1"


def _rng_snapshot() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
        },
        "python": random.getstate(),
    }


def _rng_restore(snap: dict[str, Any]) -> None:
    torch.set_rng_state(snap["torch"])
    if snap["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(snap["cuda"])
    key = snap["numpy"]["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, snap["numpy"]["pos"]))
    state = snap["python"]
    random.setstate((state[0], tuple(state[1]), state[2]))


def checkpoint(state: GANState) -> dict[str, Any]:
    """The checkpoint dict of `state` (a collective with several processes: every rank must call it)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "train_config": to_dict(state.cfg),
        "seed": state.seed,
        "step": state.step,
        "g": state.g.state_dict(),
        "d": state.d.state_dict(),
        "g_ema": state.g_ema.state_dict() if state.g_ema is not None else None,
        "opt_g": state.opt_g.state_dict(),
        "opt_d": state.opt_d.state_dict(),
        "noise_rng": state.noise.get_state(),
        "noise_rng_ranks": gather_objects(state.noise.get_state(), state.world),
        "rng": _rng_snapshot(),
        "history": state.history,
        "fid_history": state.fid_history,
        "loss_sum": state.loss_sum,
        "loss_count": state.loss_count,
        "train_seconds": state.seconds,
    }


def restore(state: GANState, ckpt: dict[str, Any]) -> None:
    """Load `ckpt` into `state` (same config assumed: see `differences`)."""
    state.g.load_state_dict(ckpt["g"])
    state.d.load_state_dict(ckpt["d"])
    if state.g_ema is not None:
        state.g_ema.load_state_dict(ckpt["g_ema"])
    state.opt_g.load_state_dict(ckpt["opt_g"])
    state.opt_d.load_state_dict(ckpt["opt_d"])
    ranks = ckpt.get("noise_rng_ranks") or []
    state.noise.set_state(ranks[state.rank] if len(ranks) == state.world else ckpt["noise_rng"])
    _rng_restore(ckpt["rng"])
    state.step = int(ckpt["step"])
    state.history = list(ckpt["history"])
    state.fid_history = list(ckpt.get("fid_history") or [])
    device = next(state.g.parameters()).device
    state.loss_sum = ckpt["loss_sum"].to(device) if ckpt["loss_sum"] is not None else None
    state.loss_count = int(ckpt["loss_count"])
    state.seconds = float(ckpt.get("train_seconds", 0.0))  # absent from checkpoints of older code


def differences(ckpt: dict[str, Any], state: GANState) -> list[str]:
    """What keeps `ckpt` from continuing `state`'s run, as "key old -> new" lines (empty: compatible)."""
    old, new = ckpt.get("train_config") or {}, to_dict(state.cfg)
    diff = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v]
    diff += [f"{k} (no longer a train param)" for k in old if k not in new]
    if ckpt.get("seed") != state.seed:
        diff.append(f"seed {ckpt.get('seed')!r} -> {state.seed!r}")
    return diff


def resume(state: GANState, path: str | Path, log: Callable[[str], None] = lambda _: None) -> str | None:
    """Load the checkpoint at `path` into `state` when it was made with the same train params and seed.

    Returns its MLflow run id (so the same run continues), or None for a fresh start: no file, an
    unreadable one, or other params (`log` gets one line saying which).
    """
    if not Path(path).exists():
        return None
    try:
        ckpt = load_torch(path)
    except InputError as e:
        log(f"{e}; starting fresh")
        return None
    diff = differences(ckpt, state)
    if diff:
        log(f"{path} was made with other params ({', '.join(diff)}); starting fresh")
        return None
    restore(state, ckpt)
    log(f"resuming from {path} at step {state.step}")
    return ckpt.get("mlflow_run_id") or None
