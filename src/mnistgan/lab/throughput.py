"""The timing half of `mnistgan bench` (mnistgan.lab.bench renders and writes what this measures): how many
training images per second the training step processes at each batch size, against the best rate of a
large matrix product, with the machine it ran on (machine_info, also the header line of curves and calibrate)."""

from __future__ import annotations

import datetime as _dt
import gc
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from mnistgan import numerics
from mnistgan.config import TrainConfig
from mnistgan.gan.losses import get_loss
from mnistgan.gan.step import build_state, train_step
from mnistgan.lab.flops import gan_macs, train_flops_per_image


def throughput_config(model: str, batch_size: int) -> Any:
    """The recipe timed: params.yaml's train section; the dcgan-large model with its BatchNorm D."""
    d_norm = "batch" if model == "dcgan-large" else TrainConfig.d_norm
    return TrainConfig(model=model, d_norm=d_norm, batch_size=batch_size)


# ---- device helpers ----------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cleanup(device: torch.device) -> None:
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
    sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    if device.type == "cuda":  # back-to-back products with one sync time the device, not the launches
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        times.append((time.perf_counter() - t) / reps)
    best = min(times)
    del a, b
    cleanup(device)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "tflops": 2.0 * n**3 / best / 1e12}


# ---- throughput ---------------------------------------------------------------------------------------


class _Runner:
    """The training step at one batch size: its own GANState, timed in windows of steps."""

    def __init__(
        self, model: str, batch_size: int, device: torch.device, settings: Any, data: tuple[torch.Tensor, ...]
    ):
        self.model, self.batch, self.device, self.settings = model, batch_size, device, settings
        self.x, self.y = data
        self.cfg = throughput_config(model, batch_size)
        self.state = build_state(self.cfg, settings.seed, device)
        self.loss = get_loss(self.cfg.loss)
        gen = torch.Generator(device=device).manual_seed(1)
        self.perm = torch.randperm(self.x.shape[0], device=device, generator=gen)
        self.span = max(self.x.shape[0] - batch_size + 1, 1)
        self.acc = torch.zeros(5, device=device)
        self.next = 0  # index of the next batch
        self.windows: list[float] = []
        self.steps = settings.min_steps

    def run(self, count: int) -> float:
        """Seconds for `count` steps, each gathering its batch by index as loop.train does."""
        b, x, y = self.batch, self.x, self.y
        sync(self.device)
        t = time.perf_counter()
        for i in range(self.next, self.next + count):
            s = (i * b) % self.span
            idx = self.perm[s : s + b]
            self.acc += train_step(self.state, self.loss, [(x[idx], y[idx])])
        sync(self.device)
        self.next += count
        return time.perf_counter() - t

    def warm_up(self) -> None:
        """One warm-up step, then one timed step that sets the steps per window."""
        self.run(1)
        probe = self.run(1)
        s = self.settings
        self.steps = int(min(max(s.window_s / max(probe, 1e-9), s.min_steps), s.max_steps))

    def row(self, flops_per_image: float, peak_gib: float | None) -> dict[str, Any]:
        med = statistics.median(self.windows) / self.steps
        ips = self.batch * self.cfg.d_steps / med
        best = self.batch * self.cfg.d_steps * self.steps / min(self.windows)
        return {
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
        }


def time_batch_size(model: str, batch_size: int, device: torch.device, settings: Any,
                    data: tuple[torch.Tensor, torch.Tensor], flops_per_image: float) -> dict[str, Any]:  # fmt: skip
    """The step's row at one batch size, with its peak GPU memory; its state freed afterwards."""
    cleanup(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    r = _Runner(model, batch_size, device, settings, data)
    r.warm_up()
    for _ in range(settings.windows):
        r.windows.append(r.run(r.steps))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    row = r.row(flops_per_image, peak)
    del r
    cleanup(device)
    return row


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
        row = time_batch_size(settings.model, b, device, settings, (x, y), fpi)
        row["matmul_share"] = row["tflops"] / matmul_tflops if matmul_tflops > 0 else None
        rows.append(row)
        bad = "" if row["finite"] else "  NON-FINITE LOSSES"
        log(f"  batch {b:>6}: {row['images_per_s']:>10,.0f} img/s  {row['ms_per_step']:8.2f} ms/step{bad}")
    del x, y
    cleanup(device)
    return {
        "model": settings.model,
        "d_norm": cfg.d_norm,
        "flops_per_image": fpi,
        "g_macs": macs["g"],
        "d_macs": macs["d"],
        "rows": rows,
    }
