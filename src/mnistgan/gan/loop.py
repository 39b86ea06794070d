"""The GAN training loop around the step (mnistgan.gan.step): pure logic, no files, no MLflow, no argv.

Everything random comes from the seed: the data order of epoch e is a permutation drawn from a generator
seeded with (seed, e), and all noise comes from one explicit generator whose state is saved in every
checkpoint. So a run resumed from a checkpoint continues with exactly the batches and noise the
uninterrupted run would have used (byte-identical weights on the CPU).

Logging, image grids, checkpoints and stop requests are callbacks the caller passes in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mnistgan.gan.checkpoint import checkpoint
from mnistgan.gan.losses import get_loss
from mnistgan.gan.sample import fixed_noise, generate, recalibrate_batchnorm
from mnistgan.gan.sample import generator_file as make_generator_file
from mnistgan.gan.step import GANState, train_step
from mnistgan.runtime import any_rank, mean_over_ranks
from mnistgan.tensors import epoch_permutation

LOSS_COLUMNS = ("loss_d", "loss_g", "logit_real", "logit_fake", "gp")
FID_COLUMNS = ("step", "fid_inf_generated", "fid_inf_real")  # metrics/train_fid.csv


class DivergenceError(RuntimeError):
    """A loss became NaN or Inf; the message names the step and the loss."""


class StopRequested(RuntimeError):  # noqa: N818 - it is a request, not an error condition
    """Training stopped early on request (SIGINT/SIGTERM) after saving a checkpoint."""

    def __init__(self, step: int):
        super().__init__(f"training stopped on request at step {step}; a checkpoint was saved")
        self.step = step


# ---- the loop -----------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    steps: int
    seconds: float  # training-loop wall seconds of the whole run, over every process that trained it
    images_per_second: float  # steps x batch x d_steps / seconds
    final: dict[str, float]  # the last loss row
    device: str
    resumed_from: int = 0  # the step this process started at (0: a fresh run)
    seconds_this_process: float = 0.0

    def summary(self) -> str:
        """One line for the train stage's end: steps, device, seconds, images/s (and the resume)."""
        resumed = f"; resumed at step {self.resumed_from}, {self.seconds_this_process:.0f} s in this process"
        return (f"{self.steps} steps on {self.device} in {self.seconds:.0f} s ({self.images_per_second:.0f} "
                f"images/s{resumed if self.resumed_from else ''})")  # fmt: skip


def _no_stop() -> bool:
    return False


