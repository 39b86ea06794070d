"""The GAN training loop: pure logic, no files, no MLflow, no argv.

Everything random comes from the seed: the data order of epoch e is a permutation drawn from a generator
seeded with (seed, e), and all noise comes from one explicit generator whose state is saved in every
checkpoint. So a run resumed from a checkpoint continues with exactly the batches and noise the
uninterrupted run would have used (byte-identical weights on the CPU).

Logging, image grids, checkpoints and stop requests are callbacks the caller passes in.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mnistgan.config import TrainConfig, to_dict
from mnistgan.losses import Loss, get_loss, gradient_penalty
from mnistgan.models import N_CLASSES, build_gan
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device: cuda was asked for but CUDA is not available; use auto or cpu")
    return torch.device(name)


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


# ---- checkpoints --------------------------------------------------------------------------------------


def _rng_snapshot() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"])},
        "python": random.getstate(),
    }  # fmt: skip


def _rng_restore(snap: dict[str, Any]) -> None:
    torch.set_rng_state(snap["torch"])
    if snap["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(snap["cuda"])
    key = snap["numpy"]["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, snap["numpy"]["pos"]))
    state = snap["python"]
    random.setstate((state[0], tuple(state[1]), state[2]))


def _gather_noise_states(state: GANState) -> list[torch.Tensor]:
    """Every rank's noise generator state (a collective: all ranks must call checkpoint together)."""
    if state.world == 1:
        return [state.noise.get_state()]
    import torch.distributed as dist

    states: list[Any] = [None] * state.world
    dist.all_gather_object(states, state.noise.get_state())
    return states


def allreduce_grads(module: nn.Module, world: int) -> None:
    """Average gradients over data-parallel processes: one flat all-reduce per model.

    Done by hand rather than with DistributedDataParallel because a GAN step runs D several times before
    one backward, and WGAN-GP differentiates through D twice, which DDP's reducer does not support.
    """
    if world == 1:
        return
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world
    for g, avg in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
        g.copy_(avg)


def checkpoint(state: GANState) -> dict[str, Any]:
    return {
        "format": "mnistgan-checkpoint-1",
        "train_config": to_dict(state.cfg),
        "seed": state.seed,
        "step": state.step,
        "g": state.g.state_dict(),
        "d": state.d.state_dict(),
        "g_ema": state.g_ema.state_dict() if state.g_ema is not None else None,
        "opt_g": state.opt_g.state_dict(),
        "opt_d": state.opt_d.state_dict(),
        "noise_rng": state.noise.get_state(),
        "noise_rng_ranks": _gather_noise_states(state),
        "rng": _rng_snapshot(),
        "history": state.history,
        "fid_history": state.fid_history,
        "loss_sum": state.loss_sum,
        "loss_count": state.loss_count,
        "train_seconds": state.seconds,
    }


def restore(state: GANState, ckpt: dict[str, Any]) -> None:
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


# ---- one step -----------------------------------------------------------------------------------------


