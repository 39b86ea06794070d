"""mnistgan.evaluation.suite: every score of a generated set at once, its 95% intervals, class coverage."""

from __future__ import annotations

import numpy as np
import pytest
from test_metrics import A, B, P, _gaussians, gaussian_feats, one_hot_probs, softmax

from mnistgan.evaluation import metrics as M
from mnistgan.evaluation import suite as S


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: S.class_coverage(P[:, :1]), "expected class probabilities"),
        (lambda: S.evaluate_samples(A, P[:40], B, B), "gen_probs has 40 rows but gen_feats has 50"),
        (lambda: S.evaluate_samples(A[:8], P[:8], B, B), "gen_feats: 8 samples, at least 10 needed"),
    ],
)
def test_bad_input_raises_one_line_value_error(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_class_coverage_counts_classes_and_imbalance():
    labels = np.arange(1000) % 10
    full = S.class_coverage(one_hot_probs(labels, 0.9))
    assert full == pytest.approx({"classes_covered": 10, "class_kl_uniform": 0.0, "mean_confidence": 0.9})
    three = S.class_coverage(one_hot_probs(labels % 3))
    assert three["classes_covered"] == 3
    assert three["class_kl_uniform"] == pytest.approx(np.log(10 / 3), rel=1e-2)
    # A digit counts from 2.5% of the samples (a quarter of its 10% expected share) confidently that digit.
    for n_nines, covered in ((1, 9), (24, 9), (25, 10)):
        rare = np.concatenate([np.arange(1000 - n_nines) % 9, np.full(n_nines, 9)])
        assert S.class_coverage(one_hot_probs(rare))["classes_covered"] == covered, n_nines
    # Samples the classifier is unsure of count for no digit, however many there are.
    assert S.class_coverage(one_hot_probs(labels, 0.5))["classes_covered"] == 0
    assert S.class_coverage(one_hot_probs(labels, 0.5), confidence=0.5)["classes_covered"] == 10
    assert S.class_coverage(one_hot_probs(rare), min_share=0.5)["classes_covered"] == 9


def test_evaluate_samples_returns_the_documented_flat_dict():
    gen, test, pool = gaussian_feats(24, 400, 16, shift=0.1), gaussian_feats(25, 500, 16), gaussian_feats(26, 900, 16)
    probs = softmax(np.random.default_rng(27).normal(size=(400, 10)))
    out = S.evaluate_samples(gen, probs, test, pool)
    assert tuple(out) == S.EVALUATE_KEYS
    assert all(np.isfinite(v) for v in out.values())
    assert out["n_samples"] == 400
    assert out["fid"] == pytest.approx(M.fid(gen, test))
    assert (out["precision"], out["recall"]) == M.precision_recall(gen, test)


def test_mean_std_over_sets():
    out = S.mean_std_over_sets([{"fid": 1.0, "score": 9.0}, {"fid": 3.0, "score": 9.0}, {"fid": 5.0, "score": 9.0}])
    assert out["fid"] == {"mean": 3.0, "std": 2.0}  # ddof=1, as over seeds elsewhere
    assert out["score"] == {"mean": 9.0, "std": 0.0}
    assert S.mean_std_over_sets([{"fid": 2.0}])["fid"] == {"mean": 2.0, "std": 0.0}
    with pytest.raises(ValueError, match="no results"):
        S.mean_std_over_sets([])


def test_bootstrap_mean_interval_covers_the_true_share_at_the_binomial_width():
    x = (np.random.default_rng(0).random(4000) < 0.7).astype(float)
    lo, hi = S.bootstrap_mean_interval(x, seed=1)
    assert lo < x.mean() < hi and lo < 0.7 < hi
    assert hi - lo == pytest.approx(2 * 1.96 * np.sqrt(0.21 / 4000), rel=0.2)  # the analytic binomial width
    assert S.bootstrap_mean_interval(x, seed=1) == [lo, hi]


def test_fid_intervals_hold_the_estimate_and_narrow_with_more_samples():
    gen, ref = _gaussians(4000, 2)
    small = S.bootstrap_fid_intervals(gen[:800], ref, rounds=40)
    large = S.bootstrap_fid_intervals(gen, ref, rounds=40)
    for key, estimate in (("fid", M.fid(gen, ref)), ("fid_inf", M.fid_inf(gen, ref))):
        assert large[key][0] < estimate < large[key][1], key
        assert large[key][1] - large[key][0] < small[key][1] - small[key][0], key
    assert large["fid_inf"][0] < 64 * 0.3**2 < large["fid_inf"][1]  # the truth inside


def test_evaluate_samples_intervals_bracket_their_scores():
    rng = np.random.default_rng(4)
    gen, test, pool = rng.normal(0.2, 1, (600, 8)), rng.normal(0, 1, (800, 8)), rng.normal(0, 1, (300, 8))
    probs = rng.dirichlet(np.ones(10) * 0.3, 600)
    out = S.evaluate_samples(gen, probs, test, pool, intervals=True)
    assert set(S.INTERVAL_METHODS) == {k.removesuffix("_ci95") for k in out if k.endswith("_ci95")}
    for key in S.INTERVAL_METHODS:
        lo, hi = out[f"{key}_ci95"]
        assert lo <= out[key] <= hi, key
    assert not any(k.endswith("_ci95") for k in S.evaluate_samples(gen, probs, test, pool))
