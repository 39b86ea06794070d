"""Step throughput on this machine (the `throughput` and `matrix` sections of mnistgan.lab.bench): how many
training images per second each step variant processes at each batch size, against the best rate of a
large matrix product, with the machine it ran on."""

from __future__ import annotations

import datetime as _dt
import gc
import os
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mnistgan import numerics
from mnistgan.config import TrainConfig
from mnistgan.gan.losses import get_loss
from mnistgan.gan.step import build_state, train_step
from mnistgan.lab.flops import gan_macs, train_flops_per_image

VARIANTS = ("plain",)  # step.train_step: the one training step (a fast path was measured no faster, and removed)


def throughput_config(model: str, batch_size: int) -> Any:
    """The recipe timed: params.yaml's train section; the dcgan-large model with its BatchNorm D."""
    d_norm = "batch" if model == "dcgan-large" else TrainConfig.d_norm
    return TrainConfig(model=model, d_norm=d_norm, batch_size=batch_size)


# ---- device helpers ----------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cleanup(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def machine_info(device: torch.device) -> dict[str, Any]:
    """The platform fingerprint (mnistgan.numerics: CPU, each library's path, threads, versions, OS) with the
    date, the core count, the load and, on a GPU, the card: where a benchmark ran."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        **numerics.fingerprint("native", str(device)),
        "cuda": torch.version.cuda,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            card=props.name,
            card_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            cudnn=torch.backends.cudnn.version(),
        )
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


def machine_line(info: dict[str, Any] | None = None) -> str:
    """One line of `machine_info` for a report's header."""
    i = info or machine_info(torch.device("cpu"))
    return (
        f"{i['cpu']} ({i['machine']}; ATen {i['aten']}, oneDNN {i['onednn']}, MKL {i['mkl']}), {i['threads']} "
        f"torch threads, Python {i['python']}, torch {i['torch']}, numpy {i['numpy']}"
    )


