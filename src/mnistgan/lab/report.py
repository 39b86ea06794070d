"""`mnistgan compare` and `mnistgan results` (`make compare`, `make results`): reports built from MLflow runs
(read through mnistgan.tracking).

Usage:
    python -m mnistgan.lab.report results [--experiment mnistgan] [--readme README.md]
    python -m mnistgan.lab.report compare [--runs ID,ID] [--last 6] [--out reports]    (make compare)

`results` is the recipe table in README.

Runs are grouped by every parameter except the seed, so each row is one recipe run over several seeds,
reported as mean ± std (std over seeds, ddof=1; '-' with a single seed).
"""

from __future__ import annotations

import argparse
import sys
from itertools import combinations
from pathlib import Path
from typing import Any

from mnistgan import tracking
from mnistgan.cli import EXIT_BAD_INPUT, OneLineParser, run_command
from mnistgan.lab import markdown
from mnistgan.lab.recipes import default_recipe, recipe_name

START, END = "<!-- results:start -->", "<!-- results:end -->"

# (column title, metric column, format)
SCORES = [
    ("FID", "metrics.generated.fid", "{:.2f}"),
    ("score", "metrics.generated.inception_score", "{:.3f}"),
    ("precision", "metrics.generated.precision", "{:.3f}"),
    ("recall", "metrics.generated.recall", "{:.3f}"),
    ("classes", "metrics.generated.classes_covered", "{:.1f}"),
    ("steps", "metrics.train_steps", "{:.0f}"),
    ("train s", "metrics.train_seconds", "{:.0f}"),
]
# Params that do not change what a run learns (seeds, where things go, how often it logs and checkpoints)
IGNORED_PARAMS = (
    "params.seed",
    "params.paths.",
    "params.tracking.",
    "params.numerics.",
    "params.train.device",
    "params.train.log_every",
    "params.train.image_every",
    "params.train.checkpoint_every",
    "params.train.fid_every",
    "params.train.fid_samples",
)


# The identity of the features behind a run's headline scores (mnistgan.evaluation.scoring.identity, a tag of the run)
EXTRACTOR_TAG = "tags.headline_features.weights_sha256"
OLD_EXTRACTOR_TAG = "tags.extractor.weights_sha256"  # the same identity, as runs of older code tagged it
UNRECORDED = "unrecorded"


def extractors_of(runs: Any) -> list[str]:
    """Each run's feature identity (classifier weights sha256), 'unrecorded' for runs of older code."""
    ids = [UNRECORDED] * len(runs)
    for tag in (OLD_EXTRACTOR_TAG, EXTRACTOR_TAG):  # the new tag wins where a run has both
        if tag in runs:
            ids = [v if isinstance(v, str) and v else old for v, old in zip(runs[tag], ids, strict=True)]
    return ids


def mixed_extractors_note(ids: list[str]) -> str:
    """'' when every score comes from the same features; else a warning naming them."""
    distinct = sorted(set(ids))
    if len(distinct) < 2:
        return ""
    return (
        f"**Warning: these scores come from {len(distinct)} different feature extractors "
        f"({', '.join(distinct)}); scores of different extractors are not comparable, even in one "
        "column.**"
    )


def recipe_label(row: Any) -> str:
    """`name`: what it is (budget), the name from mnistgan.lab.recipes when the run's params match one."""
    get = lambda k: row.get(f"params.train.{k}", "?")  # noqa: E731
    label = f"{get('model')}, {get('loss')}, D norm {get('d_norm')}, EMA {get('ema')}"
    if str(get("ema_warmup")) == "False" and str(get("ema")) not in ("0", "0.0"):
        label += " without warm-up"
    if str(get("conditional")) == "True":
        label += ", conditional"
    default = default_recipe()  # params.yaml's: a label names what differs from it
    extras = [
        f"{k} {get(k)}"
        for k in ("lr_d", "beta1", "g_width", "d_width", "d_steps", "r1_weight")
        if str(get(k)) not in ("?", str(default[k]))
    ]
    budget = (
        f"{float(get('max_seconds')):.0f} s"
        if str(get("max_seconds")) not in ("?", "0.0", "0")
        else f"{get('steps')} steps"
    )
    label += f" (lr {get('lr')}, batch {get('batch_size')}{''.join(', ' + e for e in extras)}, {budget})"
    name = recipe_name({k[len("params.train.") :]: v for k, v in row.items() if str(k).startswith("params.train.")})
    return f"`{name}`: {label}" if name else label


