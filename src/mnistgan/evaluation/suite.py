"""The metric suite of one generated set: every score of mnistgan.evaluation.metrics at once, and the
95% interval of each headline score (bootstrap), as plain floats and [low, high] lists.

Pure numpy: features and probabilities in (made by `classifier.features_and_probs`), numbers out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import rel_entr

from mnistgan.evaluation.metrics import (
    as_2d,
    check_probs,
    curve_to_fid_inf,
    features_to_kid,
    features_to_statistics,
    fid,
    fid_curve,
    fid_inf,
    fid_inf_sizes,
    memorisation_share,
    prdc_per_point,
    probs_to_inception_score,
    same_width,
    statistics_to_fid,
)

EVALUATE_KEYS = (
    "inception_score",
    "inception_score_std",
    "fid",
    "fid_inf",
    "kid",
    "kid_std",
    "precision",
    "recall",
    "density",
    "coverage",
    "classes_covered",
    "class_kl_uniform",
    "mean_confidence",
    "memorisation",
    "n_samples",
)


# --- 95% intervals -------------------------------------------------------------------------------------

BOOTSTRAP_ROUNDS = 200  # resamples for the intervals of averages (cheap)
FID_BOOTSTRAP_ROUNDS = 100  # resamples for FID and fid_inf (each round: a fid_inf line of 15 FIDs)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    """[low, high]: the central `level` share of bootstrap values (the percentile bootstrap)."""
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(np.asarray(values, np.float64), [tail, 100 - tail])
    return [float(lo), float(hi)]


def bootstrap_mean_interval(per_point: np.ndarray, *, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> list[float]:
    """95% interval of the mean of per-point values (precision's 0/1 per sample, density's sphere counts,
    ...) by resampling the points with replacement (percentile bootstrap, seeded)."""
    x = np.asarray(per_point, np.float64).reshape(-1)
    counts = np.random.default_rng(seed).multinomial(len(x), np.full(len(x), 1 / len(x)), size=rounds)
    return percentile_interval(counts @ x / len(x))  # (rounds, n) @ (n,): every round's mean at once


def bootstrap_inception_score_interval(
    probs: np.ndarray, splits: int = 10, *, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0
) -> list[float]:
    """95% interval of the Inception Score by resampling the samples with replacement."""
    p = check_probs("probs", probs)
    rng = np.random.default_rng(seed)
    scores = [probs_to_inception_score(p[rng.integers(0, len(p), len(p))], splits, seed=seed)[0] for _ in range(rounds)]
    return percentile_interval(np.array(scores))


def bootstrap_fid_intervals(
    feats: np.ndarray, feats_ref: np.ndarray, *, rounds: int = FID_BOOTSTRAP_ROUNDS, seed: int = 0
) -> dict[str, list[float]]:
    """95% intervals of FID and fid_inf by resampling the samples with replacement (the reference fixed).

    A resample repeats about a third of its points, which narrows its covariance and raises its FID: the
    bootstrap values sit above the estimate by that bias. So the percentile interval is moved by the
    bootstrap's mean bias (the bias-corrected percentile interval): [q2.5 - bias, q97.5 - bias]."""
    x = as_2d("feats", feats, 20, " for FID intervals")
    ref = as_2d("feats_ref", feats_ref, 2, " for FID")
    same_width("feats", x, "feats_ref", ref)
    stats_ref = features_to_statistics(ref)
    sizes = fid_inf_sizes(len(x), dim=x.shape[1])
    rng = np.random.default_rng(seed)
    estimate = {"fid": statistics_to_fid(*features_to_statistics(x), *stats_ref), "fid_inf": fid_inf(x, ref, seed=seed)}
    boot = {"fid": np.empty(rounds), "fid_inf": np.empty(rounds)}
    for r in range(rounds):
        curve = fid_curve(x[rng.integers(0, len(x), len(x))], stats_ref, sizes, rng)  # last size: the whole resample
        boot["fid"][r], boot["fid_inf"][r] = curve[-1], curve_to_fid_inf(sizes, curve)
    out = {}
    for key, values in boot.items():
        bias = values.mean() - estimate[key]
        out[key] = [v - float(bias) for v in percentile_interval(values)]
    return out


# --- class histogram ----------------------------------------------------------------------------------


CONFIDENT = 0.9  # a sample is "confidently" digit c when the classifier gives c at least this probability
MIN_SHARE_OF_EXPECTED = 0.25  # a digit is covered when confident samples of it are >= this x its expected share


def class_coverage(
    probs: np.ndarray, confidence: float = CONFIDENT, min_share: float = MIN_SHARE_OF_EXPECTED
) -> dict[str, float]:
    """Summaries of the classifier's verdicts on the samples (mode collapse shows as missing classes, the
    GAN-on-MNIST version of the "number of modes" counts of Srivastava et al. 2017, "VEEGAN", NeurIPS):

    classes_covered: digits c for which the samples the classifier is sure are c (max probability >=
      `confidence`) make up at least `min_share` of the share a balanced set gives each digit (1/C of all
      samples). With the defaults: 2.5% of the samples confidently one digit. The classifier's own
      mistakes on real digits are rare and spread over the other nine classes (well under 1% of a one-digit
      set each), so they never count as a digit; and unreadable samples (low confidence) count for none.
    class_kl_uniform: KL(predicted-class histogram || uniform) in nats, 0 for a balanced set, log C for one;
    mean_confidence: mean of the largest class probability (low values: images the classifier cannot read).
    """
    p = check_probs("probs", probs)
    n_classes = p.shape[1]
    predicted, top = p.argmax(axis=1), p.max(axis=1)
    hist = np.bincount(predicted, minlength=n_classes) / len(p)
    confident = np.bincount(predicted[top >= confidence], minlength=n_classes) / len(p)  # shares of all samples
    return {
        "classes_covered": int((confident >= min_share / n_classes).sum()),
        "class_kl_uniform": float(rel_entr(hist, 1.0 / n_classes).sum()),
        "mean_confidence": float(top.mean()),
    }