def matmul_rate(device: torch.device, n: int, reps: int = 10) -> dict[str, Any]:
    """Best measured FLOP/s of an n x n x n product: bf16 on CUDA, fp32 on the CPU (random data)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    reps = reps if device.type == "cuda" else 3
    for _ in range(2 if device.type == "cuda" else 1):
        a @ b
    _sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t)
    if device.type == "cuda":  # back-to-back products with one sync time the device, not the launches
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        times.append((time.perf_counter() - t) / reps)
    best = min(times)
    del a, b
    _cleanup(device)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "tflops": 2.0 * n**3 / best / 1e12}


# ---- throughput ---------------------------------------------------------------------------------------


def _make_step(variant: str, state: Any, device: torch.device) -> Callable:
    loss = get_loss(state.cfg.loss)
    if variant == "plain":
        return lambda batches: train_step(state, loss, batches)
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")


class _Runner:
    """One variant at one batch size: its own GANState and step function, timed in windows of steps."""

    def __init__(
        self,
        variant: str,
        model: str,
        batch_size: int,
        device: torch.device,
        settings: Any,
        data: tuple[torch.Tensor, torch.Tensor],
    ):
        self.variant, self.model, self.batch, self.device, self.settings = variant, model, batch_size, device, settings
        self.x, self.y = data
        self.cfg = throughput_config(model, batch_size)
        self.state = build_state(self.cfg, settings.seed, device)
        gen = torch.Generator(device=device).manual_seed(1)
        self.perm = torch.randperm(self.x.shape[0], device=device, generator=gen)
        self.span = max(self.x.shape[0] - batch_size + 1, 1)
        self.acc = torch.zeros(5, device=device)
        self.next = 0  # index of the next batch
        self.windows: list[float] = []
        self.steps = settings.min_steps
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.step = _make_step(variant, self.state, device)
        self.caught = [str(w.message) for w in caught]

    def run(self, count: int) -> float:
        """Seconds for `count` steps, each gathering its batch by index as loop.train does."""
        b, x, y = self.batch, self.x, self.y
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _sync(self.device)
            t = time.perf_counter()
            for i in range(self.next, self.next + count):
                s = (i * b) % self.span
                idx = self.perm[s : s + b]
                self.acc += self.step([(x[idx], y[idx])])
            _sync(self.device)
            seconds = time.perf_counter() - t
        self.caught += [str(w.message) for w in caught]
        self.next += count
        return seconds

    def warm_up(self) -> None:
        """Warm-up steps (with graphs: the eager warm-up steps, the capture, one replay), then one timed
        step that sets the steps per window."""
        opts = getattr(self.step, "options", None)
        graphs = opts is not None and opts.graphs and self.device.type == "cuda"
        self.run(opts.warmup + 2 if graphs else 1)
        probe = self.run(1)
        s = self.settings
        self.steps = int(min(max(s.window_s / max(probe, 1e-9), s.min_steps), s.max_steps))

    def window(self) -> None:
        self.windows.append(self.run(self.steps))

    def row(self, flops_per_image: float, peak_gib: float | None) -> dict[str, Any]:
        med = statistics.median(self.windows) / self.steps
        ips = self.batch * self.cfg.d_steps / med
        best = self.batch * self.cfg.d_steps * self.steps / min(self.windows)
        return {
            "variant": self.variant,
            "model": self.model,
            "batch": self.batch,
            "steps_per_window": self.steps,
            "windows_s": [round(w, 4) for w in self.windows],
            "ms_per_step": med * 1e3,
            "images_per_s": ips,
            "best_images_per_s": best,
            "tflops": ips * flops_per_image / 1e12,
            "finite": bool(torch.isfinite(self.acc).all()),
            "peak_gib": peak_gib,
            "warnings": sorted({m.splitlines()[0] for m in self.caught}),
        }


def time_batch_size(
    variants: Sequence[str],
    model: str,
    batch_size: int,
    device: torch.device,
    settings: Any,
    data: tuple[torch.Tensor, torch.Tensor],
    flops_per_image: float,
) -> list[dict[str, Any]]:
    """Rows for every variant at one batch size.

    settings.interleave (the CPU default): all variants are built first and their timing windows
    alternate, so load from other work on a shared machine hits them
    alike; peak memory is then not reported. Otherwise (the GPU default) one variant at a time, each
    with its own peak-memory reading, its state freed before the next is built."""
    if settings.interleave:
        runners = [_Runner(v, model, batch_size, device, settings, data) for v in variants]
        for r in runners:
            r.warm_up()
        for _ in range(settings.windows):
            for r in runners:
                r.window()
        return [r.row(flops_per_image, None) for r in runners]
    rows = []
    for v in variants:
        _cleanup(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        r = _Runner(v, model, batch_size, device, settings, data)
        r.warm_up()
        for _ in range(settings.windows):
            r.window()
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        rows.append(r.row(flops_per_image, peak))
        del r
    _cleanup(device)
    return rows


def throughput(device: torch.device, settings: Any, matmul_tflops: float, log: Callable[[str], None]) -> dict[str, Any]:
    cfg = throughput_config(settings.model, 1)
    macs = gan_macs(cfg.model, cfg.z_dim, cfg.d_norm, cfg.conditional, cfg.g_width, cfg.d_width)
    fpi = train_flops_per_image(macs["g"], macs["d"], cfg.d_steps)
    n = max(settings.n_data, 2 * max(settings.batch_sizes))
    gen = torch.Generator(device=device).manual_seed(2)
    x = torch.rand(n, 1, 28, 28, device=device, generator=gen) * 2 - 1
    y = torch.randint(0, 10, (n,), device=device, generator=gen)
    rows = []
    for b in settings.batch_sizes:
        for row in time_batch_size(settings.variants, settings.model, b, device, settings, (x, y), fpi):
            row["matmul_share"] = row["tflops"] / matmul_tflops if matmul_tflops > 0 else None
            rows.append(row)
            bad = "" if row["finite"] else "  NON-FINITE LOSSES"
            warned = "".join(f"\n    warning: {w}" for w in row["warnings"])
            log(
                f"  {row['variant']:<12} batch {b:>6}: {row['images_per_s']:>10,.0f} img/s  "
                f"{row['ms_per_step']:8.2f} ms/step{bad}{warned}"
            )
    del x, y
    _cleanup(device)
    return {
        "model": settings.model,
        "d_norm": cfg.d_norm,
        "flops_per_image": fpi,
        "g_macs": macs["g"],
        "d_macs": macs["d"],
        "interleaved": settings.interleave,
        "rows": rows,
    }
