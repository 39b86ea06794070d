"""`mnistgan curves`: time-to-quality curves, FID during training against wall seconds, for candidate recipes
on this machine.

Each candidate trains with `loop.train` (the pipeline's own loop) for a budget of training seconds; every
`check_every` seconds the clock stops, the sampling generator (the EMA copy with recomputed BatchNorm
statistics, as the train stage saves it) draws `samples` images of fixed noise and the pipeline's classifier
scores their FID against the MNIST test set. The same FID of as many real training images is the floor.

    python -m mnistgan.lab.curves --seconds 300 --out docs/curves            # every candidate
    python -m mnistgan.lab.curves --recipes default,conditional --seconds 60

Writes curves.json (every check), curves.csv, curves.png (FID against seconds, log scale, with the 32x,
16x and 8x floor lines), grids.png (the last samples of each candidate) and curves.md (the table).
Run it on an otherwise idle machine: the clock is wall time.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import dataclasses
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnistgan.cli import OneLineParser, run_command
from mnistgan.config import TrainConfig
from mnistgan.data import load_mnist
from mnistgan.errors import UserError
from mnistgan.evaluation.classifier import load_classifier
from mnistgan.evaluation.monitor import FidMonitor
from mnistgan.gan import loop as core
from mnistgan.gan.sample import fixed_noise, generate
from mnistgan.gan.step import build_state
from mnistgan.io import InputError, read_json, write_json
from mnistgan.lab import markdown
from mnistgan.lab.recipes import CANDIDATES, RECIPE_KEYS, recipe_overrides
from mnistgan.lab.throughput import machine_line
from mnistgan.pictures import image_grid
from mnistgan.tensors import training_tensors

PROG = "mnistgan curves"
FACTORS = (32, 16, 8)  # FID targets as multiples of the real-data floor at the same sample size


def candidate_config(name: str) -> Any:
    """The TrainConfig of a named recipe: unbounded steps (the clock stops it) unless the recipe fixes them."""
    overrides = recipe_overrides(name)
    steps = overrides.pop("steps", 10**9)
    return dataclasses.replace(TrainConfig(), **overrides, steps=steps, fid_every=0, log_every=5)


class _Stop(Exception):  # noqa: N818 - control flow out of loop.train's callback
    pass


def run_curve(
    name: str,
    mnist: Any,
    monitor_for: Any,
    *,
    seconds: float,
    check_every: float,
    seed: int = 0,
    log: Any = print,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Train candidate `name` for `seconds` of training time; FID every `check_every` training seconds.

    monitor_for(cfg) -> a mnistgan.evaluation.monitor.FidMonitor for that config (fixed noise, recalibration).
    Check time is not counted: the curve's x axis is what the train stage would spend.
    """
    cfg = candidate_config(name)
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    x, y = training_tensors(mnist.x_train, mnist.y_train, device)  # (60000, 1, 28, 28) in [-1, 1], (60000,)
    state = build_state(cfg, seed, device)
    monitor = monitor_for(cfg)
    checks: list[dict[str, float]] = []
    clock = {"train": 0.0, "since": time.perf_counter(), "next": check_every}

    def check(step: int, mark: float | None = None) -> None:
        scores = monitor.scores(state.sampler)
        mark = min(clock["next"], seconds) if mark is None else mark  # the time this check stands for
        checks.append(
            {
                "at": mark,
                "seconds": round(clock["train"], 2),
                "step": step,
                **{k: round(v, 3) for k, v in scores.items()},
            }
        )
        log(
            f"  {name:>16}  {clock['train']:7.1f} s  step {step:>6}  FID {scores['fid']:9.2f}  "
            f"P {scores['precision']:.3f}  R {scores['recall']:.3f}"
        )

    def on_log(step: int, _row: dict[str, float]) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        clock["train"] += now - clock["since"]
        if clock["train"] >= clock["next"] or clock["train"] >= seconds:
            check(step)
            clock["next"] += check_every
            if clock["train"] >= seconds:
                raise _Stop
        clock["since"] = time.perf_counter()  # the check's own time is left out

    error = None
    try:
        core.train(state, x, y, on_log=on_log, progress=False)
        clock["train"] += time.perf_counter() - clock["since"]  # a recipe of fixed steps: its last ones
    except _Stop:
        pass
    except core.DivergenceError as e:
        error = str(e)
    if error is None and (not checks or checks[-1]["step"] != state.step):
        check(state.step, mark=clock["train"])  # a recipe of fixed steps ended between two checks: score its end
    sampler = core.finalize_sampler(state, device)
    z, labels = fixed_noise(cfg.z_dim, cfg.conditional, seed + 5)  # conditional: row r is digit r
    grid = generate(sampler, z, labels).numpy()  # (100, 28, 28) uint8
    steps = state.step
    return {
        "recipe": name,
        "overrides": CANDIDATES[name],
        "config": {k: getattr(cfg, k) for k in RECIPE_KEYS},
        "seed": seed,
        "steps": steps,
        "train_seconds": round(clock["train"], 2),
        "images_per_second": round(steps * cfg.batch_size * cfg.d_steps / max(clock["train"], 1e-9), 1),
        "reference_fid": round(monitor.real_fid, 3),  # the plain FID of as many real images: thresholds' scale
        "checks": checks,
        "error": error,
        "grid": grid,
    }