def mean_std(values: Any, fmt: str) -> str:
    values = [float(v) for v in values if v is not None and v == v]  # drop missing and NaN
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return fmt.format(mean)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{fmt.format(mean)} ± {fmt.format(std)}"


# ---- verdicts: is a difference larger than its uncertainty? ---------------------------------------------

LOWER_IS_BETTER = {"fid", "fid_inf", "kid"}
VERDICT_LEVEL = 0.05  # two-sided: a difference is called real when p < 0.05


def score_key(column: str) -> str:
    """metrics.generated.fid -> fid"""
    return column.rsplit(".", 1)[-1]


def welch_verdict(a: list[float], b: list[float], key: str) -> str:
    """`a` against `b` (one value per seed of each recipe) by Welch's t-test (unequal variances):
    'better (p=..)', 'worse (p=..)' or 'within noise (p=..)' for a; '' when either has fewer than 2 seeds."""
    from scipy.stats import ttest_ind_from_stats  # lazy: scipy only for verdicts

    a = [float(v) for v in a if v == v]
    b = [float(v) for v in b if v == v]
    if len(a) < 2 or len(b) < 2:
        return ""
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    std = lambda x, m: (sum((v - m) ** 2 for v in x) / (len(x) - 1)) ** 0.5  # noqa: E731
    sa, sb = std(a, mean_a), std(b, mean_b)
    if sa == 0 and sb == 0:
        p = 0.0 if mean_a != mean_b else 1.0  # no spread at all: any difference is exact
    else:
        p = float(ttest_ind_from_stats(mean_a, sa, len(a), mean_b, sb, len(b), equal_var=False).pvalue)
    return _verdict(mean_a - mean_b, p < VERDICT_LEVEL, key) + f" (p={p:.2g})"


def interval_verdict(a: float, a_ci: tuple[float, float], b: float, b_ci: tuple[float, float], key: str) -> str:
    """One run's score against another's from their 95% intervals (normal approximation: standard error
    = interval width / 3.92; the difference is real when |a - b| > 1.96 x its standard error)."""
    se = (((a_ci[1] - a_ci[0]) / 3.92) ** 2 + ((b_ci[1] - b_ci[0]) / 3.92) ** 2) ** 0.5
    return _verdict(a - b, abs(a - b) > 1.96 * se, key)


def _verdict(difference: float, real: bool, key: str) -> str:
    if not real:
        return "within noise"
    return "better" if (difference < 0) == (key in LOWER_IS_BETTER) else "worse"


def results_table(runs: Any) -> str:
    """Markdown table of finished, evaluated runs grouped by recipe (all params but the seed)."""
    if runs is None or len(runs) == 0 or "metrics.generated.fid" not in runs:
        return "_No evaluated runs in the MLflow store yet._\n"
    groups = recipe_groups(runs)
    if not groups:
        return "_No finished, evaluated runs in the MLflow store yet._\n"
    note = mixed_extractors_note([e for _, g in groups for e in extractors_of(g)])
    header = ["recipe", "seeds", *(t for t, _, _ in SCORES), "device", *(["extractor"] if note else [])]
    rows = []
    base = next((g for label, g in groups if label.startswith("`default`")), None)
    for label, group in groups:
        cells = [mean_std(group.get(col, []), fmt) for _, col, fmt in SCORES]
        if base is not None and group is not base:  # each score against the default recipe's, over seeds
            for i, (_, col, _) in enumerate(SCORES):
                if col.startswith("metrics.generated."):
                    verdict = welch_verdict(list(group.get(col, [])), list(base.get(col, [])), score_key(col))
                    cells[i] += f" ({verdict.replace(' (', ', ')}" if verdict else ""
        devices = ", ".join(sorted(set(group.get("tags.device", ["?"]))))
        ext = [extractors_of(group)[0]] if note else []
        rows.append((float(group["metrics.generated.fid"].mean()), [label, str(len(group)), *cells, devices, *ext]))
    if base is not None and len(groups) > 1:
        note += (
            "\n_In brackets: each recipe's score against the `default` recipe's over their seeds (Welch's "
            f"t-test; better or worse when p < {VERDICT_LEVEL}, else within noise)._\n"
        )
    ref = groups[0][1].iloc[0]
    reference = [mean_std([ref.get(c.replace("generated", "real_reference"))], f) if "generated" in c else "-"
                 for _, c, f in SCORES]  # fmt: skip
    real = ["*real MNIST training images (reference)*", "-", *reference, "-", *(["-"] if note else [])]
    lines = [markdown.table(header, [r for _, r in sorted(rows, key=lambda r: r[0])] + [real])]
    return "\n".join(lines) + "\n" + (f"\n{note.strip()}\n" if note else "")


