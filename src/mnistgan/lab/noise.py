"""The seed-to-seed spread of a recipe's headline scores (metrics/spread.json, made by `make spread`) and the
verdict of `make verify` where bytes cannot match: is a rerun on another platform a draw of the same
experiment?

A rerun on another CPU kind, a GPU or another library build retrains every network, the feature networks
that define the scores included. So the scores compared are the ones that do not move with the yardstick's
own retraining: the FID as a multiple of the real data's FID in the same features, the Inception-style
score as a share of the real data's, precision, recall and the classes covered. (Measured: a rerun under
other instruction sets moved the raw FID by 0.79, its multiple of real by 0.016.)

Each score's range is a prediction interval of one more draw from the seeds' values, mean ± t(n-1) · sd ·
sqrt(1 + 1/n) (Student's t). Its level is Bonferroni's 1 - 0.05/k for k scores, so that a fair new draw
has all k scores inside 95% of the time (at 95% each, five scores would fail a fair rerun about one time
in five). Pure: dicts in, dicts and lines out; the commands that run the pipeline live in mnistgan.lab.spread and
mnistgan.lab.verify.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scipy import stats

from mnistgan.config import Params, flatten

SPREAD_FILE = "metrics/spread.json"
FAMILY_CONFIDENCE = 0.95  # all headline scores of a fair new draw inside their ranges
MIN_SEEDS = 3
# Params that are not the recipe: where files go, the tracking store, how the libraries compute (the
# platform), and the seed the spread is over.
NOT_RECIPE = ("seed", "paths.", "tracking.", "numerics.")


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.inf


# name -> (what it is, how it is read from a parsed metrics/eval.json)
HEADLINES: dict[str, tuple[str, Callable[[dict[str, Any]], float]]] = {
    "fid_multiple": (
        "FID as a multiple of the real data's FID (classifier features)",
        lambda e: _ratio(e["generated"]["fid"], e["real_reference"]["fid"]),
    ),
    "score_ratio": (
        "Inception-style score as a share of the real data's",
        lambda e: _ratio(e["generated"]["inception_score"], e["real_reference"]["inception_score"]),
    ),
    "precision": ("share of samples inside the real digits' neighbourhoods", lambda e: e["generated"]["precision"]),
    "recall": ("share of real digits inside the samples' neighbourhoods", lambda e: e["generated"]["recall"]),
    "classes_covered": ("digit classes among the samples", lambda e: e["generated"]["classes_covered"]),
}


CONFIDENCE = 1 - (1 - FAMILY_CONFIDENCE) / len(HEADLINES)  # each score's range (Bonferroni)


def headline_scores(eval_json: dict[str, Any]) -> dict[str, float]:
    """The headline scores of one parsed metrics/eval.json (HEADLINES)."""
    try:
        return {name: float(read(eval_json)) for name, (_, read) in HEADLINES.items()}
    except (KeyError, TypeError) as e:
        raise ValueError(f"metrics/eval.json: no {e} in it; rerun the evaluate stage") from None


def recipe(params: Params) -> dict[str, Any]:
    """The params that make the recipe, flat ("train.lr": 0.0004): all but NOT_RECIPE."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in flatten(params).items() if not k.startswith(NOT_RECIPE)
    }