def first_time_below(checks: list[dict[str, float]], target: float) -> float | None:
    """Training seconds of the first check with FID <= target, or None."""
    return next((c["seconds"] for c in checks if c["fid"] <= target), None)


def fid_at(checks: list[dict[str, float]], seconds: float) -> float | None:
    """FID of the check scheduled at `seconds` (taken at the first loss row past it), or None."""
    return next((c["fid"] for c in checks if abs(c["at"] - seconds) < 1e-6), None)


def summary_rows(curves: list[dict[str, Any]], marks: tuple[float, ...]) -> list[dict[str, Any]]:
    rows = []
    for c in curves:
        ref = c["reference_fid"]
        best = min(c["checks"], key=lambda k: k["fid"]) if c["checks"] else None
        rows.append(
            {
                "recipe": c["recipe"],
                "overrides": c["overrides"],
                "images_per_second": c["images_per_second"],
                "steps": c["steps"],
                **{f"fid_at_{int(m)}s": fid_at(c["checks"], m) for m in marks},
                "best_fid": best["fid"] if best else None,
                "best_at_s": best["seconds"] if best else None,
                **{f"s_to_{f}x": first_time_below(c["checks"], f * ref) for f in FACTORS},
                # fidelity and diversity at the last check (older runs checked FID only)
                "precision_end": c["checks"][-1].get("precision") if c["checks"] else None,
                "recall_end": c["checks"][-1].get("recall") if c["checks"] else None,
            }
        )
    return rows


def _cell(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def render_table(curves: list[dict[str, Any]], marks: tuple[float, ...]) -> str:
    ref = curves[0]["reference_fid"]
    head = [
        "recipe",
        "change",
        "img/s",
        "steps",
        *[f"FID @ {int(m)} s" for m in marks],
        "best FID",
        *[f"s to {f}x ({f * ref:.0f})" for f in FACTORS],
        "P, R at end",
    ]
    rows = []
    for r in sorted(summary_rows(curves, marks), key=lambda r: r["best_fid"] if r["best_fid"] is not None else 1e18):
        change = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "(params.yaml's recipe)"
        cells = [
            f"`{r['recipe']}`",
            change,
            f"{r['images_per_second']:.0f}",
            str(r["steps"]),
            *[_cell(r[f"fid_at_{int(m)}s"]) for m in marks],
            _cell(r["best_fid"]),
            *[_cell(r[f"s_to_{f}x"], ".0f") for f in FACTORS],
            "-" if r["recall_end"] is None else f"{r['precision_end']:.2f}, {r['recall_end']:.2f}",
        ]
        rows.append(cells)
    return markdown.table(head, rows) + "\n"


def plot_curves(curves: list[dict[str, Any]], path: Path) -> None:
    import matplotlib  # lazy: only to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: only to draw

    with_pr = [c for c in curves if c["checks"] and "recall" in c["checks"][0]]
    if with_pr:
        fig, (ax, ax_pr) = plt.subplots(1, 2, figsize=(15, 5.5), dpi=110, gridspec_kw={"width_ratios": (3, 2)})
        plot_precision_recall(with_pr, curves, ax_pr)
    else:
        fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    for i, c in enumerate(curves):
        xs = [k["seconds"] for k in c["checks"]]
        ys = [k["fid"] for k in c["checks"]]
        # ten colours, then the same colours dashed: every curve stays distinguishable
        ax.plot(
            xs,
            ys,
            marker=".",
            color=f"C{i % 10}",
            linestyle="-" if i < 10 else "--",
            label=f"{c['recipe']} ({c['images_per_second']:.0f} img/s)",
        )
    ref = curves[0]["reference_fid"]
    for f, style in zip(FACTORS, (":", "--", "-."), strict=True):
        ax.axhline(f * ref, color="grey", linestyle=style, linewidth=1)
        ax.text(
            0.005,
            f * ref,
            f" {f}x real ({f * ref:.0f})",
            va="bottom",
            fontsize=8,
            color="grey",
            transform=ax.get_yaxis_transform(),
        )
    ax.set_yscale("log")
    threads = {c["threads"] for c in curves}
    ax.set_xlabel(f"training seconds ({'/'.join(map(str, sorted(threads)))} torch threads per recipe)")
    ax.set_ylabel(f"FID, {curves[0]['samples']} samples (real images {ref:.1f})")
    ax.set_title("Time to quality: FID of the sampling generator during training")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_precision_recall(with_pr: list[dict[str, Any]], curves: list[dict[str, Any]], ax: Any) -> None:
    """Precision (solid) and recall (dotted) against training seconds, in each curve's colour."""
    for c in with_pr:
        i = curves.index(c)
        xs = [k["seconds"] for k in c["checks"]]
        ax.plot(xs, [k["precision"] for k in c["checks"]], color=f"C{i % 10}", label=f"{c['recipe']} precision")
        ax.plot(
            xs, [k["recall"] for k in c["checks"]], color=f"C{i % 10}", linestyle=":", label=f"{c['recipe']} recall"
        )
    ax.set_ylim(0, 1)
    ax.set_xlabel("training seconds")
    ax.set_ylabel("k=3 precision (solid), recall (dotted)")
    ax.set_title("Fidelity and diversity of the same checks")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)