def train(
    state: GANState,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    *,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    on_images: Callable[[int, torch.Tensor], None] | None = None,
    on_checkpoint: Callable[[int, dict[str, Any]], None] | None = None,
    fid: Callable[[nn.Module], float] | None = None,
    on_fid: Callable[[int, float], None] | None = None,
    stop_requested: Callable[[], bool] = _no_stop,
    progress: bool = True,
) -> TrainResult:
    """Train from state.step to cfg.steps.

    x_train: (N, 1, 28, 28) float in [-1, 1] on the training device; y_train: (N,) int64 on the device.
    on_images gets uint8 (100, 28, 28) samples of the fixed noise; on_checkpoint the checkpoint dict.
    fid (e.g. monitor.FidMonitor) scores the sampling generator every cfg.fid_every steps; each value is
    kept in state.fid_history (so checkpoints carry the curve) and passed to on_fid.
    Raises DivergenceError on NaN/Inf losses and StopRequested after checkpointing when asked to stop.
    """
    cfg, device = state.cfg, x_train.device
    loss = get_loss(cfg.loss)
    n, bs = x_train.shape[0], cfg.batch_size
    per_epoch = n // bs  # the last partial batch of an epoch is dropped so every batch has B images
    z_fixed, y_fixed = fixed_noise(cfg.z_dim, cfg.conditional, state.seed + 2)
    if state.loss_sum is None:
        state.loss_sum = torch.zeros(len(LOSS_COLUMNS), device=device)
    perm_epoch, perm = -1, None
    start_step, t0, seconds_before = state.step, time.perf_counter(), state.seconds

    def batch(index: int) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal perm_epoch, perm
        epoch, i = divmod(index, per_epoch)
        if epoch != perm_epoch:
            perm_epoch, perm = epoch, epoch_permutation(state.seed, epoch, n).to(device)
        idx = perm[i * bs : (i + 1) * bs][state.rank :: state.world]  # this process's shard of the batch
        return x_train[idx], y_train[idx]

    def interval_means() -> dict[str, float]:
        """Mean losses since the last row (one host sync); stops on NaN/Inf."""
        sums = mean_over_ranks(state.loss_sum, state.world)  # every rank sees the same row, stops together
        row = dict(zip(LOSS_COLUMNS, (sums / max(state.loss_count, 1)).tolist(), strict=True))
        for name, v in row.items():
            if not np.isfinite(v):
                raise DivergenceError(f"training diverged: {name} is {v} at step {state.step}")
        return row

    def flush() -> dict[str, float]:
        row = interval_means()
        state.loss_sum.zero_()
        state.loss_count = 0
        return row

    # With several processes every rank takes part in checkpoints (they gather noise states) and in the
    # stop decision (a signal may reach the ranks at different steps); only callers on rank 0 save.
    checkpointing = on_checkpoint is not None or state.world > 1

    def save_checkpoint() -> None:
        interval_means()  # never save a diverged state as the last good one
        state.seconds = seconds_before + time.perf_counter() - t0
        ckpt = checkpoint(state)
        if on_checkpoint:
            on_checkpoint(state.step, ckpt)

    def stop_wanted() -> bool:
        return any_rank(stop_requested(), state.world, device)

    def out_of_time() -> bool:
        """train.max_seconds: a wall-clock budget, checked at loss rows (a whole run, resumes included)."""
        if not cfg.max_seconds or state.step % cfg.log_every:
            return False
        # every rank must stop at the same step
        late = any_rank(seconds_before + time.perf_counter() - t0 >= cfg.max_seconds, state.world, device)
        if late and fid and cfg.fid_every and state.step % cfg.fid_every:
            score_fid()  # the curve ends where training does
        if late and checkpointing and state.step % cfg.checkpoint_every:
            save_checkpoint()
        return late

    def score_fid() -> None:
        value = fid(state.sampler)
        seconds = seconds_before + time.perf_counter() - t0  # the run's training seconds so far
        state.fid_history.append({"step": state.step, "fid": value, "seconds": seconds})
        if on_fid:
            on_fid(state.step, value)

    bar = tqdm(
        total=cfg.steps,
        initial=state.step,
        desc="train",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    try:
        # A run that already spent its train.max_seconds (resumed from its final checkpoint) trains no more.
        while state.step < cfg.steps and not (cfg.max_seconds and seconds_before >= cfg.max_seconds):
            if stop_wanted():
                save_checkpoint()
                raise StopRequested(state.step)
            base = state.step * cfg.d_steps
            state.loss_sum += train_step(state, loss, [batch(base + k) for k in range(cfg.d_steps)])
            state.loss_count += 1
            state.step += 1
            bar.update(1)
            if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                last = {"step": state.step, **flush()}
                state.history.append(last)
                bar.set_postfix(loss_d=f"{last['loss_d']:.3f}", loss_g=f"{last['loss_g']:.3f}")
                if on_log:
                    on_log(state.step, last)
            if on_images and (state.step % cfg.image_every == 0 or state.step == cfg.steps):
                on_images(state.step, generate(state.sampler, z_fixed, y_fixed))
            if fid and cfg.fid_every and (state.step % cfg.fid_every == 0 or state.step == cfg.steps):
                score_fid()
            if checkpointing and (state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps):
                save_checkpoint()
            if out_of_time():
                break
    finally:
        bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds_this_process = time.perf_counter() - t0
    state.seconds = seconds_before + seconds_this_process
    # A run resumed from its final checkpoint trains nothing; its losses and timing are the run's so far.
    last = state.history[-1] if state.history else {}
    return TrainResult(
        steps=state.step,
        seconds=state.seconds,
        images_per_second=state.step * bs * cfg.d_steps / state.seconds if state.seconds > 0 else 0.0,
        final={k: v for k, v in last.items() if k != "step"},
        device=str(device),
        resumed_from=start_step,
        seconds_this_process=seconds_this_process,
    )


def fid_rows(state: GANState, reference: float | None) -> list[dict[str, float]]:
    """The FID curve for metrics/train_fid.csv (FID_COLUMNS): step, the sampling generator's fid_inf and that of
    as many random real training images, the floor. Seconds stay out (they differ from run to run and the CSV
    is byte-reproducible); MLflow has them."""
    if reference is None:
        return []
    return [dict(zip(FID_COLUMNS, (r["step"], r["fid"], reference), strict=True)) for r in state.fid_history]


def run_summary(result: TrainResult, state: GANState, run_id: str, fid_reference: float | None) -> dict[str, Any]:
    """metrics/train.json: the run's steps, time and last losses (and its last FID when monitored).

    mlflow_run_id: the sample and evaluate stages add their pictures and scores to this run. train_seconds and
    images/s are the whole run's (over resumed processes); resumed_from_step > 0 says the last process
    started from a checkpoint and how long it ran.
    """
    rows = fid_rows(state, fid_reference)
    fid = (
        {
            "fid_during_training": round(rows[-1]["fid_inf_generated"], 4),
            "fid_during_training_real": round(fid_reference, 4),
            "fid_samples": state.cfg.fid_samples,
        }
        if rows
        else {}
    )
    return {
        "mlflow_run_id": run_id,
        "steps": result.steps,
        "train_seconds": round(result.seconds, 2),
        "device": result.device,
        "images_per_second": round(result.images_per_second, 1),
        "resumed_from_step": result.resumed_from,
        "seconds_this_process": round(result.seconds_this_process, 2),
        **fid,
        **{f"final_{k}": round(v, 6) for k, v in result.final.items()},
    }


def finalize_sampler(state: GANState, device: torch.device) -> nn.Module:
    """The generator to save: the EMA copy with its BatchNorm statistics recomputed, else G."""
    if state.g_ema is not None:
        recalibrate_batchnorm(state.g_ema, state.cfg.z_dim, state.cfg.conditional, state.seed + 3, device)
    return state.sampler


# ---- the saved generator (format and loading live in mnistgan.gan.sample) ---------------------------------


def generator_file(state: GANState, sampler: nn.Module) -> dict[str, Any]:
    """What the sample stage needs: the weights and the config that rebuilds their module."""
    return make_generator_file(state.cfg, state.seed, state.step, state.g_ema is not None, sampler)