def fid_against_seconds(fid: list[tuple[int, float]], seconds: list[tuple[int, float]]) -> list[tuple[float, float]]:
    """Join a run's FID-during-training and its training seconds at the same steps: [(seconds, fid)]."""
    at = dict(seconds)
    return [(at[step], value) for step, value in fid if step in at]


def at_budget(runs: Any, seconds: float | None) -> Any:
    """The runs trained for `seconds` wall-clock seconds (train.max_seconds), so a table compares recipes at
    one budget; all runs when `seconds` is None."""
    if seconds is None or runs is None or len(runs) == 0:
        return runs
    if "params.train.max_seconds" not in runs:
        return runs.iloc[0:0]
    import pandas as pd  # lazy: pandas only for run tables

    budget = pd.to_numeric(runs["params.train.max_seconds"], errors="coerce")
    return runs[(budget - seconds).abs() < 1e-6]


def recipe_groups(runs: Any) -> list[tuple[str, Any]]:
    """(recipe label, its runs) for finished, evaluated runs: every param but the seed and bookkeeping."""
    runs = runs[(runs["status"] == "FINISHED") & runs["metrics.generated.fid"].notna()].copy()
    group_cols = sorted(c for c in runs.columns if c.startswith("params.") and not c.startswith(IGNORED_PARAMS))
    runs[EXTRACTOR_TAG] = extractors_of(runs)  # runs scored by different features are never averaged together
    group_cols.append(EXTRACTOR_TAG)
    runs[group_cols] = runs[group_cols].fillna("")
    return [(recipe_label(g.iloc[0]), g) for _, g in runs.groupby(group_cols, dropna=False)]


