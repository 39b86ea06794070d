"""The fast training step: `step.train_step`'s math, arranged so a GPU runs it at the speed of its kernels.

The arithmetic is not restated here: the step calls `step.step_arithmetic`, the plain step's own code,
with the noise drawn into static buffers, the autocast context and (optionally) compiled forwards. This
module owns only those buffers, the memory layout and the graph capture.

`make_fast_step(state, loss)` returns a callable with `train_step`'s contract: it takes `d_steps` pairs of
real images (B, 1, 28, 28) and labels (B,), does the discriminator updates and one generator update
(reusing the last fakes), updates the EMA generator, and returns a (5,) device tensor (loss_d, loss_g,
mean real logit, mean fake logit, gradient penalty). `loop.make_step_fn` uses it when `train.fast` is
"on", or "auto" on CUDA.

What it does on CUDA (`FastOptions.for_device`):
- bf16 autocast for the models' forward and backward passes. The losses and the logged values are
  computed from fp32 copies of the logits outside autocast; BatchNorm keeps fp32 statistics as autocast
  does. The autocast weight cache is off: D's weights change between its uses within one step (with
  d_steps > 1 a cached bf16 copy would be stale).
- channels_last models and inputs (cuDNN's tensor-core convolutions want NHWC); the optimizer state of a
  resumed run is re-laid out to match, so the fused Adam kernel sees one layout.
- fused Adam (build_state already asks for it on CUDA), made `capturable` so its step can live in a graph.
- No host synchronisation inside the step: nothing reads a device value; the caller sums the returned
  losses on the device and reads them every `log_every` steps (loop.train does).
- CUDA graphs: the whole step (D forward/backward/Adam, G forward/backward/Adam, EMA) is captured once per
  input shape with torch.cuda.graphs and replayed. We chose manual capture over
  torch.compile(mode="reduce-overhead") because (1) the step calls .backward() and optimizer.step(),
  where Dynamo breaks the graph and reduce-overhead then makes several graphs with Python in between,
  while one manual capture holds the entire step in one launch; (2) it needs no compilation (seconds
  instead of a minute per batch size; the time-to-quality clock includes it); (3) the module,
  parameter and optimizer objects stay the very ones in GANState, so `checkpoint.checkpoint`/`checkpoint.restore` work
  unchanged. The first `warmup` steps of each shape run eagerly on a side stream (as the CUDA graph docs
  require, e.g. for cuDNN autotuning and lazy optimizer state); they are real training steps, not
  throw-away ones, so no step is lost or repeated.
- Failures cost a warning, not the run: if capture or compilation fails, one warning is printed, the
  modules and optimizers are put back as the plain path has them, and training continues on the plain
  step (step.train_step) from that very step on; loop.make_step_fn does the same when the fast step
  cannot be built at all.
- Checkpoints: `checkpoint.checkpoint` saves the optimizers with the `capturable` flag they were built with
  (a state-dict hook), so a checkpoint of a fast run resumes on the plain or the CPU path; an optimizer
  reloaded after capture (`checkpoint.restore` after make_fast_step) is noticed by a load hook, which re-lays
  out its state and drops the stale graphs (they are captured again).
- Random draws: the noise of a step (z, fake labels, GP mixing weights) is drawn outside the graph from
  `state.noise`, in exactly the order train_step draws it, into static buffers. So the fast path uses
  the same random numbers as the plain path, and the generator state in a checkpoint stays exact.
- `torch.compile` of the modules' forwards (fusing BatchNorm/activation kernels; captured inside the same
  graph) is available as `FastOptions(compile=True)` or MNISTGAN_FAST_COMPILE=1 for measurement; it is
  off by default (compile time counts against time-to-quality, and it was not measured on a GPU yet).
- `train.deterministic: true`: cuDNN autotuning (benchmark mode) and compilation/autotuning stay off,
  cuDNN is made deterministic and torch.use_deterministic_algorithms(True) is set (with
  CUBLAS_WORKSPACE_CONFIG, if CUDA was not initialised yet). bf16, channels_last and graph replay are
  deterministic and stay on. Otherwise cudnn.benchmark is turned on (process-wide).

On the CPU (`fast: on` with a CPU device) the step is the same eager code in fp32 with no graphs and no
channels_last: on the 2-core CPU, channels_last was not faster than NCHW and bf16 autocast was slower
than fp32 (BENCHMARKS.md). It gives the same bytes as `train_step` (tests/test_fast.py checks this), and
runs at the same speed. The GPU options can still be forced on the CPU (FastOptions), which the tests use
to check the bf16/channels_last arithmetic and the capture fallback without a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mnistgan.data import N_CLASSES
from mnistgan.gan.losses import Loss
from mnistgan.gan.step import Batches, GANState, step_arithmetic, train_step, update_sampler
from mnistgan.runtime import set_determinism

_STATE_KEYS_LIKE_PARAM = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


@dataclass(frozen=True)
class FastOptions:
    """What the fast step does; `for_device` gives the defaults."""

    autocast: bool = False  # bf16 autocast of the model passes (losses stay fp32)
    channels_last: bool = False  # NHWC memory format for models and inputs
    graphs: bool = False  # capture the whole step in a CUDA graph and replay it
    compile: bool = False  # torch.compile the module forwards (inside the graph when graphs is on)
    warmup: int = 3  # eager steps per input shape before capture

    @staticmethod
    def for_device(device: torch.device, deterministic: bool = False) -> FastOptions:
        if device.type == "cuda":
            want_compile = os.environ.get("MNISTGAN_FAST_COMPILE", "") == "1" and not deterministic
            return FastOptions(autocast=True, channels_last=True, graphs=True, compile=want_compile)
        return FastOptions()  # CPU: the plain arithmetic (measured: nothing else was faster here)


class FastStep:
    """Callable step; keeps one set of static buffers (and one CUDA graph) per input shape."""

    def __init__(self, state: GANState, loss: Loss, options: FastOptions | None = None):
        self.state, self.loss = state, loss
        self.device = next(state.g.parameters()).device
        self.options = options or FastOptions.for_device(self.device, state.cfg.deterministic)
        self.is_cuda = self.device.type == "cuda"
        self.graphs_failed = False  # set once capture failed
        self.compile_failed = False  # set once compilation failed
        self.fell_back = False  # after either: the plain step (step.train_step) from then on
        self._slots: dict[tuple, _Slot] = {}
        self._side_stream: torch.cuda.Stream | None = None  # eager warm-up steps before capture
        self._setup_determinism()
        self._prepare_modules()
        self._prepare_optimizers()
        self._g_fwd: Callable[..., torch.Tensor] = state.g
        self._d_fwd: Callable[..., torch.Tensor] = state.d
        if self.options.compile:
            self._g_fwd, self._d_fwd = torch.compile(state.g), torch.compile(state.d)

    # ---- setup ------------------------------------------------------------------------------------

    def _setup_determinism(self) -> None:
        if not self.is_cuda:
            return
        # deterministic: no autotuning; otherwise cuDNN autotunes each conv shape once (during warm-up)
        set_determinism(self.state.cfg.deterministic, cuda=True)
        if self.state.cfg.deterministic and self.options.compile:
            self.options = dataclasses.replace(self.options, compile=False)

    def _prepare_modules(self) -> None:
        if not self.options.channels_last:
            return
        for m in (self.state.g, self.state.d, self.state.g_ema):
            if m is not None:
                m.to(memory_format=torch.channels_last)  # in place: the same Parameter objects
        for opt in (self.state.opt_g, self.state.opt_d):
            _match_state_layout(opt)

    def _prepare_optimizers(self) -> None:
        want_capturable = self.options.graphs and self.is_cuda
        ref = weakref.ref(self)
        for opt in (self.state.opt_g, self.state.opt_d):
            if not hasattr(opt, "_mnistgan_saved_capturable"):
                # Checkpoints keep the flags the optimizer was built with, so a run resumed on the plain
                # or the CPU path does not inherit capturable=True (which needs CUDA params).
                opt._mnistgan_saved_capturable = [g.get("capturable", False) for g in opt.param_groups]
                opt.register_state_dict_post_hook(_restore_capturable_in_saved)
            if want_capturable:
                for group in opt.param_groups:
                    group["capturable"] = True

            def after_load(optimizer: torch.optim.Optimizer, ref: weakref.ref = ref) -> None:
                step = ref()
                if step is not None:
                    step._optimizer_reloaded(optimizer)

            opt.register_load_state_dict_post_hook(after_load)

    def _optimizer_reloaded(self, opt: torch.optim.Optimizer) -> None:
        """load_state_dict replaced the optimizer's state tensors: captured graphs point at the old ones."""
        if self.options.graphs and self.is_cuda:
            for group in opt.param_groups:
                group["capturable"] = True
        if self.options.channels_last:
            _match_state_layout(opt)
        for slot in self._slots.values():
            slot.graph, slot.out, slot.eager_steps = None, None, 0

    # ---- the step ---------------------------------------------------------------------------------

    def __call__(self, batches: Batches) -> torch.Tensor:
        if self.fell_back:
            return train_step(self.state, self.loss, batches)
        out = self._step(batches)
        # The EMA update stays outside the captured graph: the warm-up ramp changes the decay every step,
        # and a captured graph would replay the first one's constant.
        update_sampler(self.state)
        return out

    def _step(self, batches: Batches) -> torch.Tensor:
        slot = self._slot(batches)
        self._fill(slot, batches)
        if not (self.options.graphs and not self.graphs_failed):
            return self._eager(slot)
        if slot.graph is not None:
            slot.graph.replay()
            return slot.out.clone()  # the static output is overwritten by the next replay
        if slot.eager_steps < self.options.warmup:
            slot.eager_steps += 1
            return self._eager(slot, side_stream=True)
        return self._capture_and_replay(slot)

    def _slot(self, batches: Batches) -> _Slot:
        key = tuple((tuple(x.shape), x.dtype, tuple(y.shape)) for x, y in batches)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot.allocate(batches, self.state.cfg.z_dim, self.device, self.options)
        return slot

    def _fill(self, slot: _Slot, batches: Batches) -> None:
        """Copy the batches into the static buffers and draw the step's noise in train_step's order."""
        cfg, gen = self.state.cfg, self.state.noise
        for k, (real, y_all) in enumerate(batches):
            slot.x[k].copy_(real)
            if cfg.conditional:
                slot.y[k].copy_(y_all)
            torch.randn(slot.z[k].shape, generator=gen, device=self.device, out=slot.z[k])
            if cfg.conditional:
                torch.randint(0, N_CLASSES, slot.y_fake[k].shape, generator=gen, device=self.device, out=slot.y_fake[k])
            if self.loss.gradient_penalty:
                torch.rand(slot.eps[k].shape, generator=gen, device=self.device, out=slot.eps[k])

    def _eager(self, slot: _Slot, side_stream: bool = False) -> torch.Tensor:
        if not (self.options.graphs and self.is_cuda):
            return self._eager_on_stream(slot, side_stream)
        with warnings.catch_warnings():
            # Adam warns once that capturable=True "can impair performance" when it runs uncaptured: here
            # that is by design (warm-up before capture, or the fallback; for fused Adam it costs nothing).
            warnings.filterwarnings("ignore", message=r".*capturable=True.*", category=UserWarning)
            return self._eager_on_stream(slot, side_stream)

    def _eager_on_stream(self, slot: _Slot, side_stream: bool) -> torch.Tensor:
        if side_stream and self.is_cuda:
            if self._side_stream is None:
                self._side_stream = torch.cuda.Stream(self.device)
            stream = self._side_stream
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                out = self._body_guarded(slot)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            out.record_stream(torch.cuda.current_stream(self.device))
            return out
        return self._body_guarded(slot)

    def _body_guarded(self, slot: _Slot) -> torch.Tensor:
        if not self.options.compile:
            return self._body(slot)
        try:
            return self._body(slot)
        except Exception as e:  # a compile error surfaces at the first call
            self.compile_failed = True
            return self._fall_back(slot, f"torch.compile failed ({first_line(e)})")

    def _capture_and_replay(self, slot: _Slot) -> torch.Tensor:
        try:
            self._zero_grads()  # as the CUDA graph docs do: grads are then allocated from the graph's pool
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self._body(slot)
        except Exception as e:
            self.graphs_failed = True
            self._zero_grads()  # grads made during the failed capture are garbage
            return self._fall_back(slot, f"CUDA graph capture failed ({first_line(e)})")
        slot.graph, slot.out = graph, out
        graph.replay()  # capture records kernels without running them: this is the step itself
        return out.clone()

    def _fall_back(self, slot: _Slot, why: str) -> torch.Tensor:
        """Warn once, undo the fast path's changes to the modules and optimizers, and do this step (its
        noise is already in the buffers) and every later one with the plain step's arithmetic."""
        warnings.warn(f"mnistgan.gan.fast: {why}; training continues on the plain step", RuntimeWarning, stacklevel=4)
        self.fell_back = True
        if self.options.channels_last:
            for m in (self.state.g, self.state.d, self.state.g_ema):
                if m is not None:
                    m.to(memory_format=torch.contiguous_format)
        for opt in (self.state.opt_g, self.state.opt_d):
            for group, capturable in zip(opt.param_groups, opt._mnistgan_saved_capturable, strict=True):
                group["capturable"] = capturable
            _match_state_layout(opt)
        self.options = FastOptions()
        self._g_fwd, self._d_fwd = self.state.g, self.state.d
        x = [t.contiguous() for t in slot.x]
        return step_arithmetic(self.state, self.loss, list(zip(x, slot.y, strict=True)), self._draws(slot))

    def _zero_grads(self) -> None:
        for opt in (self.state.opt_g, self.state.opt_d):
            opt.zero_grad(set_to_none=True)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.options.autocast:
            return contextlib.nullcontext()
        # cache_enabled=False: D's weights change between its uses within one step (see module doc).
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)

    def _draws(self, slot: _Slot) -> list:
        conditional, gp = self.state.cfg.conditional, self.loss.gradient_penalty
        return [
            (slot.z[k], slot.y_fake[k] if conditional else None, slot.eps[k] if gp else None)
            for k in range(len(slot.z))
        ]

    def _body(self, slot: _Slot) -> torch.Tensor:
        """step.step_arithmetic on the static buffers, with the fast options' forwards and autocast."""
        batches = list(zip(slot.x, slot.y, strict=True))
        return step_arithmetic(
            self.state, self.loss, batches, self._draws(slot), g=self._g_fwd, d=self._d_fwd, autocast=self._autocast
        )