def flatten_raw(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A params.yaml as parsed by YAML, flat like `recipe` ("train.lr": 0.0004), whatever code it was made for."""
    out: dict[str, Any] = {}
    for k, v in (raw or {}).items():
        if isinstance(v, dict):
            out.update(flatten_raw(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = float(v) if isinstance(v, str) and _is_number(v) else v
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def prediction_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The range one more draw falls in with this confidence: mean ± t · sd · sqrt(1 + 1/n)."""
    n = len(values)
    if n < 2:
        raise ValueError(f"a spread needs at least 2 values, got {n}")
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd * math.sqrt(1 + 1 / n)
    return mean - half, mean + half


def build_spread(runs: list[dict[str, Any]], recipe_params: dict[str, Any]) -> dict[str, Any]:
    """metrics/spread.json from runs [{"seed", "eval" (a parsed eval.json) or "scores" (its headline scores),
    "platform", "source"}]: three different seeds at least; more runs of a seed are draws on other platforms."""
    if len({r["seed"] for r in runs}) < MIN_SEEDS:
        raise ValueError(f"a spread needs at least {MIN_SEEDS} seeds, got {sorted({r['seed'] for r in runs})}")
    per_run = [
        {
            "seed": r["seed"],
            "source": r.get("source", ""),
            "platform": r.get("platform") or {},
            "scores": r["scores"] if "scores" in r else headline_scores(r["eval"]),
        }
        for r in runs
    ]
    ranges = {}
    for name in HEADLINES:
        values = [r["scores"][name] for r in per_run]
        low, high = prediction_interval(values)
        ranges[name] = {"low": low, "high": high, "mean": sum(values) / len(values), "values": values}
    return {
        "what": f"{CONFIDENCE:.0%} prediction interval of one more run's score, mean ± t(n-1) sd sqrt(1 + 1/n): all "
        f"{len(HEADLINES)} scores of a fair new draw inside with {FAMILY_CONFIDENCE:.0%} (Bonferroni)",
        "seeds": [r["seed"] for r in per_run],
        "ranges": ranges,
        "runs": per_run,
        "recipe": recipe_params,
    }


def recipe_changes(spread: dict[str, Any], recipe_params: dict[str, Any]) -> list[str]:
    """The recipe keys whose value differs between the spread and these params (empty: the same recipe)."""
    made = spread.get("recipe") or {}
    return sorted(k for k in set(made) | set(recipe_params) if made.get(k) != recipe_params.get(k))


@dataclass(frozen=True)
class ScoreCheck:
    """One headline score of the commit or of the rerun against its range."""

    name: str
    whose: str  # "committed" or "rerun"
    value: float
    low: float
    high: float
    n_runs: int

    @property
    def inside(self) -> bool:
        return self.low <= self.value <= self.high

    def line(self) -> str:
        where = "inside" if self.inside else "outside"
        return (
            f"{self.name} {self.value:.4g} ({self.whose}) {where} [{self.low:.4g}, {self.high:.4g}] "
            f"of {self.n_runs} runs"
        )


def check_scores(spread: dict[str, Any], committed: dict[str, Any], rerun: dict[str, Any]) -> list[ScoreCheck]:
    """Every headline score of the committed and of the rerun's metrics/eval.json against the spread's range.

    Both are held to it: the rerun must be a draw of the recipe, and the commit's claim too (a claim edited
    by hand, with its dvc.lock md5 to match, is no draw of the recipe)."""
    n = len(spread.get("runs") or [])
    checks = []
    for whose, eval_json in (("committed", committed), ("rerun", rerun)):
        for name, value in headline_scores(eval_json).items():
            r = spread["ranges"][name]
            checks.append(ScoreCheck(name, whose, value, r["low"], r["high"], n))
    return checks


def platform_table(committed: dict[str, Any] | None, rerun: dict[str, Any] | None) -> list[tuple[str, str, str, bool]]:
    """(key, committed value, rerun value, differs) for every key of either fingerprint."""
    a, b = committed or {}, rerun or {}
    keys = list(a) + [k for k in b if k not in a]
    return [(k, str(a.get(k, "-")), str(b.get(k, "-")), a.get(k) != b.get(k)) for k in keys]


def platform_lines(table: list[tuple[str, str, str, bool]]) -> list[str]:
    """The two fingerprints side by side on stdout; `*` marks a difference."""
    if not table:
        return ["platform: neither the commit nor the rerun has a platform fingerprint"]
    width = max(len(v) for _, v, _, _ in table) + 2
    lines = [f"  {'platform':<14}{'committed':<{width}}rerun"]
    lines += [f"{'*' if differs else ' '} {k:<14}{a:<{width}}{b}" for k, a, b, differs in table]
    return lines
