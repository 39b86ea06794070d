"""The GAN training loop: pure logic, no files, no MLflow, no argv.

Everything random comes from the seed: the data order of epoch e is a permutation drawn from a generator
seeded with (seed, e), and all noise comes from one explicit generator whose state is saved in every
checkpoint. So a run resumed from a checkpoint continues with exactly the batches and noise the
uninterrupted run would have used (byte-identical weights on the CPU).

Logging, image grids, checkpoints and stop requests are callbacks the caller passes in.
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mnistgan.checkpoint import checkpoint
from mnistgan.config import TrainConfig
from mnistgan.losses import Loss, get_loss, gradient_penalty
from mnistgan.models import N_CLASSES, build_gan
from mnistgan.runtime import allreduce_grads, any_rank, mean_over_ranks
from mnistgan.sample import (  # noqa: F401 - generate and the file helpers are used through train too
    check_generator_file,
    fixed_noise,
    generate,
    generator_from_file,
    recalibrate_batchnorm,
)
from mnistgan.sample import generator_file as make_generator_file
from mnistgan.tensors import epoch_permutation

LOSS_COLUMNS = ("loss_d", "loss_g", "logit_real", "logit_fake", "gp")


class DivergenceError(RuntimeError):
    """A loss became NaN or Inf; the message names the step and the loss."""


class StopRequested(RuntimeError):  # noqa: N818 - it is a request, not an error condition
    """Training stopped early on request (SIGINT/SIGTERM) after saving a checkpoint."""

    def __init__(self, step: int):
        super().__init__(f"training stopped on request at step {step}; a checkpoint was saved")
        self.step = step


@dataclass
class GANState:
    """Everything a checkpoint must hold to continue training exactly."""

    cfg: TrainConfig
    seed: int
    g: nn.Module
    d: nn.Module
    g_ema: nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    noise: torch.Generator  # every random draw of the loop: z, fake labels, GP mixing weights
    rank: int = 0  # data-parallel process index (torchrun); 0 when training in one process
    world: int = 1  # number of data-parallel processes
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # loss rows so far
    fid_history: list[dict[str, float]] = field(default_factory=list)  # {"step", "fid", "seconds"} rows so far
    # Sums of the step outputs since the last loss row, kept on the device (no host sync per step) and
    # saved in checkpoints so a resumed run writes the same rows as an uninterrupted one.
    loss_sum: torch.Tensor | None = None
    loss_count: int = 0
    # Wall seconds spent in the training loop up to `step`, summed over every process that trained this
    # run (kept in checkpoints), so a resumed run reports the time and images/s of the whole run.
    seconds: float = 0.0

    @property
    def sampler(self) -> nn.Module:
        """The generator to sample from: the EMA copy when EMA is on."""
        return self.g_ema if self.g_ema is not None else self.g


def build_state(cfg: TrainConfig, seed: int, device: torch.device, rank: int = 0, world: int = 1) -> GANState:
    """Models, optimizers and the noise generator; every rank of a data-parallel run builds the same
    initial weights (same seed) and its own noise stream."""
    torch.manual_seed(seed)  # weight initialisation
    g, d = build_gan(cfg.model, cfg.z_dim, cfg.d_norm, cfg.conditional, cfg.g_width, cfg.d_width)
    g, d = g.to(device), d.to(device)
    g_ema = copy.deepcopy(g).eval().requires_grad_(False) if cfg.ema > 0 else None
    if world > 1 and device.type == "cuda":
        # BatchNorm statistics over the global batch. SyncBatchNorm needs a GPU: on CPU (gloo) each
        # process normalises its own shard. The EMA copy keeps plain BatchNorm for sampling on one rank.
        g = nn.SyncBatchNorm.convert_sync_batchnorm(g)
        d = nn.SyncBatchNorm.convert_sync_batchnorm(d)
    betas = (cfg.beta1, cfg.beta2)
    fused = device.type == "cuda"  # one kernel per optimizer step instead of one per tensor
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=betas, fused=fused)
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d or cfg.lr, betas=betas, fused=fused)
    noise = torch.Generator(device=device).manual_seed(seed + 1 + 7919 * rank)  # rank 0 = one-process stream
    return GANState(cfg, seed, g, d, g_ema, opt_g, opt_d, noise, rank, world)


# ---- one step -----------------------------------------------------------------------------------------


Draw = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]  # z, fake labels, GP mixing weights
Batches = list[tuple[torch.Tensor, torch.Tensor]]


def draw_noise(state: GANState, n: int, device: torch.device, mixing_weights: bool) -> Draw:
    """One discriminator update's random numbers, from the loop's own stream, in a fixed order:
    z (n, z_dim), fake labels (n,) when conditional, GP mixing weights (n, 1, 1, 1) when the loss has a
    penalty. The fast path draws the same numbers into its static buffers (mnistgan.fast)."""
    z = torch.randn(n, state.cfg.z_dim, generator=state.noise, device=device)
    y = torch.randint(0, N_CLASSES, (n,), generator=state.noise, device=device) if state.cfg.conditional else None
    eps = torch.rand(n, 1, 1, 1, generator=state.noise, device=device) if mixing_weights else None
    return z, y, eps


def ema_decay(decay: float, warmup: bool, step: int) -> float:
    """The EMA decay used after update `step` (0-based): min(decay, (1+t)/(10+t)) with the warm-up.

    Without a ramp a 0.999 average is still two-thirds the random initial weights after 400 steps
    (0.999^400 = 0.67); the ramp starts at 0.1 and reaches 0.999 only after about 9,000 steps.
    """
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for the weights; buffers (BatchNorm statistics) copied.
    Multi-tensor kernels: a handful of launches instead of one per tensor."""
    p_ema, p = list(ema.parameters()), list(model.parameters())
    if p_ema:
        torch._foreach_lerp_(p_ema, p, 1.0 - decay)
    b_ema, b = list(ema.buffers()), list(model.buffers())
    if b_ema:
        torch._foreach_copy_(b_ema, b)