@dataclass
class _Slot:
    """Static input buffers of one input shape, and the graph captured for them."""

    x: list[torch.Tensor]  # d_steps x (B, 1, 28, 28) real images
    y: list[torch.Tensor]  # d_steps x (B,) real labels (conditional only)
    z: list[torch.Tensor]  # d_steps x (B, z_dim)
    y_fake: list[torch.Tensor]  # d_steps x (B,) fake labels (conditional only)
    eps: list[torch.Tensor]  # d_steps x (B, 1, 1, 1) GP mixing weights (gradient penalty only)
    graph: Any = None
    out: torch.Tensor | None = None
    eager_steps: int = 0

    @staticmethod
    def allocate(batches: Batches, z_dim: int, device: torch.device, options: FastOptions) -> _Slot:
        fmt = torch.channels_last if options.channels_last else torch.contiguous_format
        xs, ys, zs, yfs, epss = [], [], [], [], []
        for x, y in batches:
            b = x.shape[0]
            xs.append(torch.empty(x.shape, dtype=x.dtype, device=device, memory_format=fmt))
            ys.append(torch.empty(y.shape, dtype=y.dtype, device=device))
            zs.append(torch.empty(b, z_dim, device=device))
            yfs.append(torch.empty(b, dtype=torch.int64, device=device))
            epss.append(torch.empty(b, 1, 1, 1, dtype=x.dtype, device=device))
        return _Slot(xs, ys, zs, yfs, epss)


def _match_state_layout(opt: torch.optim.Optimizer) -> None:
    """Give each optimizer state tensor its parameter's memory layout (fused kernels assume one layout)."""
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if not st:
                continue
            for key in _STATE_KEYS_LIKE_PARAM:
                t = st.get(key)
                if isinstance(t, torch.Tensor) and t.shape == p.shape and t.stride() != p.stride():
                    st[key] = torch.empty_like(p, dtype=t.dtype).copy_(t)


def _restore_capturable_in_saved(opt: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    saved = getattr(opt, "_mnistgan_saved_capturable", None)
    if saved is not None and len(saved) == len(state_dict["param_groups"]):
        for group, value in zip(state_dict["param_groups"], saved, strict=True):
            if "capturable" in group:
                group["capturable"] = value
    return state_dict


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def make_fast_step(
    state: GANState, loss: Loss, options: FastOptions | None = None
) -> Callable[[Batches], torch.Tensor]:
    """The fast step for `state` (a step.GANState): same contract and arithmetic as step.train_step.

    Call it after any `checkpoint.restore` of the state (loop.train does); an optimizer reloaded later is
    detected and its graph re-captured. `options` defaults to FastOptions.for_device.
    """
    return FastStep(state, loss, options)