def save_grids(curves: list[dict[str, Any]], path: Path) -> None:
    """One row per recipe, labelled: its first 20 final samples (fixed noise; conditional: 2 per digit)."""
    import matplotlib  # lazy: only to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: only to draw

    fig, axes = plt.subplots(len(curves), 1, figsize=(10, 0.62 * len(curves) + 0.3), dpi=100, squeeze=False)
    for ax, c in zip(axes[:, 0], curves, strict=True):
        ax.imshow(image_grid(c["grid"][::5][:20], nrow=20), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(c["recipe"], rotation=0, ha="right", va="center", fontsize=9)
    fig.tight_layout(pad=0.3)
    fig.savefig(path)
    plt.close(fig)


def own_arguments(argv: list[str]) -> list[str]:
    """The command's own arguments: `mnistgan curves ...` passes the sub-command name through sys.argv."""
    return argv[1:] if argv[:1] == ["curves"] else argv


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(CANDIDATES), help="comma-separated names (default: all)")
    parser.add_argument("--seconds", type=float, default=300.0, help="training seconds per recipe")
    parser.add_argument("--check-every", type=float, default=30.0, help="training seconds between FIDs")
    parser.add_argument("--samples", type=int, default=2000, help="generated images per FID")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="data/mnist", help="folder of the prepare stage's arrays")
    parser.add_argument("--classifier", default="models/classifier.pt")
    parser.add_argument("--out", default="docs/curves", help="folder for curves.{json,csv,png,md}, grids.png")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    parser.add_argument("--jobs", type=int, default=1, help="recipes trained side by side, one thread each")
    parser.add_argument("--merge", help="comma-separated folders of earlier runs: one table and picture of all")
    return run_command(parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    try:
        if args.merge:
            print(merge(args.merge.split(","), Path(args.out)))
            return 0
        return _run(args)
    except KeyError as e:  # an unknown recipe name
        raise UserError(str(e).strip(chr(39))) from None


_MONITORS: dict[tuple, dict] = {}  # per process and (data, classifier, samples, seed): monitors by noise shape


def monitors(classifier: Any, mnist: Any, samples: int, seed: int, cache: dict | None = None) -> Any:
    """cfg -> the FidMonitor for its noise (z_dim, labels) and sampler (EMA: recalibrated), each built once:
    `samples` generated images of fixed noise against the test set, as many real training images the floor."""
    cache = {} if cache is None else cache

    def monitor_for(cfg: Any) -> FidMonitor:
        key = (cfg.z_dim, cfg.conditional, cfg.ema > 0)
        if key not in cache:
            cache[key] = FidMonitor.for_config(classifier, mnist, cfg, samples, seed)
        return cache[key]

    return monitor_for


def _curve_job(
    name: str, data: str, classifier: str, seconds: float, check_every: float, samples: int, seed: int
) -> dict[str, Any]:
    """One recipe's curve, in this process or a worker (arguments are plain values so they pickle)."""
    mnist = load_mnist(data)
    clf = load_classifier(classifier)

    monitor_for = monitors(clf, mnist, samples, seed, _MONITORS.setdefault((data, classifier, samples, seed), {}))

    c = run_curve(
        name,
        mnist,
        monitor_for,
        seconds=seconds,
        check_every=check_every,
        seed=seed,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    c["samples"], c["threads"] = samples, torch.get_num_threads()
    return c


def _run(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    for n in names:
        candidate_config(n)  # unknown names fail before any work
    for path, stage in ((Path(args.data) / "x_train.npy", "prepare"), (Path(args.classifier), "classifier")):
        if not path.exists():
            raise InputError(f"{path}: file not found; run `dvc repro {stage}` first")
    if args.threads:
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    job = (args.data, args.classifier, args.seconds, args.check_every, args.samples, args.seed)
    print(
        f"{PROG}: {len(names)} recipes x {args.seconds:.0f} training seconds, {args.jobs} at a time, on "
        f"{machine_line()}",
        file=sys.stderr,
    )
    if args.jobs == 1:
        curves = [_curve_job(name, *job) for name in names]
    else:
        # One process per recipe at a time, each on one thread (set before its first torch op), so the
        # recipes running side by side share the cores evenly.
        with cf.ProcessPoolExecutor(
            args.jobs, mp.get_context("spawn"), initializer=torch.set_num_threads, initargs=(1,)
        ) as pool:
            curves = list(pool.map(_curve_job, names, *[[v] * len(names) for v in job]))
    meta = {
        "machine": machine_line(),
        "date": time.strftime("%Y-%m-%d"),
        "seconds": args.seconds,
        "check_every": args.check_every,
        "samples": args.samples,
        "command": f"{PROG} " + " ".join(own_arguments(sys.argv[1:])),
    }
    print(write_outputs(curves, [meta], out))
    return 0


def write_outputs(curves: list[dict[str, Any]], metas: list[dict[str, Any]], out: Path) -> str:
    """curves.{json,csv,png,md} (and grids.png when the curves carry their samples) under `out`; the table."""
    out.mkdir(parents=True, exist_ok=True)
    seconds = max(m["seconds"] for m in metas)
    checked = {round(c["at"], 6) for curve in curves for c in curve["checks"]}  # the columns need a check
    marks = tuple(dict.fromkeys((*(m for m in (60, 120, 240, 360, 480) if m <= seconds and m in checked), seconds)))
    write_json(
        out / "curves.json", {"runs": metas, "curves": [{k: v for k, v in c.items() if k != "grid"} for c in curves]}
    )
    with open(out / "curves.csv", "w") as f:
        f.write("recipe,seconds,step,fid,reference_fid\n")
        for c in curves:
            for k in c["checks"]:
                f.write(f"{c['recipe']},{k['seconds']},{k['step']},{k['fid']},{c['reference_fid']}\n")
    plot_curves(curves, out / "curves.png")
    if all("grid" in c for c in curves):
        save_grids(curves, out / "grids.png")
        np.savez_compressed(out / "grids.npz", **{c["recipe"]: c["grid"] for c in curves})
    table = render_table(curves, marks)
    runs = "; ".join(f"`{m['command']}` on {m['machine']}, {m['date']}" for m in metas)
    header = (
        f"Each recipe trained for the training seconds shown, FID of {metas[0]['samples']} samples every "
        f"{metas[0]['check_every']:.0f} s (as many real images score {curves[0]['reference_fid']:.1f}; "
        f"thresholds are multiples of that). Made by {runs}.\n\n"
    )
    (out / "curves.md").write_text(header + table)
    return table


def merge(folders: list[str], out: Path) -> str:
    """Put the curves of several runs (each a folder with curves.json) in one table and one picture. A recipe
    run again in a later folder (a rerun, say) replaces its earlier curve."""
    metas, curves = [], {}
    for folder in folders:
        data = read_json(Path(folder) / "curves.json")
        metas += data.get("runs") or [data["meta"]]
        grids = Path(folder) / "grids.npz"
        with np.load(grids) if grids.exists() else contextlib.nullcontext({}) as g:
            curves |= {c["recipe"]: c | ({"grid": g[c["recipe"]]} if c["recipe"] in g else {}) for c in data["curves"]}
    return write_outputs(list(curves.values()), metas, out)


if __name__ == "__main__":
    sys.exit(main())