def step_arithmetic(
    state: GANState,
    loss: Loss,
    batches: Batches,
    draws: list[Draw],
    *,
    g: Callable[..., torch.Tensor] | None = None,
    d: Callable[..., torch.Tensor] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """d_steps discriminator updates (one real batch each) then one generator update; no EMA.

    The one copy of a step's arithmetic: `train_step` calls it with fresh draws, the fast path with its
    static buffers, compiled forwards (g, d: callables standing for state.g, state.d) and bf16 autocast.
    batches: d_steps pairs of real images (B, 1, 28, 28) in [-1, 1] and labels (B,); draws: their noise.
    The last discriminator update's fakes are reused for the generator update (one G forward saved).
    Logits are taken in fp32 (a no-op without autocast). Nothing here reads a device value, so the step
    can be captured in a CUDA graph.
    Returns (5,) device tensor: loss_d, loss_g, mean real logit, mean fake logit, gradient penalty.
    """
    cfg = state.cfg
    g, d = g or state.g, d or state.d
    gp = torch.zeros((), device=batches[0][0].device)
    for (real, y_all), (z, y_fake, eps) in zip(batches, draws, strict=True):
        y_real = y_all if cfg.conditional else None
        with autocast():
            fake = g(z, y_fake)  # (B, 1, 28, 28), keeps its graph for the generator update
            logit_real = d(real, y_real).float()  # (B,)
            logit_fake = d(fake.detach(), y_fake).float()  # (B,)
        loss_d = loss.d(logit_real, logit_fake)
        if loss.gradient_penalty:
            # Interpolates carry the real labels: the penalty constrains D(., y_real) between the two.
            gp = gradient_penalty(lambda x: d(x, y_real), real, fake, eps, autocast)  # noqa: B023
            loss_d = loss_d + cfg.gp_weight * gp
        state.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        allreduce_grads(state.d, state.world)
        state.opt_d.step()

    state.d.requires_grad_(False)  # the generator update needs gradients through D, not for D's weights
    try:
        with autocast():
            logit_g = d(fake, y_fake).float()
        loss_g = loss.g(logit_g)
        state.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        allreduce_grads(state.g, state.world)
        state.opt_g.step()
    finally:
        state.d.requires_grad_(True)
    return torch.stack([loss_d.detach(), loss_g.detach(), logit_real.detach().mean(),
                        logit_fake.detach().mean(), gp.detach()])  # fmt: skip


def update_sampler(state: GANState) -> None:
    """The EMA generator's update after step `state.step` (decay ramp: `ema_decay`)."""
    if state.g_ema is not None:
        update_ema(state.g_ema, state.g, ema_decay(state.cfg.ema, state.cfg.ema_warmup, state.step))


def train_step(state: GANState, loss: Loss, batches: Batches) -> torch.Tensor:
    """The plain eager step: draw the noise, `step_arithmetic`, then the EMA update; (5,) losses."""
    device = batches[0][0].device
    draws = [draw_noise(state, real.shape[0], device, loss.gradient_penalty) for real, _ in batches]
    out = step_arithmetic(state, loss, batches, draws)
    update_sampler(state)
    return out


def use_fast_path(cfg: TrainConfig, device: torch.device, world: int = 1) -> bool:
    # The fast path captures whole steps in CUDA graphs; data-parallel runs use the plain step.
    return world == 1 and (cfg.fast == "on" or (cfg.fast == "auto" and device.type == "cuda"))


def make_step_fn(state: GANState, loss: Loss, device: torch.device) -> Callable[[Batches], torch.Tensor]:
    """The plain eager step, or the fast path (mnistgan.fast) when the config and device call for it.

    A fast path that cannot be set up (or, later, captured or compiled: see mnistgan.fast) warns once and
    training continues on the plain step rather than stopping.
    """
    if use_fast_path(state.cfg, device, state.world):
        from mnistgan import fast

        try:
            return fast.make_fast_step(state, loss)
        except Exception as e:  # noqa: BLE001 - any failure of an optimisation falls back to the plain step
            warnings.warn(f"mnistgan.fast: setting up the fast path failed ({fast.first_line(e)}); "
                          "training on the plain step", RuntimeWarning, stacklevel=2)  # fmt: skip
    return lambda batches: train_step(state, loss, batches)


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
    step_fn = make_step_fn(state, loss, device)
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

    bar = tqdm(total=cfg.steps, initial=state.step, desc="train", unit="step", disable=not progress,
               dynamic_ncols=True, mininterval=1.0)  # fmt: skip
    try:
        # A run that already spent its train.max_seconds (resumed from its final checkpoint) trains no more.
        while state.step < cfg.steps and not (cfg.max_seconds and seconds_before >= cfg.max_seconds):
            if stop_wanted():
                save_checkpoint()
                raise StopRequested(state.step)
            base = state.step * cfg.d_steps
            state.loss_sum += step_fn([batch(base + k) for k in range(cfg.d_steps)])
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
    """The FID curve for metrics/train_fid.csv: step, FID and the real floor. Seconds stay out (they differ
    from run to run and the CSV is byte-reproducible); MLflow has them."""
    if reference is None:
        return []
    return [{"step": r["step"], "fid": r["fid"], "fid_real": reference} for r in state.fid_history]


def run_summary(result: TrainResult, state: GANState, run_id: str, fid_reference: float | None) -> dict[str, Any]:
    """metrics/train.json: the run's steps, time and last losses (and its last FID when monitored).

    mlflow_run_id: the sample and evaluate stages add their pictures and scores to this run. train_seconds and
    images/s are the whole run's (over resumed processes); resumed_from_step > 0 says the last process
    started from a checkpoint and how long it ran.
    """
    rows = fid_rows(state, fid_reference)
    fid = {"fid_during_training": round(rows[-1]["fid"], 4), "fid_during_training_real": round(fid_reference, 4),
           "fid_samples": state.cfg.fid_samples} if rows else {}  # fmt: skip
    return {"mlflow_run_id": run_id, "steps": result.steps, "train_seconds": round(result.seconds, 2),
            "device": result.device, "images_per_second": round(result.images_per_second, 1),
            "resumed_from_step": result.resumed_from, "seconds_this_process": round(result.seconds_this_process, 2),
            **fid, **{f"final_{k}": round(v, 6) for k, v in result.final.items()}}  # fmt: skip


def finalize_sampler(state: GANState, device: torch.device) -> nn.Module:
    """The generator to save: the EMA copy with its BatchNorm statistics recomputed, else G."""
    if state.g_ema is not None:
        recalibrate_batchnorm(state.g_ema, state.cfg.z_dim, state.cfg.conditional, state.seed + 3, device)
    return state.sampler


# ---- the saved generator (format and loading live in mnistgan.sample) ---------------------------------


def generator_file(state: GANState, sampler: nn.Module) -> dict[str, Any]:
    """What the sample stage needs: the weights and the config that rebuilds their module."""
    return make_generator_file(state.cfg, state.seed, state.step, state.g_ema is not None, sampler)
