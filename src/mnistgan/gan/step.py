"""One training step of the GAN and the state it updates: pure logic, no files, no MLflow.

`GANState` holds everything a checkpoint must keep to continue exactly (models, optimizers, the noise
stream, the loss sums); `build_state` makes it from the config and seed. `step_arithmetic` is the one copy
of a step's arithmetic, which `train_step` (the one training step, on the CPU and on CUDA) calls. The loop
around it lives in mnistgan.gan.loop, the checkpoint format in mnistgan.gan.checkpoint.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from mnistgan.config import TrainConfig
from mnistgan.data import N_CLASSES, SHAPES
from mnistgan.gan.losses import Loss, gradient_penalty, r1_penalty
from mnistgan.gan.models import build_gan
from mnistgan.runtime import allreduce_grads


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
    g, d = build_gan(cfg.model, cfg.z_dim, cfg.d_norm, cfg.conditional, cfg.g_width, cfg.d_width, cfg.g_upsample)
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
    penalty."""
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


def r1_due(cfg: TrainConfig, step: int) -> bool:
    """Lazy R1: the penalty on every r1_every-th step only (scaled by r1_every, so its average pull is the same)."""
    return cfg.r1_weight > 0 and step % cfg.r1_every == 0


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """The share of the base lrs used at `step` (0-based): 1, then linearly down to 0 at cfg.steps after
    lr_decay_from x steps. A function of the step alone, so a resumed run continues the same schedule."""
    start = cfg.lr_decay_from * cfg.steps
    if cfg.lr_decay_from <= 0 or step < start:
        return 1.0
    return max(0.0, (cfg.steps - step) / (cfg.steps - start))


def topk_count(cfg: TrainConfig, step: int, batch: int) -> int:
    """Top-k G updates (Sinha et al. 2020): how many of a batch's fakes, those D rates most real, the G loss
    keeps at `step`: max(topk_min, topk_decay^epoch) of the batch, epoch = images seen / 60,000."""
    if cfg.topk_min >= 1:
        return batch
    epoch = step * cfg.batch_size * cfg.d_steps / SHAPES["x_train"][0]
    return max(1, math.ceil(batch * max(cfg.topk_min, cfg.topk_decay**epoch)))


def set_learning_rates(state: GANState) -> None:
    """Both optimizers at lr_factor of their base lr for the coming step (only with lr_decay_from > 0)."""
    f = lr_factor(state.cfg, state.step)
    for opt, base in ((state.opt_g, state.cfg.lr), (state.opt_d, state.cfg.lr_d or state.cfg.lr)):
        for group in opt.param_groups:
            group["lr"] = base * f


def step_arithmetic(
    state: GANState,
    loss: Loss,
    batches: Batches,
    draws: list[Draw],
) -> torch.Tensor:
    """d_steps discriminator updates (one real batch each) then one generator update; no EMA.

    `train_step` calls it with fresh draws.
    batches: d_steps pairs of real images (B, 1, 28, 28) in [-1, 1] and labels (B,); draws: their noise.
    The last discriminator update's fakes are reused for the generator update (one G forward saved).
    Returns (5,) device tensor: loss_d, loss_g, mean real logit, mean fake logit, and the gradient penalty
    (wgan-gp) or the R1 penalty of an R1 step.
    """
    cfg = state.cfg
    g, d = state.g, state.d
    gp = torch.zeros((), device=batches[0][0].device)
    r1_step = r1_due(cfg, state.step)
    for i, ((real, y_all), (z, y_fake, eps)) in enumerate(zip(batches, draws, strict=True)):
        y_real = y_all if cfg.conditional else None
        fake = g(z, y_fake)  # (B, 1, 28, 28), keeps its graph for the generator update
        logit_real = d(real, y_real)  # (B,)
        logit_fake = d(fake.detach(), y_fake)  # (B,)
        loss_d = loss.d(logit_real, logit_fake)
        if loss.gradient_penalty:
            # Interpolates carry the real labels: the penalty constrains D(., y_real) between the two.
            gp = gradient_penalty(lambda x: d(x, y_real), real, fake, eps)  # noqa: B023
            loss_d = loss_d + cfg.gp_weight * gp
        if r1_step and i == 0:  # the first D update of an R1 step
            gp = r1_penalty(lambda x: d(x, y_real), real)  # noqa: B023
            loss_d = loss_d + 0.5 * cfg.r1_weight * cfg.r1_every * gp
        state.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        allreduce_grads(state.d, state.world)
        state.opt_d.step()

    state.d.requires_grad_(False)  # the generator update needs gradients through D, not for D's weights
    try:
        logit_g = d(fake, y_fake)  # (B,)
        k = topk_count(cfg, state.step, len(logit_g))
        loss_g = loss.g(logit_g if k == len(logit_g) else logit_g.topk(k).values)  # (k,): the fakes D rates best
        state.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        allreduce_grads(state.g, state.world)
        state.opt_g.step()
    finally:
        state.d.requires_grad_(True)
    return torch.stack(
        [loss_d.detach(), loss_g.detach(), logit_real.detach().mean(), logit_fake.detach().mean(), gp.detach()]
    )


def update_sampler(state: GANState) -> None:
    """The EMA generator's update after step `state.step` (decay ramp: `ema_decay`)."""
    if state.g_ema is not None:
        update_ema(state.g_ema, state.g, ema_decay(state.cfg.ema, state.cfg.ema_warmup, state.step))


def train_step(state: GANState, loss: Loss, batches: Batches) -> torch.Tensor:
    """The plain eager step: draw the noise, `step_arithmetic`, then the EMA update; (5,) losses."""
    device = batches[0][0].device
    if state.cfg.lr_decay_from > 0:
        set_learning_rates(state)
    draws = [draw_noise(state, real.shape[0], device, loss.gradient_penalty) for real, _ in batches]
    out = step_arithmetic(state, loss, batches, draws)
    update_sampler(state)
    return out