def fid_seconds_png(lines: dict[str, list[list[tuple[float, float]]]], path: Path, floor: float | None = None) -> None:
    """FID during training against training seconds: one colour per recipe, one line per run (seed)."""
    import matplotlib  # lazy: only to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: only to draw

    fig, ax = plt.subplots(figsize=(9, 5.2), dpi=110)
    for i, (label, runs) in enumerate(lines.items()):
        color = f"C{i % 10}"
        for j, points in enumerate(r for r in runs if r):
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, color=color, marker=".", linewidth=1.2, label=label if j == 0 else None)
    if floor and floor > 0:  # fid_inf of real images is about 0: no multiples of it to draw
        for f, style in ((32, ":"), (16, "--"), (8, "-.")):
            ax.axhline(f * floor, color="grey", linestyle=style, linewidth=1)
            ax.text(0, f * floor, f" {f}x real ({f * floor:.0f})", va="bottom", fontsize=8, color="grey")
    ax.set_yscale("log")
    ax.set_xlabel("training seconds")
    ax.set_ylabel("fid_inf during training")
    ax.set_title("FID during training against seconds, every run (one colour per recipe)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def results_plot(runs: Any, path: Path) -> Path | None:
    """The results table's picture: FID during training against seconds for every run it counts."""
    if runs is None or len(runs) == 0 or "metrics.generated.fid" not in runs:
        return None
    lines = {
        label: [
            fid_against_seconds(
                tracking.metric_history(r, "fid_during_training"), tracking.metric_history(r, "fid_seconds")
            )
            for r in group["run_id"]
        ]
        for label, group in recipe_groups(runs)
    }
    if not any(any(r) for r in lines.values()):
        return None
    floors = runs.get("metrics.fid_during_training_real")
    floor = float(floors.dropna().iloc[0]) if floors is not None and floors.notna().any() else None
    fid_seconds_png(lines, path, floor)
    return path


def replace_section(text: str, body: str) -> str:
    """The README with the results table between its markers (ValueError when they are missing)."""
    return markdown.replace_section(text, START, END, body)


# ---- compare: several runs side by side ----------------------------------------------------------------

COMPARE_SCORES = [
    "fid",
    "fid_inf",
    "inception_score",
    "precision",
    "recall",
    "density",
    "coverage",
    "classes_covered",
    "kid",
]


def run_label(row: Any) -> str:
    def tag(key: str) -> str:
        value = row.get(key)
        return value if isinstance(value, str) else ""  # pandas gives NaN for a missing tag

    name = tag("tags.dvc_exp_name") or tag("tags.mlflow.runName") or "run"
    return f"{name} ({str(row['run_id'])[:8]})"


def differing_params(runs: Any) -> list[str]:
    """params.* columns whose values are not all equal across the runs (paths and tracking left out)."""
    skip = ("params.paths.", "params.tracking.")
    cols = [c for c in runs.columns if c.startswith("params.") and not c.startswith(skip)]
    return sorted(c for c in cols if runs[c].fillna("").astype(str).nunique() > 1)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def compare_tables(runs: Any) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for: differing params, scores with references, training time and device."""
    labels = [run_label(r) for _, r in runs.iterrows()]
    params = differing_params(runs)
    param_rows = [[p.removeprefix("params."), *[_fmt(v) for v in runs[p]]] for p in params]
    t_params = ("Parameters that differ", ["parameter", *labels], param_rows or [["(none)", *[""] * len(labels)]])
    score_rows = []
    for key in COMPARE_SCORES:
        gen, ref = f"metrics.generated.{key}", f"metrics.real_reference.{key}"
        if gen in runs:
            refs = {_fmt(v) for v in runs.get(ref, [])}
            score_rows.append([key, *[_fmt(v) for v in runs[gen]], " / ".join(sorted(refs)) or "-"])
    ids = extractors_of(runs)
    score_rows.append(["extractor (classifier sha256)", *ids, "-"])
    note = mixed_extractors_note(ids)
    title = "Final scores (generated samples; real-data reference in the last column)"
    t_scores = (title + (f". {note.strip('*')}" if note else ""), ["score", *labels, "real reference"], score_rows)
    t_verdicts = verdict_table(runs, labels)
    t_time = (
        "Training",
        ["", *labels],
        [
            ["train seconds", *[_fmt(v) for v in runs.get("metrics.train_seconds", [None] * len(runs))]],
            ["images/s", *[_fmt(v) for v in runs.get("metrics.images_per_second", [None] * len(runs))]],
            ["device", *[_fmt(v) for v in runs.get("tags.device", [None] * len(runs))]],
            ["status", *[_fmt(v) for v in runs["status"]]],
            ["git commit", *[_fmt(v)[:10] for v in runs.get("tags.git_commit", [None] * len(runs))]],
        ],
    )
    return [t_params, t_scores, *([t_verdicts] if t_verdicts else []), t_time]


def verdict_table(runs: Any, labels: list[str]) -> tuple[str, list[str], list[list[str]]] | None:
    """For every pair of runs and every score with a 95% interval: is the difference real?"""
    keys = [k for k in COMPARE_SCORES if f"metrics.generated.{k}_ci95_low" in runs]
    if len(runs) < 2 or not keys:
        return None
    pairs = list(combinations(range(len(runs)), 2))
    rows = []
    for key in keys:
        value, lo, hi = (runs[f"metrics.generated.{key}{s}"].tolist() for s in ("", "_ci95_low", "_ci95_high"))
        cells = []
        for i, j in pairs:
            if any(v != v for v in (value[i], value[j], lo[i], lo[j], hi[i], hi[j])):  # a run without intervals
                cells.append("no interval")
            else:
                cells.append(interval_verdict(value[i], (lo[i], hi[i]), value[j], (lo[j], hi[j]), key))
        rows.append([key, *cells])
    title = (
        "Is the difference real? The first run of each pair against the second, from their 95% intervals "
        "(normal approximation)"
    )
    return title, ["score", *[f"{labels[i]} vs {labels[j]}" for i, j in pairs]], rows


CURVE_EXTRAS = {"fid_during_training": "fid_inf during training (log scale) against seconds"}


def loss_curves_png(curves: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> None:
    """One figure, one panel per loss (and FID during training, when logged), one line per run."""
    import matplotlib  # lazy: only to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: only to draw

    keys = ["loss_d", "loss_g"] + [k for k in CURVE_EXTRAS if any(series.get(k) for series in curves.values())]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 3.6), dpi=110)
    for ax, key in zip(axes, keys, strict=True):
        for label, series in curves.items():
            if series.get(key):
                steps, values = zip(*series[key], strict=True)
                ax.plot(steps, values, label=label, linewidth=1.2)
        ax.set_title(CURVE_EXTRAS.get(key, key))
        if key in CURVE_EXTRAS:
            ax.set_yscale("log")  # FID falls by orders of magnitude early on
        ax.set_xlabel("training seconds" if key in CURVE_EXTRAS else "step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def compare(experiment: str, run_ids: list[str] | None, last: int, out_dir: Path) -> tuple[Path, Path]:
    out_dir = out_dir.resolve()  # artifacts download to absolute paths; links are made relative to this
    runs = tracking.search_runs(experiment)
    if run_ids:
        runs = runs[runs["run_id"].isin(run_ids)]
    else:
        runs = runs[runs["status"] == "FINISHED"].sort_values("start_time", ascending=False).head(last)
    if len(runs) == 0:
        raise SystemExit("compare: no runs to compare (run the pipeline first, or check --runs / --experiment)")
    runs = runs.sort_values("start_time").reset_index(drop=True)
    files = out_dir / "compare_files"
    curves = {
        run_label(r): {k: tracking.metric_history(r["run_id"], k) for k in ("loss_d", "loss_g", *CURVE_EXTRAS)}
        for _, r in runs.iterrows()
    }
    for (_, r), series in zip(runs.iterrows(), curves.values(), strict=True):
        # FID against training seconds (runs since fid_seconds was logged), so fast and slow recipes compare
        seconds = fid_against_seconds(
            series["fid_during_training"], tracking.metric_history(r["run_id"], "fid_seconds")
        )
        if seconds:
            series["fid_during_training"] = seconds
    curves_png = files / "loss_curves.png"
    loss_curves_png(curves, curves_png)
    grids = {
        run_label(r): tracking.last_image(r["run_id"], "final_samples", files / str(r["run_id"]))
        for _, r in runs.iterrows()
    }
    tables = compare_tables(runs)
    md, page = out_dir / "compare.md", out_dir / "compare.html"
    md.write_text(markdown.comparison_page(tables, curves_png, grids, out_dir))
    page.write_text(markdown.comparison_html(tables, curves_png, grids))
    return md, page


def parser_for(command: str) -> argparse.ArgumentParser:
    """`mnistgan results`: the recipes' table from MLflow runs; `mnistgan compare`: reports/compare.md and .html."""
    p = OneLineParser(prog=f"mnistgan {command}")
    p.add_argument("--experiment", default="mnistgan")
    if command == "results":
        p.add_argument("--readme", help="rewrite the table between the results markers of this file")
        p.add_argument("--plot", help="also draw FID during training against seconds for every run (PNG)")
        p.add_argument(
            "--seconds",
            type=float,
            help="only runs trained for this many wall-clock seconds (train.max_seconds): one budget per table",
        )
    else:
        p.add_argument("--runs", help="comma-separated run ids (default: the most recent finished runs)")
        p.add_argument("--last", type=int, default=6, help="how many recent runs without --runs")
        p.add_argument("--out", default="reports")
    p.set_defaults(command=command)
    return p


def main(argv: list[str] | None = None) -> int:
    """`mnistgan compare ...` or `mnistgan results ...` (`python -m mnistgan.lab.report compare|results ...`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in ("compare", "results"):
        print("mnistgan.lab.report: error: the first argument is compare or results", file=sys.stderr)
        return EXIT_BAD_INPUT
    return run_command(parser_for(argv[0]), report_command, argv[1:])


def report_command(args: argparse.Namespace) -> int:
    if args.command == "compare":
        md, page = compare(args.experiment, args.runs.split(",") if args.runs else None, args.last, Path(args.out))
        print(f"wrote {md} and {page}")
        return 0
    runs = at_budget(tracking.search_runs(args.experiment), args.seconds)
    table = results_table(runs)
    if args.plot and results_plot(runs, Path(args.plot)):
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.readme:
        path = Path(args.readme)
        path.write_text(replace_section(path.read_text(), table))
        print(f"wrote the results table into {path}", file=sys.stderr)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
