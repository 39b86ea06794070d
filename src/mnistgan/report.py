"""Tables built from MLflow runs (read through mnistgan.tracking): the recipe results table in README.

Usage:
    python -m mnistgan.report results [--experiment mnistgan] [--readme README.md]

Runs are grouped by every parameter except the seed, so each row is one recipe run over several seeds,
reported as mean ± std (std over seeds, ddof=1; '-' with a single seed).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

START, END = "<!-- results:start -->", "<!-- results:end -->"

# (column title, metric column, format)
SCORES = [
    ("FID", "metrics.generated.fid", "{:.2f}"),
    ("score", "metrics.generated.inception_score", "{:.3f}"),
    ("precision", "metrics.generated.precision", "{:.3f}"),
    ("recall", "metrics.generated.recall", "{:.3f}"),
    ("classes", "metrics.generated.classes_covered", "{:.1f}"),
    ("train s", "metrics.train_seconds", "{:.0f}"),
]
RECIPE_KEYS = ["model", "loss", "d_norm", "ema", "conditional", "lr", "batch_size", "steps", "d_steps"]
IGNORED_PARAMS = ("params.seed", "params.paths.", "params.tracking.", "params.train.threads", "params.train.device",
                  "params.train.log_every", "params.train.image_every", "params.train.checkpoint_every")  # fmt: skip


def recipe_label(row: Any) -> str:
    get = lambda k: row.get(f"params.train.{k}", "?")  # noqa: E731
    label = f"{get('model')}, {get('loss')}, D norm {get('d_norm')}, EMA {get('ema')}"
    if str(get("conditional")) == "True":
        label += ", conditional"
    return label + f" (lr {get('lr')}, batch {get('batch_size')}, {get('steps')} steps)"


def mean_std(values: Any, fmt: str) -> str:
    values = [float(v) for v in values if v is not None and v == v]  # drop missing and NaN
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return fmt.format(mean)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{fmt.format(mean)} ± {fmt.format(std)}"


def results_table(runs: Any) -> str:
    """Markdown table of finished, evaluated runs grouped by recipe (all params but the seed)."""
    if runs is None or len(runs) == 0 or "metrics.generated.fid" not in runs:
        return "_No evaluated runs in the MLflow store yet._\n"
    runs = runs[(runs["status"] == "FINISHED") & runs["metrics.generated.fid"].notna()].copy()
    group_cols = sorted(c for c in runs.columns if c.startswith("params.") and not c.startswith(IGNORED_PARAMS))
    runs[group_cols] = runs[group_cols].fillna("")
    lines = ["| recipe | seeds | " + " | ".join(t for t, _, _ in SCORES) + " | device |",
             "| --- | --- | " + " | ".join("---" for _ in SCORES) + " | --- |"]  # fmt: skip
    rows = []
    for _, group in runs.groupby(group_cols, dropna=False):
        first = group.iloc[0]
        cells = [mean_std(group.get(col, []), fmt) for _, col, fmt in SCORES]
        devices = ", ".join(sorted(set(group.get("tags.device", ["?"]))))
        fid = float(group["metrics.generated.fid"].mean())
        rows.append((fid, f"| {recipe_label(first)} | {len(group)} | " + " | ".join(cells) + f" | {devices} |"))
    lines += [r for _, r in sorted(rows)]
    ref = runs.iloc[0]
    lines.append("| *real MNIST training images (reference)* | - | "
                 + " | ".join(mean_std([ref.get(c.replace("generated", "real_reference"))], f)
                              if "generated" in c else "-" for _, c, f in SCORES) + " | - |")  # fmt: skip
    return "\n".join(lines) + "\n"


def replace_section(text: str, body: str) -> str:
    if START not in text or END not in text:
        raise ValueError(f"markers {START} ... {END} not found")
    return re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: f"{START}\n{body}{END}", text, flags=re.S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnistgan.report")
    sub = parser.add_subparsers(dest="command", required=True)
    res = sub.add_parser("results", help="recipe results table from MLflow runs")
    res.add_argument("--experiment", default="mnistgan")
    res.add_argument("--readme", help="rewrite the table between the results markers of this file")
    args = parser.parse_args(argv)
    from mnistgan.tracking import search_runs

    table = results_table(search_runs(args.experiment))
    if args.readme:
        path = Path(args.readme)
        path.write_text(replace_section(path.read_text(), table))
        print(f"wrote the results table into {path}", file=sys.stderr)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