def _noise(state: GANState, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    z = torch.randn(n, state.cfg.z_dim, generator=state.noise, device=device)  # (n, z_dim)
    y = torch.randint(0, N_CLASSES, (n,), generator=state.noise, device=device) if state.cfg.conditional else None
    return z, y


def ema_decay(decay: float, warmup: bool, step: int) -> float:
    """The EMA decay used after update `step` (0-based): min(decay, (1+t)/(10+t)) with the warm-up.

    Without a ramp a 0.999 average is still two-thirds the random initial weights after 400 steps
    (0.999^400 = 0.67); the ramp starts at 0.1 and reaches 0.999 only after about 9,000 steps.
    """
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.lerp_(p, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


def train_step(state: GANState, loss: Loss, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """d_steps discriminator updates (one real batch each) then one generator update.

    batches: d_steps pairs of real images (B, 1, 28, 28) in [-1, 1] and labels (B,).
    The last discriminator update's fakes are reused for the generator update (one G forward saved).
    Returns (5,) device tensor: loss_d, loss_g, mean real logit, mean fake logit, gradient penalty.
    """
    cfg, g, d = state.cfg, state.g, state.d
    device = batches[0][0].device
    gp = torch.zeros((), device=device)
    for real, y_all in batches:
        y_real = y_all if cfg.conditional else None
        z, y_fake = _noise(state, real.shape[0], device)
        fake = g(z, y_fake)  # (B, 1, 28, 28), keeps its graph for the generator update
        logit_real = d(real, y_real)  # (B,)
        logit_fake = d(fake.detach(), y_fake)  # (B,)
        loss_d = loss.d(logit_real, logit_fake)
        if loss.gradient_penalty:
            # Interpolates carry the real labels: the penalty constrains D(., y_real) between the two.
            gp = gradient_penalty(lambda x: d(x, y_real), real, fake, state.noise)  # noqa: B023
            loss_d = loss_d + cfg.gp_weight * gp
        state.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        allreduce_grads(d, state.world)
        state.opt_d.step()

    d.requires_grad_(False)  # the generator update needs gradients through D, not for D's weights
    loss_g = loss.g(d(fake, y_fake))
    state.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    allreduce_grads(g, state.world)
    state.opt_g.step()
    d.requires_grad_(True)
    if state.g_ema is not None:
        update_ema(state.g_ema, g, ema_decay(cfg.ema, cfg.ema_warmup, state.step))
    return torch.stack([loss_d.detach(), loss_g.detach(), logit_real.detach().mean(),
                        logit_fake.detach().mean(), gp.detach()])  # fmt: skip


def use_fast_path(cfg: TrainConfig, device: torch.device, world: int = 1) -> bool:
    # The fast path captures whole steps in CUDA graphs; data-parallel runs use the plain step.
    return world == 1 and (cfg.fast == "on" or (cfg.fast == "auto" and device.type == "cuda"))


def make_step_fn(
    state: GANState, loss: Loss, device: torch.device
) -> Callable[[list[tuple[torch.Tensor, torch.Tensor]]], torch.Tensor]:
    """The plain eager step, or the fast path (mnistgan.fast) when the config and device call for it."""
    if use_fast_path(state.cfg, device, state.world):
        from mnistgan import fast

        return fast.make_fast_step(state, loss)
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
        sums = state.loss_sum
        if state.world > 1:  # mean over processes, so every rank sees the same row (and stops together)
            import torch.distributed as dist

            sums = sums.clone()
            dist.all_reduce(sums)
            sums /= state.world
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
        if state.world == 1:
            return stop_requested()
        import torch.distributed as dist

        flag = torch.tensor([float(stop_requested())], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def out_of_time() -> bool:
        """train.max_seconds: a wall-clock budget, checked at loss rows (a whole run, resumes included)."""
        if not cfg.max_seconds or state.step % cfg.log_every:
            return False
        late = seconds_before + time.perf_counter() - t0 >= cfg.max_seconds
        if state.world > 1:  # every rank must stop at the same step
            import torch.distributed as dist

            flag = torch.tensor([float(late)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            late = bool(flag.item())
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


def finalize_sampler(state: GANState, device: torch.device) -> nn.Module:
    """The generator to save: the EMA copy with its BatchNorm statistics recomputed, else G."""
    if state.g_ema is not None:
        recalibrate_batchnorm(state.g_ema, state.cfg.z_dim, state.cfg.conditional, state.seed + 3, device)
    return state.sampler


# ---- the saved generator (format and loading live in mnistgan.sample) ---------------------------------


def generator_file(state: GANState, sampler: nn.Module) -> dict[str, Any]:
    """What the sample stage needs: the weights and the config that rebuilds their module."""
    return make_generator_file(state.cfg, state.seed, state.step, state.g_ema is not None, sampler)