# --- everything at once -------------------------------------------------------------------------------


def evaluate_samples(
    gen_feats: np.ndarray,
    gen_probs: np.ndarray,
    test_feats: np.ndarray,
    train_pool_feats: np.ndarray,
    *,
    splits: int = 10,
    k: int = 3,
    seed: int = 0,
    memorisation_threshold: float | None = None,
    intervals: bool = False,
) -> dict[str, Any]:
    """All metrics of a generated set against the MNIST test set, as one flat dict (keys EVALUATE_KEYS).

    gen_feats (N, D), gen_probs (N, C): the samples; test_feats (M, D): the reference distribution for
    FID, KID, precision/recall and density/coverage; train_pool_feats (P, D): training images for the
    memorisation check only (they must not include the samples themselves). `seed` drives the IS shuffle
    and the KID subsets. `memorisation_threshold` may be passed precomputed (see memorisation_share).
    intervals: also `<score>_ci95` [low, high] for fid, fid_inf, kid, inception_score, precision, recall,
    density and coverage (seeded; methods in INTERVAL_METHODS). About 10 s for 10,000 samples on 2 cores.
    """
    need = max(k + 1, 2, splits)
    gen = as_2d("gen_feats", gen_feats, need, f" (k + 1 = {k + 1} for k-NN, {splits} IS splits)")
    probs = check_probs("gen_probs", gen_probs)
    if len(probs) != len(gen):
        raise ValueError(f"gen_probs has {len(probs)} rows but gen_feats has {len(gen)}")
    test = as_2d("test_feats", test_feats, k + 1, f" for k={k} nearest neighbours (k + 1)")
    pool = as_2d("train_pool_feats", train_pool_feats, 1)
    same_width("gen_feats", gen, "test_feats", test)
    same_width("gen_feats", gen, "train_pool_feats", pool)

    out: dict[str, float] = {}
    out["inception_score"], out["inception_score_std"] = probs_to_inception_score(probs, splits, seed=seed)
    out["fid"] = fid(gen, test)
    out["fid_inf"] = fid_inf(gen, test, seed=seed)
    out["kid"], out["kid_std"], kid_rounds = _kid_and_rounds(gen, test, seed)
    per_point = prdc_per_point(gen, test, k)
    out.update({key: float(values.mean()) for key, values in per_point.items()})
    out.update(class_coverage(probs))
    out["memorisation"] = memorisation_share(gen, pool, test, threshold=memorisation_threshold)
    out["n_samples"] = len(gen)
    result = {key: out[key] for key in EVALUATE_KEYS}
    if intervals:
        result |= {f"{key}_ci95": value for key, value in bootstrap_fid_intervals(gen, test, seed=seed).items()}
        result["kid_ci95"] = bootstrap_mean_interval(kid_rounds, seed=seed)
        result["inception_score_ci95"] = bootstrap_inception_score_interval(probs, splits, seed=seed)
        result |= {f"{key}_ci95": bootstrap_mean_interval(values, seed=seed) for key, values in per_point.items()}
    return result


# How each interval is made (docs/scores.md says the same).
INTERVAL_METHODS = {
    "fid": "bootstrap over the samples (bias-corrected percentile, FID_BOOTSTRAP_ROUNDS resamples)",
    "fid_inf": "bootstrap over the samples, a fid_inf line per resample (bias-corrected percentile)",
    "kid": "percentile bootstrap over KID's subset estimates (the subsets' spread, not the samples')",
    "inception_score": "percentile bootstrap over the samples",
    "precision": "percentile bootstrap over the samples",
    "density": "percentile bootstrap over the samples",
    "recall": "percentile bootstrap over the real images (the samples held fixed)",
    "coverage": "percentile bootstrap over the real images (the samples held fixed)",
}


def _kid_and_rounds(gen: np.ndarray, test: np.ndarray, seed: int) -> tuple[float, float, np.ndarray]:
    """features_to_kid's mean and std, and its per-subset estimates (for kid_ci95)."""
    rounds: list[float] = []
    mean, std = features_to_kid(gen, test, seed=seed, rounds_out=rounds)
    return mean, std, np.array(rounds)


def mean_std_over_sets(results: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric, the mean and std (ddof=1; 0 for one set) over the scores of several sample sets."""
    if not results:
        raise ValueError("mean_std_over_sets: no results")
    keys = [k for k, v in results[0].items() if not isinstance(v, list | tuple) and all(k in r for r in results)]
    out = {}
    for k in keys:
        values = np.array([float(r[k]) for r in results], np.float64)
        out[k] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    return out
